"""tasks.dicom_io: every transfer syntax decodes, polarity and bit depth are handled, bad input is a Skip."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from radlint.tasks import dicom_io
from tests.conftest import gradient_image, shared_path


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


@pytest.mark.parametrize(
    "ts",
    [
        ExplicitVRLittleEndian,  # uncompressed
        ImplicitVRLittleEndian,  # uncompressed, implicit VR
        DeflatedExplicitVRLittleEndian,  # deflated dataset
        RLELossless,  # pydicom's own RLE encoder
        JPEG2000Lossless,  # pylibjpeg-openjpeg encoder
        JPEGLSLossless,  # pyjpegls encoder
    ],
)
@pytest.mark.parametrize("bits", [8, 12, 16])
def test_lossless_syntaxes_roundtrip(make_dicom, ts, bits):
    src = gradient_image()
    if ts == DeflatedExplicitVRLittleEndian:
        ds = pydicom.dcmread(io.BytesIO(make_dicom(ExplicitVRLittleEndian, pixels=src, bits_stored=bits)))
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        data = buf.getvalue()
    else:
        data = make_dicom(ts, pixels=src, bits_stored=bits)
    image = dicom_io.read_dicom(data, salt="s")
    assert image.pixels.shape == src.shape
    assert image.header["transfer_syntax_uid"] == str(ts)
    assert image.header["bits_stored"] == bits
    assert _corr(image.pixels, src) > 0.999


def test_monochrome1_is_inverted_to_bone_bright(make_dicom):
    src = gradient_image()
    mono2 = dicom_io.read_dicom(make_dicom(pixels=src, monochrome1=False)).pixels
    mono1 = dicom_io.read_dicom(make_dicom(pixels=src, monochrome1=True)).pixels
    assert _corr(mono1, src) > 0.999
    assert _corr(mono2, mono1) > 0.999


def test_jpeg_baseline_encapsulated(make_dicom):
    from PIL import Image
    from pydicom.encaps import encapsulate

    src = gradient_image()
    ds = pydicom.dcmread(io.BytesIO(make_dicom(pixels=src, bits_stored=8)))
    buf = io.BytesIO()
    Image.fromarray(src).save(buf, format="JPEG", quality=95)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    image = dicom_io.read_dicom(out.getvalue())
    assert _corr(image.pixels, src) > 0.99


def test_jpeg_lossless_sv1_via_gdcm(make_dicom, tmp_path):
    gdcm = pytest.importorskip("gdcm")
    src = gradient_image()
    plain = tmp_path / "plain.dcm"
    plain.write_bytes(make_dicom(pixels=src))
    reader = gdcm.ImageReader()
    reader.SetFileName(str(plain))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    out = tmp_path / "jpll.dcm"
    writer.SetFileName(str(out))
    assert writer.Write()
    image = dicom_io.read_dicom(out.read_bytes())
    assert image.header["transfer_syntax_uid"] == "1.2.840.10008.1.2.4.70"
    assert _corr(image.pixels, src) > 0.999


def test_header_row_promotes_tags_and_drops_phi(make_dicom):
    image = dicom_io.read_dicom(make_dicom(patient_id="SECRET-ID-42"), salt="pepper")
    h = image.header
    assert h["modality"] == "CR"
    assert h["body_part_examined"] == "CHEST"
    assert h["view_position"] == "PA"
    assert h["label_body_part"] == "chest" and h["label_projection"] == "PA"
    assert h["study_month"] == "2025-03"
    assert h["patient_key"] == dicom_io.patient_key("SECRET-ID-42", "pepper")
    assert h["patient_key"] != dicom_io.patient_key("SECRET-ID-42", "other-salt")
    blob = json.loads(h["header_json"])
    assert "PatientName" not in blob and "PatientID" not in blob and "PatientBirthDate" not in blob
    assert "SECRET-ID-42" not in h["header_json"]
    assert "DEMO^" not in h["header_json"]
    assert blob["Modality"] == "CR"


@pytest.mark.parametrize(
    "name,payload,reason",
    [
        ("zero bytes", b"", dicom_io.NOT_DICOM),
        ("text file", b"hello, this is not a DICOM file at all" * 40, dicom_io.NOT_DICOM),
        ("png header", b"\x89PNG\r\n\x1a\n" + b"\x00" * 300, dicom_io.NOT_DICOM),
    ],
)
def test_not_dicom(name, payload, reason):
    with pytest.raises(dicom_io.Skip) as err:
        dicom_io.read_dicom(payload)
    assert err.value.reason == reason, name


def test_truncated_pixel_data(make_dicom):
    data = make_dicom()
    with pytest.raises(dicom_io.Skip) as err:
        dicom_io.read_dicom(data[: len(data) - 4000])
    assert err.value.reason == dicom_io.TRUNCATED


def test_truncated_header(make_dicom):
    data = make_dicom()
    with pytest.raises(dicom_io.Skip) as err:
        dicom_io.read_dicom(data[:300])
    assert err.value.reason in (dicom_io.TRUNCATED, dicom_io.NO_PIXEL_DATA)


def test_no_pixel_data(make_dicom):
    ds = pydicom.dcmread(io.BytesIO(make_dicom()))
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(dicom_io.Skip) as err:
        dicom_io.read_dicom(buf.getvalue())
    assert err.value.reason == dicom_io.NO_PIXEL_DATA


def test_too_large_refused_before_decoding(make_dicom):
    with pytest.raises(dicom_io.Skip) as err:
        dicom_io.read_dicom(make_dicom(), max_pixels=1000)
    assert err.value.reason == dicom_io.TOO_LARGE


def test_no_preamble_still_read(make_dicom):
    data = make_dicom()
    assert data[128:132] == b"DICM"
    # Drop the 128-byte preamble and "DICM" prefix, as some old archives store files.
    bare = data[132:]
    image = dicom_io.read_dicom(bare)
    assert image.pixels.shape == (96, 80)


def test_pydicom_data_cr_files():
    from pydicom.data import get_testdata_file

    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG3_UNCR.dcm"):
        path = get_testdata_file(name, download=False)
        assert path, f"pydicom-data should ship {name}"
        image = dicom_io.read_dicom(Path(path).read_bytes())
        assert image.header["modality"] == "CR"
        assert image.pixels.ndim == 2 and image.pixels.std() > 0
    # The same image in two transfer syntaxes decodes to the same display pixels.
    a = dicom_io.read_dicom(Path(get_testdata_file("RG1_UNCR.dcm", download=False)).read_bytes()).pixels
    b = dicom_io.read_dicom(Path(get_testdata_file("RG1_J2KR.dcm", download=False)).read_bytes()).pixels
    assert np.array_equal(a, b)


@pytest.mark.slow
@pytest.mark.shared
def test_shared_real_dicom_files_all_decode():
    folder = shared_path("data", "dicom")
    files = sorted(folder.glob("*.dcm"))
    assert files
    failures = {}
    for f in files:
        try:
            image = dicom_io.read_dicom(f.read_bytes())
            assert image.pixels.std() > 0
        except dicom_io.Skip as skip:
            failures[f.name] = skip.reason + ": " + skip.detail
    # 966.dcm is a known-corrupt JPEG 2000 codestream (pylibjpeg-data ships 966_fixed.dcm beside it):
    # neither openjpeg nor GDCM decodes it, so it must become a read_error row, not a crash.
    assert set(failures) == {"pylibjpeg_966.dcm"}, failures
    assert failures["pylibjpeg_966.dcm"].startswith(dicom_io.READ_ERROR)


def test_header_json_is_the_same_whether_or_not_parse_deferred_large_values(monkeypatch, make_dicom):
    """parse() leaves values over DEFER_BYTES unread; the header summary must not change because of
    it (including files whose elements are stored with VR UN, converted on access)."""
    from pydicom.data import get_testdata_file

    payloads = {"large synthetic CR": make_dicom(pixels=np.zeros((1200, 960), dtype=np.uint8))}
    for name in ["rtdose_rle_1frame.dcm", "CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "emri_small.dcm",
                 "SC_rgb_rle_16bit.dcm", "OBXXXX1A.dcm"]:
        path = get_testdata_file(name, download=False)
        if path is not None:
            payloads[name] = Path(path).read_bytes()
    assert len(payloads) >= 6
    for name, data in payloads.items():
        ds = dicom_io.parse(data)
        deferred = dicom_io.header_json(ds)
        monkeypatch.setattr(dicom_io, "DEFER_BYTES", None)  # read everything at once
        assert deferred == dicom_io.header_json(dicom_io.parse(data)), name
        monkeypatch.undo()
        # Every public, non-bulk element of the fully converted dataset is there (VR decided after
        # conversion: rtdose_rle_1frame stores its elements as UN).
        full = pydicom.dcmread(io.BytesIO(data))
        want = {
            e.keyword for e in full
            if e.keyword and not e.tag.is_private and e.tag.group != 0x7FE0 and e.VR not in dicom_io._BULK_VRS
            and not dicom_io.is_identifier(e) and not isinstance(e.value, (bytes, bytearray))
        }
        assert want <= set(json.loads(deferred)), (name, sorted(want - set(json.loads(deferred))))
    large = dicom_io.parse(payloads["large synthetic CR"])
    assert large.get_item("PixelData", keep_deferred=True).value is None


def test_transfer_syntax_from_the_first_bytes(make_dicom):
    from pydicom.data import get_testdata_file

    heads = {ts: make_dicom(ts)[:4096] for ts in (ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless, JPEGLSLossless)}
    for ts, head in heads.items():
        assert dicom_io.transfer_syntax_of(head) == ts
    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm"):
        path = get_testdata_file(name, download=False)
        expected = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert dicom_io.transfer_syntax_of(Path(path).read_bytes()[:4096]) == expected
    # anything else is None, never an exception: cut anywhere, no preamble, not DICOM at all
    full = heads[JPEGLSLossless]
    for cut in range(0, 400, 7):
        assert dicom_io.transfer_syntax_of(full[:cut]) in (None, JPEGLSLossless)
    assert dicom_io.transfer_syntax_of(full[128:]) is None
    assert dicom_io.transfer_syntax_of(b"\x00" * 128 + b"DICM" + b"\xff" * 64) is None
    assert dicom_io.transfer_syntax_of(b"") is None
