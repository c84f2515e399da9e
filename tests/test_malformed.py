"""A malformed-DICOM corpus made here: each object is a `skipped` row with a specific reason or a
correctly audited image; nothing crashes. Plus a bounded fuzz test over mutated real DICOM bytes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from radlint.tasks import dicom_io, discover, shard
from tests.conftest import gradient_image


def _save(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def corpus(make_dicom) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, expected outcome: a skip reason or 'audited')."""
    good = make_dicom()
    items: dict[str, tuple[bytes, str]] = {}
    items["zero_bytes.dcm"] = (b"", dicom_io.NOT_DICOM)
    items["not_dicom.txt"] = (b"PatientName=John\n" * 50, dicom_io.NOT_DICOM)
    items["no_preamble.dcm"] = (good[132:], "audited")
    items["truncated_header.dcm"] = (good[:200], dicom_io.TRUNCATED)
    items["truncated_pixels.dcm"] = (good[:-3000], dicom_io.TRUNCATED)

    ds = pydicom.dcmread(io.BytesIO(good))
    del ds.PixelData
    items["no_pixel_data.dcm"] = (_save(ds), dicom_io.NO_PIXEL_DATA)

    ds = pydicom.dcmread(io.BytesIO(good))
    ds.BitsAllocated = 32  # the data length says 16
    items["bits_allocated_mismatch.dcm"] = (_save(ds), dicom_io.TRUNCATED)

    ds = pydicom.dcmread(io.BytesIO(good))
    ds.Rows, ds.Columns = 60000, 60000  # refused before any decode is attempted
    items["huge_dimensions.dcm"] = (_save(ds), dicom_io.TOO_LARGE)

    ds = pydicom.dcmread(io.BytesIO(make_dicom(RLELossless)))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder for radiographs
    items["unsupported_syntax.dcm"] = (_save(ds), dicom_io.UNSUPPORTED_TS)

    ds = pydicom.dcmread(io.BytesIO(good))
    frame = np.frombuffer(ds.PixelData, dtype=np.uint16)
    ds.PixelData = np.concatenate([frame, frame[::-1]]).tobytes()
    ds.NumberOfFrames = 2
    items["multi_frame.dcm"] = (_save(ds), "audited")

    rgb = np.stack([gradient_image()] * 3, axis=-1)
    ds = pydicom.dcmread(io.BytesIO(good))
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = rgb.tobytes()
    items["rgb.dcm"] = (_save(ds), "audited")

    ds = pydicom.dcmread(io.BytesIO(good))
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = gradient_image().tobytes()
    lut = np.arange(256, dtype=np.uint16) * 257
    for c, tag in (("Red", 0x00281101), ("Green", 0x00281102), ("Blue", 0x00281103)):
        ds.add_new(tag, "US", [256, 0, 16])
        ds.add_new(tag + 0x100, "OW", lut.tobytes())
    items["palette.dcm"] = (_save(ds), "audited")

    ds = pydicom.dcmread(io.BytesIO(good))
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = gradient_image().tobytes()
    items["palette_without_lut.dcm"] = (_save(ds), dicom_io.UNSUPPORTED_PHOTOMETRIC)

    # An IS value that is not a number, and a DA that is not a date: invalid VR values.
    ds = pydicom.dcmread(io.BytesIO(good))
    ds.InstanceNumber = "975313"
    patched = _save(ds).replace(b"975313", b"97x31z").replace(b"20250314", b"2025-13-")
    items["invalid_vr_values.dcm"] = (patched, "audited")

    ds = pydicom.dcmread(io.BytesIO(good))
    ds.SpecificCharacterSet = "ISO_IR 999"  # unknown character set
    ds.InstitutionName = "Kr\xe4nkenhaus"
    items["bad_charset.dcm"] = (_save(ds), "audited")
    return items


def test_malformed_corpus_never_crashes(tmp_path, make_dicom, tiny_registry):
    lake = tmp_path / "lake"
    lake.mkdir()
    items = corpus(make_dicom)
    for name, (data, _) in items.items():
        (lake / name).write_bytes(data)
    result = shard.audit_shard(
        discover.discover(str(lake)), out_dir=str(tmp_path / "out"), run_id="r", shard_id="0",
        registry_path=str(tiny_registry), device="cpu",
    )
    import pyarrow.parquet as pq

    skipped = {Path(r["uri"]).name: r["reason"] for r in pq.read_table(result["parts"]["skipped"]).to_pylist()}
    audited = {Path(u).name for u in pq.read_table(result["parts"]["images"]).column("uri").to_pylist()}
    outcome = {name: ("audited" if name in audited else skipped.get(name, "missing")) for name in items}
    assert outcome == {name: expected for name, (_, expected) in items.items()}


@pytest.fixture(scope="module")
def seed_bytes() -> list[bytes]:
    from pydicom.data import get_testdata_file

    from radlint import lakegen

    small = lakegen.make_dataset(
        gradient_image(48, 40), patient_id="F", body_part_examined="CHEST", view_position="PA",
        description="XR CHEST PA", institution="H", manufacturer="M", study_date="20250101", monochrome1=True,
    )
    out = [lakegen.encode(small, ExplicitVRLittleEndian)]
    small2 = pydicom.dcmread(io.BytesIO(out[0]))
    out.append(lakegen.encode(small2, RLELossless))
    out.append(Path(get_testdata_file("JPEG2000.dcm", download=False)).read_bytes())
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    which=st.integers(0, 2),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=8),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_fuzz_mutated_dicom_is_image_or_skip(seed_bytes, which, edits, cut):
    data = bytearray(seed_bytes[which])
    for where, value in edits:
        data[int(where * len(data))] = value
    if cut is not None:
        data = data[: int(cut * len(data))]
    try:
        image = dicom_io.read_dicom(bytes(data), max_pixels=4_000_000, target_size=32)
    except dicom_io.Skip as skip:
        assert skip.reason in {
            dicom_io.NOT_DICOM, dicom_io.TRUNCATED, dicom_io.NO_PIXEL_DATA, dicom_io.UNSUPPORTED_TS,
            dicom_io.UNSUPPORTED_PHOTOMETRIC, dicom_io.TOO_LARGE, dicom_io.READ_ERROR,
        }
    else:
        assert image.pixels.ndim == 2 and np.isfinite(image.pixels).all()
