"""decode_pixels classifies pydicom's and its plugins' errors partly by their words: each case makes
the installed library raise its real message, pins that message, and pins the reason code it gets.

When a pydicom or plugin upgrade changes a message, the first assertion of its case fails: check
that dicom_io.decode_pixels still gives the reason the case expects, then update the pattern.
"""

from __future__ import annotations

import io
import re
import warnings

import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.pixels import pixel_array
from pydicom.uid import UID, RLELossless

from radlint.tasks import dicom_io

# What decode_pixels reads as truncation in a ValueError (tasks/dicom_io.py).
TRUNCATION_WORDS = ("length", "expected", "end of")


def _rewrite(data: bytes, change) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    change(ds)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _short_native(ds):
    ds.PixelData = ds.PixelData[:1000]


def _set(keyword, value):
    def change(ds):
        setattr(ds, keyword, value)
    return change


def _mpeg2(ds):
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")
    ds.PixelData = encapsulate([ds.PixelData])


def _item_length_cut(ds):
    # an empty basic offset table, then a fragment item whose 4-byte length is cut after 2
    ds.PixelData = b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + b"\xfe\xff\x00\xe0\x10\x00"


def _corrupt_rle(ds):
    from pydicom.encaps import generate_frames

    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    for i in range(20, len(frame) - 2, 7):
        frame[i] = 0xFF
    ds.PixelData = encapsulate([bytes(frame)])


def _cut_rle(ds):
    from pydicom.encaps import generate_frames

    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 3]])


CASES = [
    # (id, transfer syntax of the source, change, exception type, message pattern, reason)
    ("native pixel data shorter than Rows x Columns", None, _short_native, ValueError,
     r"The number of bytes of pixel data is less than expected \(1000 vs \d+ bytes\)", dicom_io.TRUNCATED),
    ("encapsulated item header cut", RLELossless, _item_length_cut, ValueError,
     r"Unable to determine the length of the item at offset \d+ as the end of the data has been reached",
     dicom_io.TRUNCATED),
    ("Bits Allocated 12", None, _set("BitsAllocated", 12), ValueError,
     r"A \(0028,0100\) 'Bits Allocated' value of '12' is invalid, it must be 1 or a multiple of 8",
     dicom_io.READ_ERROR),
    ("Pixel Representation 3", None, _set("PixelRepresentation", 3), ValueError,
     r"A \(0028,0103\) 'Pixel Representation' value of '3' is invalid, it must be 0 or 1", dicom_io.READ_ERROR),
    ("three samples without Planar Configuration", None, _set("SamplesPerPixel", 3), AttributeError,
     r"Missing required element: \(0028,0006\) 'Planar Configuration'", dicom_io.READ_ERROR),
    ("a transfer syntax pydicom cannot decode", None, _mpeg2, NotImplementedError,
     r"Unable to decode the pixel data as a \(0002,0010\) 'Transfer Syntax UID' value of "
     r"'MPEG2 Main Profile / Main Level' is not supported", dicom_io.UNSUPPORTED_TS),
    ("corrupt RLE segments, a decoder installed", RLELossless, _corrupt_rle, RuntimeError,
     r"Unable to decode as exceptions were raised by all available plugins", dicom_io.READ_ERROR),
    # a compressed frame cut short is a plugin's RuntimeError, not pydicom's ValueError: read_error
    ("RLE frame cut to a third", RLELossless, _cut_rle, RuntimeError,
     r"Unable to decode as exceptions were raised by all available plugins:\s+pylibjpeg: The end of the data "
     r"was reached before the segment was completely decoded", dicom_io.READ_ERROR),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_real_decoder_message_and_its_reason(make_dicom, case):
    _, syntax, change, exc_type, pattern, reason = case
    data = _rewrite(make_dicom(syntax) if syntax else make_dicom(), change)
    ds = dicom_io.parse(data)
    with warnings.catch_warnings(), pytest.raises(exc_type) as raised:
        warnings.simplefilter("ignore")
        pixel_array(ds)
    message = str(raised.value)
    assert re.search(pattern, message), f"the installed library now says: {message!r}"
    if exc_type is ValueError:
        # the words decode_pixels reads: present exactly when the case expects truncated
        assert any(w in message or w in message.lower() for w in TRUNCATION_WORDS) == (reason == dicom_io.TRUNCATED)
    # raw=None: the GDCM fallback (tried on a RuntimeError when the bytes are given) stays out of this
    with pytest.raises(dicom_io.Skip) as skip:
        dicom_io.decode_pixels(dicom_io.parse(data), raw=None)
    assert skip.value.reason == reason, skip.value.detail


def test_cut_encapsulated_pixel_data_is_a_row_not_a_crash(make_dicom, tmp_path):
    """With the raw bytes, a RuntimeError from every plugin tries GDCM's own reader; on Pixel Data
    whose item runs past its end GDCM calls std::terminate and the whole process (a Dask worker, or
    the audit itself) dies, so the object never becomes a skipped row. Run in a child process: a
    regression aborts the child, not the test session."""
    import subprocess
    import sys

    data = _rewrite(make_dicom(RLELossless), lambda ds: setattr(ds, "PixelData", ds.PixelData[:30]))
    path = tmp_path / "cut.dcm"
    path.write_bytes(data)
    code = (
        "import sys; from pathlib import Path; from radlint.tasks import dicom_io\n"
        "try:\n    dicom_io.read_dicom(Path(sys.argv[1]).read_bytes())\n"
        "except dicom_io.Skip as s:\n    print(s.reason)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == dicom_io.READ_ERROR
