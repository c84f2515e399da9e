"""Read one DICOM object: promoted header columns, a PHI-free header JSON, display-ready pixels.

Every failure becomes a :class:`Skip` with a reason code of the `skipped` table (docs/architecture.md), never an exception
that escapes to the shard: a bad file is a data row, not a crash.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import math
import tempfile
import threading
import warnings
import zlib
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array
from pydicom.uid import UID

from radlint.tasks import labels
from radlint.tasks.options import DEFAULT_MAX_PIXELS

# Reason codes of the `skipped` table (docs/architecture.md), plus a few more specific ones.
NOT_DICOM = "not_dicom"
TRUNCATED = "truncated"
NO_PIXEL_DATA = "no_pixel_data"
UNSUPPORTED_TS = "unsupported_transfer_syntax"
UNSUPPORTED_PHOTOMETRIC = "unsupported_photometric"
TOO_LARGE = "too_large"
READ_ERROR = "read_error"

# The identifiers header_json never keeps: DICOM PS3.15 Annex E, basic profile (every attribute it
# removes, replaces or cleans), as a data file because pydicom ships no copy of the table.
# PatientID is replaced by the salted `patient_key`; dates are reduced to the month (`study_month`).
ANNEX_E_FILE = "annex_e_basic_profile.csv"


@functools.cache
def annex_e_basic_profile() -> dict[int, tuple[str, str]]:
    """``{tag: (keyword, action)}`` of every attribute PS3.15 Table E.1-1 does not simply keep."""

    table: dict[int, tuple[str, str]] = {}
    lines = files("radlint.tasks").joinpath(ANNEX_E_FILE).read_text(encoding="utf-8").splitlines()
    rows = [line for line in lines if line.strip() and not line.startswith("#")]
    for line in rows[1:]:  # the first is the column header
        tag, keyword, action = (field.strip() for field in line.split(","))
        table[int(tag, 16)] = (keyword, action)
    return table


def identifier_keywords() -> frozenset[str]:
    """Keywords of the Annex E basic-profile attributes (see :func:`annex_e_basic_profile`)."""
    return frozenset(keyword for keyword, _ in annex_e_basic_profile().values())


# Bulk and binary VRs are left out of header_json: they are pixels, LUTs or private blobs.
_BULK_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})


class Skip(Exception):
    """An object that cannot be audited; becomes a `skipped` row."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail[:500]


@dataclass
class DicomImage:
    """A decoded object: the `images` row (without lake/run columns) and display-ready pixels."""

    header: dict[str, Any]
    pixels: np.ndarray  # 2-D float32, MONOCHROME2 polarity (bone bright)


def patient_key(patient_id: str | None, salt: str) -> str | None:
    """Salted SHA-256 of PatientID, 24 hex chars; NULL when the header has no PatientID."""
    if not patient_id:
        return None
    return hashlib.sha256((salt + "\x00" + patient_id).encode("utf-8")).hexdigest()[:24]


