"""A decoder fallback that works is not an error (issue 22 item 8): pydicom logs each plugin's
failure at ERROR with a traceback even when the next plugin decodes the frame."""

from __future__ import annotations

import logging

import pytest

from radlint.tasks import dicom_io
from tests.conftest import shared_path


@pytest.mark.parametrize("name", ["wg04_RG2_JPLY.dcm", "wg04_RG3_JPLY.dcm"])  # 12-bit JPEG extended
def test_a_fallback_that_decodes_logs_no_error(name, caplog):
    data = shared_path("data", "dicom", name).read_bytes()
    dicom_io._fallbacks_logged.clear()
    with caplog.at_level(logging.DEBUG):
        for _ in range(2):
            image = dicom_io.read_dicom(data, target_size=64)
            assert image.pixels.size > 0
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert not any(r.exc_info for r in caplog.records)
    fallbacks = [r for r in caplog.records if r.name == dicom_io.log.name and "decoded by" in r.getMessage()]
    assert [r.levelno for r in fallbacks] == [logging.INFO, logging.DEBUG]  # once at INFO, then DEBUG


def test_a_failed_decode_is_a_skip_row_not_a_log_line(caplog):
    data = shared_path("data", "dicom", "pylibjpeg_966.dcm").read_bytes()  # a J2K codestream no plugin reads
    with caplog.at_level(logging.DEBUG), pytest.raises(dicom_io.Skip) as skip:
        dicom_io.read_dicom(data, target_size=64)
    assert skip.value.reason == dicom_io.READ_ERROR and "J2K" in skip.value.detail
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