def _text(ds: Dataset, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:  # invalid VR values raise on access in pydicom 3
        return None
    if value is None or value == "":
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip() or None


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except Exception:
        return None


# Sequences are kept to this depth and this many items each: header_json summarises a header, and a
# structured report's content tree would otherwise grow it without bound.
MAX_SEQUENCE_DEPTH = 8
MAX_SEQUENCE_ITEMS = 64


def is_identifier(elem) -> bool:
    """Whether header_json leaves ``elem`` out as a possible identifier: an Annex E basic-profile
    attribute, any person name (VR PN), a private tag, a curve (50xx) or overlay (60xx) group, or
    an element pydicom's dictionary does not know (nothing says what it may hold)."""
    tag = elem.tag
    if tag.is_private or (tag.group & 0xFF00) in (0x5000, 0x6000):
        return True
    return int(tag) in annex_e_basic_profile() or elem.VR == "PN" or not elem.keyword


def header_json(ds: Dataset) -> str:
    """Public header elements as ``{keyword: text}`` (sequences as lists of such objects), without
    identifiers (:func:`is_identifier`, at every depth) or bulk data."""
    return json.dumps(_header_items(ds, 0), ensure_ascii=False, sort_keys=True)


def _header_items(ds: Dataset, depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tag in list(ds.keys()):
        try:
            if tag.is_private or tag.group == 0x7FE0 or _deferred(ds.get_item(tag, keep_deferred=True)):
                continue  # a value parse left unread is over DEFER_BYTES: bulk data, not read to drop it
            elem = ds[tag]  # converts VR UN to the dictionary's VR, so the PN test below sees it
            if elem.VR in _BULK_VRS or is_identifier(elem):
                continue
            if elem.VR == "SQ":
                if depth + 1 < MAX_SEQUENCE_DEPTH:
                    out[elem.keyword] = [_header_items(item, depth + 1) for item in elem.value[:MAX_SEQUENCE_ITEMS]]
                continue
            value = elem.value
            if isinstance(value, (bytes, bytearray)):
                continue
            if isinstance(value, pydicom.multival.MultiValue):
                text = "\\".join(str(v) for v in value)
            else:
                text = str(value)
            out[elem.keyword] = text[:256]
        except Exception:  # an unreadable element is left out, not fatal
            continue
    return out


def _deferred(elem) -> bool:
    """Whether ``elem`` (from ``Dataset.get_item(..., keep_deferred=True)``) is a value parse left unread."""
    return elem is not None and getattr(elem, "value", b"") is None and bool(getattr(elem, "length", 0))


def _looks_like_dicom_without_preamble(head: bytes) -> bool:
    # A dataset written without the 128-byte preamble starts with a group 0002 or 0008 tag.
    return len(head) >= 4 and head[:2] in (b"\x02\x00", b"\x08\x00") and head[3:4] == b"\x00"


_LONG_LENGTH_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})


def transfer_syntax_of(head: bytes) -> str | None:
    """TransferSyntaxUID from the first bytes of a DICOM Part 10 file (preamble, ``DICM``, file
    meta group), or None when ``head`` does not hold one. Never raises: ``head`` may be any bytes."""
    if head[128:132] != b"DICM":
        return None
    pos = 132
    # The file meta group is always explicit VR little endian (PS3.10 7.1).
    while pos + 8 <= len(head):
        group, element = int.from_bytes(head[pos : pos + 2], "little"), int.from_bytes(head[pos + 2 : pos + 4], "little")
        if group != 0x0002:
            return None
        vr = head[pos + 4 : pos + 6]
        if vr in _LONG_LENGTH_VRS:
            if pos + 12 > len(head):
                return None
            length, pos = int.from_bytes(head[pos + 8 : pos + 12], "little"), pos + 12
        else:
            length, pos = int.from_bytes(head[pos + 6 : pos + 8], "little"), pos + 8
        if element == 0x0010:
            if pos + length > len(head):
                return None
            value = head[pos : pos + length].rstrip(b"\x00 ").decode("ascii", "replace")
            return value or None
        pos += length
    return None


# Values longer than this stay in the caller's bytes until touched: native pixel data is then read
# in place (strided) instead of being copied into the dataset first (~3 ms per 10 MB frame).
DEFER_BYTES = 512 * 1024


def parse(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Dataset:
    """Parse DICOM bytes (with or without preamble).

    Raises:
        Skip: ``not_dicom``, ``truncated`` or ``too_large`` (a deflated dataset that inflates
            beyond what its header declares).
    """
    return parse_object(data, max_pixels)[0]


DEFLATED = "1.2.840.10008.1.2.1.99"
# Inflated bytes read for a deflated dataset's header (everything before Pixel Data) before its
# Rows and Columns decide how much more may be inflated.
DEFLATE_HEADER_BYTES = 8 * 1024 * 1024
# Inflated bytes allowed beyond the declared pixel data: trailing elements (padding, signatures).
DEFLATE_SLACK_BYTES = 1024 * 1024
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"


def parse_object(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Dataset, bytes]:
    """(dataset, the bytes its deferred values lie in): ``data`` itself, or for a deflated
    transfer syntax the inflated dataset, inflated no further than its header declares.

    pydicom inflates a deflated dataset whole, whatever its size: 1.5 MB can declare a few
    hundred pixels and inflate to 1.5 GB (issue 22 item 4).

    Raises:
        Skip: as :func:`parse`.
    """
    if transfer_syntax_of(data[:4096]) == DEFLATED:
        meta_end = file_meta_end(data)
        if meta_end is not None:
            inflated = _inflate_declared(memoryview(data)[meta_end:], max_pixels)
            ds = _parse_bytes(inflated, bare=True)
            from pydicom.dataset import FileMetaDataset

            meta = FileMetaDataset()
            meta.TransferSyntaxUID = UID(DEFLATED)
            ds.file_meta = meta
            return ds, inflated
    return _parse_bytes(data), data


def file_meta_end(head: bytes) -> int | None:
    """Offset just past the file meta group of a Part 10 file (None when ``head`` holds none)."""
    if head[128:132] != b"DICM":
        return None
    pos = 132
    while pos + 8 <= len(head):
        if int.from_bytes(head[pos : pos + 2], "little") != 0x0002:
            return pos
        if head[pos + 4 : pos + 6] in _LONG_LENGTH_VRS:
            if pos + 12 > len(head):
                return None
            pos += 12 + int.from_bytes(head[pos + 8 : pos + 12], "little")
        else:
            pos += 8 + int.from_bytes(head[pos + 6 : pos + 8], "little")
    return None


def _inflate(d, stream, state: list, limit: int, stop: bytes | None = None, out: bytearray | None = None) -> bytearray:
    """Inflate from ``stream`` (input offset in ``state[0]``) until ``out`` holds ``limit`` bytes,
    the stream ends, or ``stop`` appears in the output."""
    out = bytearray() if out is None else out
    while len(out) < limit and not d.eof:
        tail = d.unconsumed_tail
        if not tail:
            if state[0] >= len(stream):
                break
            tail = bytes(stream[state[0] : state[0] + 65536])
            state[0] += 65536
        out += d.decompress(tail, min(1 << 20, limit - len(out)))
        if stop is not None and stop in out[-(1 << 20) - 4 :]:
            break
    return out


def _inflate_declared(stream, max_pixels: int) -> bytes:
    d = zlib.decompressobj(-zlib.MAX_WBITS)
    state = [0]
    try:
        out = _inflate(d, stream, state, DEFLATE_HEADER_BYTES, stop=_PIXEL_DATA_TAG)
        at = out.find(_PIXEL_DATA_TAG)
        if at < 0:
            if d.eof or not _inflate(d, stream, state, 1):
                return bytes(out)
            raise Skip(TOO_LARGE, f"deflated dataset holds no Pixel Data within its first {DEFLATE_HEADER_BYTES} bytes")
        header = _parse_bytes(bytes(out[:at]), stop_before_pixels=True, bare=True)
        rows, cols = _int(header, "Rows") or 0, _int(header, "Columns") or 0
        if rows * cols > max_pixels:
            raise Skip(TOO_LARGE, f"{rows}x{cols} exceeds the limit of {max_pixels} pixels")
        frames = max(1, _int(header, "NumberOfFrames") or 1)
        samples = max(1, _int(header, "SamplesPerPixel") or 1)
        bits = max(1, _int(header, "BitsAllocated") or 16)
        declared = math.ceil(rows * cols * frames * samples * bits / 8)
        limit = at + 12 + declared + declared // 100 + DEFLATE_SLACK_BYTES
        _inflate(d, stream, state, limit, out=out)
        if not d.eof and _inflate(d, stream, state, 1):
            raise Skip(TOO_LARGE, f"deflated data inflates beyond the {declared} bytes of pixel data its header "
                                  f"declares ({rows}x{cols}, {frames} frame(s))")
        return bytes(out)
    except zlib.error as exc:
        raise Skip(TRUNCATED, f"deflated dataset cannot be inflated: {exc}") from exc


READ_BODY, READ_MORE = "read", "more"


def header_verdict(head: bytes, at_end: bool, max_pixels: int = DEFAULT_MAX_PIXELS) -> Skip | str:
    """What the first bytes of an object decide before its body is fetched: a :class:`Skip`
    (``not_dicom``, or ``too_large`` from Rows x Columns), ``READ_MORE`` (the header goes on past
    ``head``; ``at_end``: ``head`` is the whole object) or ``READ_BODY`` (the full read decides).

    Only what the full read would decide the same way is decided here: anything unclear reads the body.
    """
    if not head:
        return Skip(NOT_DICOM, "zero bytes") if at_end else READ_MORE
    if head[128:132] != b"DICM" and not _looks_like_dicom_without_preamble(head[:8]):
        if len(head) < 132 and not at_end:
            return READ_MORE
        return Skip(NOT_DICOM, "no DICM prefix and no DICOM dataset at the start of the object")
    if transfer_syntax_of(head[:4096]) == DEFLATED:
        return READ_BODY  # the header is deflated too; parse_object caps its inflation
    at = head.find(_PIXEL_DATA_TAG, file_meta_end(head) or 0)
    if at < 0:
        return READ_BODY if at_end else READ_MORE
    try:
        ds = _parse_bytes(head[:at], stop_before_pixels=True)
    except Skip:
        return READ_BODY
    rows, cols = _int(ds, "Rows") or 0, _int(ds, "Columns") or 0
    if rows * cols > max_pixels:
        return Skip(TOO_LARGE, f"{rows}x{cols} exceeds the limit of {max_pixels} pixels")
    return READ_BODY


def _parse_bytes(data: bytes, stop_before_pixels: bool = False, bare: bool = False) -> Dataset:
    """``bare``: ``data`` is a dataset without preamble or file meta (an inflated deflated one)."""
    if len(data) == 0:
        raise Skip(NOT_DICOM, "zero bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if bare:
            try:
                return pydicom.dcmread(io.BytesIO(data), force=True, defer_size=DEFER_BYTES,
                                       stop_before_pixels=stop_before_pixels)
            except Exception as exc:
                raise Skip(TRUNCATED, f"inflated dataset unparseable: {type(exc).__name__}: {exc}") from exc
        try:
            return pydicom.dcmread(io.BytesIO(data), force=False, defer_size=DEFER_BYTES,
                                   stop_before_pixels=stop_before_pixels)
        except InvalidDicomError as exc:
            if not _looks_like_dicom_without_preamble(data[:8]):
                raise Skip(NOT_DICOM, str(exc)) from exc
        except (EOFError, OverflowError) as exc:
            raise Skip(TRUNCATED, f"header ends early: {exc}") from exc
        except Exception as exc:
            raise Skip(TRUNCATED if len(data) < 1024 else READ_ERROR, f"{type(exc).__name__}: {exc}") from exc
        try:
            return pydicom.dcmread(io.BytesIO(data), force=True, defer_size=DEFER_BYTES,
                                   stop_before_pixels=stop_before_pixels)
        except Exception as exc:
            raise Skip(NOT_DICOM, f"no preamble and unparseable: {exc}") from exc


def header_row(ds: Dataset, salt: str) -> dict[str, Any]:
    """The promoted columns of the `images` table for one dataset."""
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    study_date = _text(ds, "StudyDate") or _text(ds, "ContentDate") or _text(ds, "AcquisitionDate")
    study_month = None
    if study_date and len(study_date) >= 6 and study_date[:6].isdigit():
        study_month = f"{study_date[:4]}-{study_date[4:6]}"
    row = {
        "sop_instance_uid": _text(ds, "SOPInstanceUID"),
        "study_instance_uid": _text(ds, "StudyInstanceUID"),
        "series_instance_uid": _text(ds, "SeriesInstanceUID"),
        "patient_key": patient_key(_text(ds, "PatientID"), salt),
        "modality": _text(ds, "Modality"),
        "body_part_examined": _text(ds, "BodyPartExamined"),
        "view_position": _text(ds, "ViewPosition"),
        "patient_orientation": _text(ds, "PatientOrientation"),
        "series_description": _text(ds, "SeriesDescription"),
        "protocol_name": _text(ds, "ProtocolName"),
        "study_description": _text(ds, "StudyDescription"),
        "institution_name": _text(ds, "InstitutionName"),
        "manufacturer": _text(ds, "Manufacturer"),
        "rows": _int(ds, "Rows"),
        "columns": _int(ds, "Columns"),
        "photometric_interpretation": _text(ds, "PhotometricInterpretation"),
        "transfer_syntax_uid": str(ts) if ts else None,
        "bits_stored": _int(ds, "BitsStored"),
        "number_of_frames": _int(ds, "NumberOfFrames") or 1,
        "study_month": study_month,
        "header_json": header_json(ds),
    }
    row.update(labels.header_labels(row))
    return row


def _to_gray(arr: np.ndarray, photometric: str) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3].astype(np.float32)
        return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if arr.ndim != 2:
        raise Skip(READ_ERROR, f"unexpected pixel array shape {arr.shape} for {photometric}")
    return arr


def _decoder_available(ts) -> bool:
    if ts is None:
        return True
    try:
        from pydicom.pixels import get_decoder

        return bool(get_decoder(UID(str(ts))).is_available)
    except NotImplementedError:
        return False


def _gdcm_decode(raw: bytes, ds: Dataset) -> np.ndarray | None:
    """GDCM's own reader, for codestreams pydicom's plugins refuse (12-bit JPEG extended).

    GDCM reads only from a file name, so the bytes go through a temporary file; this path is
    taken only after the usual decoders failed.
    """
    try:
        import gdcm
    except ImportError:
        return None
    if not _fragments_well_formed(ds):
        return None  # GDCM aborts the whole process (an uncaught C++ exception) on such fragments
    with tempfile.NamedTemporaryFile(suffix=".dcm") as tmp:
        tmp.write(raw)
        tmp.flush()
        reader = gdcm.ImageReader()
        reader.SetFileName(tmp.name)
        if not reader.Read():
            return None
        image = reader.GetImage()
        buf = image.GetBuffer()
    if not buf:
        return None
    fmt = image.GetPixelFormat()
    bits = fmt.GetBitsAllocated()
    signed = fmt.GetPixelRepresentation() == 1
    dtype = {8: np.int8 if signed else np.uint8, 16: np.int16 if signed else np.uint16}.get(bits)
    rows, cols = _int(ds, "Rows") or 0, _int(ds, "Columns") or 0
    if dtype is None or fmt.GetSamplesPerPixel() != 1:
        return None
    raw_bytes = buf.encode("utf-8", "surrogateescape") if isinstance(buf, str) else bytes(buf)
    arr = np.frombuffer(raw_bytes, dtype=dtype)
    if arr.size < rows * cols:
        return None
    return arr[: rows * cols].reshape(rows, cols)


def _fragments_well_formed(ds: Dataset) -> bool:
    """Whether encapsulated Pixel Data is a run of items, each of them whole: an RLE object cut
    after 30 bytes of Pixel Data made GDCM's reader call std::terminate (gdcmSequenceOfFragments)."""
    value = ds.get("PixelData")
    if not isinstance(value, (bytes, bytearray)):
        return False
    pos = 0
    while pos < len(value):
        if pos + 8 > len(value) or value[pos : pos + 4] != b"\xfe\xff\x00\xe0":
            return False
        length = int.from_bytes(value[pos + 4 : pos + 8], "little")
        pos += 8 + length
        if pos > len(value):
            return False
    return True


J2K_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"})
JPEG_8BIT_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50"})
# Native (not encapsulated) pixel data; deflate is inflated by pydicom while the dataset is read.
NATIVE_SYNTAXES = {
    "1.2.840.10008.1.2": "<",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1": "<",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99": "<",  # Deflated Explicit VR Little Endian
}  # not Explicit VR Big Endian (retired): its 8-bit OW data is word-swapped; pydicom decodes it fully


def reduction_factor(rows: int, cols: int, target_size: int | None) -> int:
    """Largest power-of-two reduction that keeps the longest side at least twice the model input.

    Twice, so the final antialiased resize still has real detail to average.
    """
    if not target_size:
        return 0
    longest = max(rows, cols)
    r = 0
    while longest / (2 ** (r + 1)) >= 2 * target_size:
        r += 1
    return r


def _single_frame_codestream(ds: Dataset) -> bytes:
    # get_frame skips the Basic Offset Table item (non-empty in files written by pydicom and many
    # modalities); joining raw items would put the offsets in front of the codestream.
    from pydicom.encaps import get_frame

    return get_frame(ds.PixelData, 0, number_of_frames=1)


def _j2k_levels(codestream: bytes) -> int:
    """Decomposition levels from the COD marker segment of a J2K codestream (0 when unknown)."""
    pos = codestream.find(b"\xff\x52", 0, 4096)
    if pos < 0 or pos + 10 > len(codestream):
        return 0
    return codestream[pos + 9]


def _reduced_decode(ds: Dataset, ts: str, target_size: int | None, raw: bytes | None = None) -> np.ndarray | None:
    """Decode only the resolution the model needs, or None to fall back to a full decode.

    JPEG 2000: Pillow/OpenJPEG ``reduce`` skips the finest wavelet levels. 8-bit JPEG: Pillow's
    ``draft`` uses DCT scaling.
    """
    rows, cols = _int(ds, "Rows") or 0, _int(ds, "Columns") or 0
    r = reduction_factor(rows, cols, target_size)
    if r == 0 or (_int(ds, "NumberOfFrames") or 1) != 1 or (_int(ds, "SamplesPerPixel") or 1) != 1:
        return None
    if ts in J2K_SYNTAXES:
        from PIL import Image

        codestream = _single_frame_codestream(ds)
        r = min(r, _j2k_levels(codestream))
        if r == 0:
            return None
        arr = None
        # Some encoders' codestreams (precinct layouts) fail at deep reductions in OpenJPEG;
        # step back one level at a time before giving up on the fast path.
        for level in range(r, 0, -1):
            im = Image.open(io.BytesIO(codestream))
            im.reduce = level
            try:
                im.load()
            except OSError:
                continue
            arr = np.asarray(im)
            break
        if arr is None:
            return None
        bits = _int(ds, "BitsStored") or 16
        if im.mode.startswith("I;16") and bits < 16:
            # Pillow scales J2K samples to 16 bits; undo it so rescale/VOI values still apply.
            arr = arr >> (16 - bits)
        if (_int(ds, "PixelRepresentation") or 0) == 1 and arr.dtype == np.uint16:
            return None  # signed data through Pillow is ambiguous: decode fully instead
        return arr
    if ts in JPEG_8BIT_SYNTAXES and (_int(ds, "BitsAllocated") or 8) == 8:
        from PIL import Image

        im = Image.open(io.BytesIO(_single_frame_codestream(ds)))
        scale = 2 ** min(r, 3)
        im.draft("L", (max(1, cols // scale), max(1, rows // scale)))
        return np.asarray(im.convert("L") if im.mode != "L" else im)
    if ts in NATIVE_SYNTAXES:
        return _strided_native(ds, NATIVE_SYNTAXES[ts], 2**r, raw)
    return None  # other syntaxes: the full decode is strided before any float work


def _strided_native(ds: Dataset, byteorder: str, stride: int, raw: bytes | None = None) -> np.ndarray | None:
    """Every ``stride``-th pixel of native pixel data, read in place from the element's bytes
    (from ``raw``, the object's bytes, when parse left the value there).

    pydicom's ``pixel_array`` would copy the whole frame and mask its unused bits first (a 2500x2000
    16-bit frame: ~10 MB, ~30 ms); here only the kept pixels are touched. None when the layout is
    not a plain single-frame grayscale array of 8/16/32-bit integers (the full decode handles it).
    """
    rows, cols = _int(ds, "Rows") or 0, _int(ds, "Columns") or 0
    allocated = _int(ds, "BitsAllocated") or 0
    stored = _int(ds, "BitsStored") or allocated
    signed = (_int(ds, "PixelRepresentation") or 0) == 1
    if allocated not in (8, 16, 32) or not 0 < stored <= allocated or "PixelData" not in ds:
        return None
    dtype = np.dtype(f"{byteorder}{'i' if signed else 'u'}{allocated // 8}")
    need = rows * cols * dtype.itemsize
    elem = ds.get_item("PixelData", keep_deferred=True)
    if raw is not None and _deferred(elem) and elem.value_tell is not None:
        data, offset = raw, int(elem.value_tell)  # deferred: still in the object's bytes
        if elem.length < need:
            return None
    else:
        data, offset = ds.PixelData, 0
    if len(data) < offset + need:
        return None  # truncated: the full decoder reports it
    frame = np.frombuffer(data, dtype=dtype, count=rows * cols, offset=offset).reshape(rows, cols)
    arr = np.ascontiguousarray(frame[::stride, ::stride]).astype(dtype.newbyteorder("="), copy=False)
    if stored < allocated:
        # Bits above BitsStored may hold overlays or garbage: mask them (sign-extend when signed).
        shift = allocated - stored
        arr = (arr << shift) >> shift if signed else arr & ((1 << stored) - 1)
    return arr


log = logging.getLogger(__name__)

# pydicom tries each installed decoding plugin in turn and logs every plugin's failure at ERROR with
# its traceback, also when the next plugin then succeeds (12-bit JPEG extended: GDCM and Pillow
# refuse it, pylibjpeg decodes it). A fallback that works is not an error; one that does not is a
# `skipped` row whose detail names every plugin's failure. So those records are held back while a
# thread decodes, and a successful fallback is logged once per transfer syntax at INFO.
_decoding = threading.local()
_fallbacks_logged: set[str] = set()


class _HoldPluginFailures(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        held = getattr(_decoding, "held", None)
        if held is None or record.levelno < logging.ERROR:
            return True
        held.append(" ".join(record.getMessage().split())[:200])
        return False


@contextlib.contextmanager
def _plugin_failures_held() -> Any:
    logger = logging.getLogger("pydicom.pixels.decoders.base")
    if not any(isinstance(f, _HoldPluginFailures) for f in logger.filters):
        logger.addFilter(_HoldPluginFailures())
    _decoding.held = held = []
    try:
        yield held
    finally:
        _decoding.held = None


def _log_fallback(ts, held: list[str], decoder: str) -> None:
    key = f"{ts}:{decoder}"
    level = logging.DEBUG if key in _fallbacks_logged else logging.INFO
    _fallbacks_logged.add(key)
    log.log(level, "%s pixel data decoded by %s after other decoders failed: %s", ts, decoder, "; ".join(held)[:500])


def decode_pixels(
    ds: Dataset,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    raw: bytes | None = None,
    target_size: int | None = None,
) -> np.ndarray:
    """First frame as float32, modality LUT + VOI applied, MONOCHROME1 inverted, colour to gray.

    Raises:
        Skip: ``no_pixel_data``, ``too_large``, ``unsupported_transfer_syntax``,
            ``truncated``, ``unsupported_photometric`` or ``read_error``.
    """
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise Skip(NO_PIXEL_DATA, "dataset has no Pixel Data element")
    rows, cols = _int(ds, "Rows") or 0, _int(ds, "Columns") or 0
    if rows <= 0 or cols <= 0:
        raise Skip(READ_ERROR, f"invalid Rows/Columns {rows}x{cols}")
    if rows * cols > max_pixels:
        raise Skip(TOO_LARGE, f"{rows}x{cols} exceeds the limit of {max_pixels} pixels")
    photometric = (_text(ds, "PhotometricInterpretation") or "MONOCHROME2").upper()
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    with warnings.catch_warnings(), _plugin_failures_held() as held:
        warnings.simplefilter("ignore")
        try:
            frames = _int(ds, "NumberOfFrames") or 1
            arr = None
            if target_size:
                try:
                    arr = _reduced_decode(ds, str(ts), target_size, raw)
                except Exception:  # any surprise in the fast path: the full decoder decides
                    arr = None
            if arr is None:
                arr = pixel_array(ds, index=0 if frames > 1 else None)
                if target_size and arr.ndim == 2:
                    # Shrink the integer frame before any float copy, LUT or scaling: the same
                    # power-of-two stride the uncompressed fast path uses.
                    stride = 2 ** reduction_factor(arr.shape[0], arr.shape[1], target_size)
                    if stride > 1:
                        arr = np.ascontiguousarray(arr[::stride, ::stride])
        except NotImplementedError as exc:
            raise Skip(UNSUPPORTED_TS, f"{ts}: {exc}") from exc
        except (ValueError, EOFError) as exc:
            msg = str(exc)
            if "length" in msg or "expected" in msg or "end of" in msg.lower() or isinstance(exc, EOFError):
                raise Skip(TRUNCATED, msg) from exc
            raise Skip(READ_ERROR, f"{type(exc).__name__}: {msg}") from exc
        except RuntimeError as exc:
            msg = " ".join(str(exc).split())
            try:
                arr = _gdcm_decode(raw, ds) if raw is not None else None
            except Exception:  # the fallback must never turn a skip into a crash
                arr = None
            if arr is not None:
                held.append(msg[:300])
                _log_fallback(ts, held, "GDCM's own reader")
                held.clear()
            elif not _decoder_available(ts):
                raise Skip(UNSUPPORTED_TS, f"{ts}: no installed decoder: {msg}") from exc
            else:
                # A decoder exists for the syntax but the codestream is corrupt.
                raise Skip(READ_ERROR, f"pixel data could not be decoded ({ts}): {msg}") from exc
        except Exception as exc:
            raise Skip(READ_ERROR, f"{type(exc).__name__}: {exc}") from exc
        if held:
            _log_fallback(ts, held, "a later pydicom plugin")
        if photometric.startswith("MONOCHROME"):
            try:
                arr = apply_modality_lut(arr, ds)
                arr = apply_voi_lut(arr, ds, index=0)
            except Exception:
                # A broken LUT should not lose the image: min-max scaling follows anyway.
                pass
        elif photometric == "PALETTE COLOR":
            try:
                from pydicom.pixels import apply_color_lut

                arr = apply_color_lut(arr, ds)
            except Exception as exc:
                raise Skip(UNSUPPORTED_PHOTOMETRIC, f"palette colour without usable LUT: {exc}") from exc
    arr = _to_gray(np.asarray(arr), photometric).astype(np.float32, copy=False)
    if photometric == "MONOCHROME1":
        arr = float(np.max(arr)) + float(np.min(arr)) - arr
    if not np.all(np.isfinite(arr)):
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    return arr


def read_dicom(
    data: bytes, *, salt: str = "", max_pixels: int = DEFAULT_MAX_PIXELS, target_size: int | None = None
) -> DicomImage:
    """Parse and decode one object's bytes.

    With ``target_size`` (the model input side), pixels may be decoded at a reduced resolution
    whose longest side is still at least twice ``target_size``.

    Raises:
        Skip: with a reason code when the object cannot be audited.
    """
    ds, raw = parse_object(data, max_pixels)
    try:
        if "SOPInstanceUID" not in ds and "PixelData" not in ds and "Rows" not in ds:
            if data[128:132] == b"DICM":
                raise Skip(TRUNCATED, f"file meta present but the dataset ends after {len(data)} bytes")
            raise Skip(NOT_DICOM, "parsed, but holds no image attributes")
        header = header_row(ds, salt)
        pixels = decode_pixels(ds, max_pixels=max_pixels, raw=raw, target_size=target_size)
    except Skip:
        raise
    except (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError):
        raise
    except BaseException as exc:  # includes pyo3 PanicException from Rust decoders (not an Exception)
        # pydicom parses elements lazily: a corrupt element (unknown VR, wrong length) surfaces
        # only when touched. That is a malformed file, not a crash.
        raise Skip(READ_ERROR, f"malformed dataset: {type(exc).__name__}: {exc}") from exc
    return DicomImage(header=header, pixels=pixels)
