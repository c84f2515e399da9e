"""Reduced-resolution decoding gives the same predictions as the full decode on real CR files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radlint.tasks import dicom_io, infer, preprocess
from tests.conftest import SHARED

# Stated tolerances. The predicted class must never change (projection: where it means something,
# on a film the model calls chest). Class probabilities move by less than MEAN_TOLERANCE on average
# and MAX_TOLERANCE at worst (measured with radlint-multihead-v2: mean 0.005, max 0.025; v3: max
# 0.011; v4: max 0.081, on a hip film's meaningless projection output). Before
# tasks.preprocess.to_uint8 clipped the 0.05 % tails, the wavelet overshoot of a reduced JPEG 2000
# decode moved WG04 RG2 (a hip film) by up to 0.46 and changed its class.
MEAN_TOLERANCE = 0.02
MAX_TOLERANCE = 0.1


def real_cr_files() -> list[Path]:
    from pydicom.data import get_testdata_file

    files = [Path(get_testdata_file(n, download=False)) for n in ("RG1_J2KR.dcm", "RG1_J2KI.dcm", "RG1_UNCR.dcm", "RG3_J2KR.dcm", "RG3_UNCR.dcm")]
    shared = SHARED / "data" / "dicom"
    if shared.exists():
        files += sorted(p for p in shared.glob("wg04_*.dcm"))
        files += [shared / "txv_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"]
    return [f for f in files if f.exists()]


@pytest.mark.parametrize("size", [224, 256])
def test_reduction_factor_keeps_twice_the_input(size):
    for rows, cols in [(2500, 2048), (1024, 1024), (300, 200), (4000, 100)]:
        r = dicom_io.reduction_factor(rows, cols, size)
        assert max(rows, cols) / 2**r >= min(2 * size, max(rows, cols))


@pytest.mark.slow
def test_reduced_decode_matches_full_decode_predictions():
    entry = infer.default_model()
    files = real_cr_files()
    assert len(files) >= 5
    reduced_any = False
    diffs = []
    for path in files:
        data = path.read_bytes()
        try:
            full = dicom_io.read_dicom(data)
        except dicom_io.Skip:
            continue
        reduced = dicom_io.read_dicom(data, target_size=entry.input_size)
        reduced_any |= reduced.pixels.shape != full.pixels.shape
        batch = np.stack(
            [preprocess.model_input(full.pixels, entry.input_size), preprocess.model_input(reduced.pixels, entry.input_size)]
        )
        probs = infer.predict(entry, batch, device="cpu")
        chest = entry.tasks["body_part"].classes[probs["body_part"][0].argmax()] == "chest"
        for task, p in probs.items():
            if task != "projection" or chest:
                assert p[0].argmax() == p[1].argmax(), (path.name, task, p)
            diffs.append(float(np.abs(p[0] - p[1]).max()))
            assert diffs[-1] < MAX_TOLERANCE, (path.name, task, diffs[-1])
    assert reduced_any, "no file was decoded at reduced resolution"
    assert float(np.mean(diffs)) < MEAN_TOLERANCE, diffs


def test_reduced_decode_runs_on_files_with_a_basic_offset_table(make_dicom):
    """pydicom's encoder writes a non-empty Basic Offset Table; the fast path must skip it."""
    from pydicom.uid import JPEG2000Lossless, RLELossless

    rng = np.random.default_rng(1)
    pixels = (rng.random((1600, 1200)) * 255).astype(np.uint8)
    for ts, expected in ((JPEG2000Lossless, (400, 300)), (RLELossless, (400, 300))):
        data = make_dicom(ts, pixels=pixels)
        image = dicom_io.read_dicom(data, target_size=192)
        assert image.pixels.shape == expected, ts


def native_files() -> list[Path]:
    # pydicom's own test files and pydicom-data's, found on disk: pydicom.data.get_testdata_files
    # would also try to download every file of pydicom's online list that is not cached.
    import pydicom.data
    from pydicom.data.data_manager import DataTypes, external_data_sources

    files = sorted(Path(pydicom.data.DATA_ROOT, "test_files").glob("*.dcm"))
    for source in external_data_sources().values():
        files += sorted(Path(p) for p in source.get_paths("*.dcm", DataTypes.DATASET))
    shared = SHARED / "data" / "dicom"
    if shared.exists():
        files += sorted(shared.glob("*.dcm"))
    return files


def test_strided_native_read_equals_the_full_decode_strided():
    import io

    import pydicom

    checked = 0
    for path in native_files():
        try:
            ds = pydicom.dcmread(io.BytesIO(path.read_bytes()))
            ts = str(ds.file_meta.TransferSyntaxUID)
        except Exception:
            continue
        if ts not in dicom_io.NATIVE_SYNTAXES or "PixelData" not in ds:
            continue
        if (ds.get("NumberOfFrames") or 1) != 1 or (ds.get("SamplesPerPixel") or 1) != 1:
            continue
        try:
            full = ds.pixel_array
        except Exception:
            continue
        fast = dicom_io._strided_native(ds, dicom_io.NATIVE_SYNTAXES[ts], 2)
        if fast is None:
            continue
        assert fast.dtype == full.dtype.newbyteorder("=") or fast.dtype == full.dtype, path.name
        assert np.array_equal(fast, full[::2, ::2]), path.name
        # As the audit reads it: parse defers a large Pixel Data value, which is then read in place.
        data = path.read_bytes()
        in_place = dicom_io._strided_native(dicom_io.parse(data), dicom_io.NATIVE_SYNTAXES[ts], 2, data)
        assert in_place is not None and np.array_equal(in_place, fast), path.name
        checked += 1
    assert checked >= 10, checked


@pytest.mark.parametrize("monochrome1", [False, True])
def test_deferred_pixel_data_is_read_in_place_and_equals_the_full_decode(make_dicom, monochrome1):
    import io

    import pydicom

    rng = np.random.default_rng(3)
    u8 = rng.integers(0, 256, (1200, 960), dtype=np.uint8)  # 16-bit frame: 2.3 MB, above DEFER_BYTES
    data = make_dicom(pixels=u8, monochrome1=monochrome1)
    ds = dicom_io.parse(data)
    elem = ds.get_item("PixelData", keep_deferred=True)
    assert elem.value is None and elem.length > dicom_io.DEFER_BYTES  # not copied by parse
    full = pydicom.dcmread(io.BytesIO(data)).pixel_array
    stride = 2 ** dicom_io.reduction_factor(*full.shape, 192)
    assert stride == 2
    fast = dicom_io._strided_native(ds, "<", stride, data)
    assert np.array_equal(fast, full[::stride, ::stride])
    # header_json leaves pixel data alone, so it stays deferred
    dicom_io.header_json(ds)
    assert ds.get_item("PixelData", keep_deferred=True).value is None
    image = dicom_io.read_dicom(data, target_size=192)
    assert image.pixels.shape == (600, 480)


def test_truncated_deferred_pixel_data_is_a_skip(make_dicom):
    data = make_dicom(pixels=np.full((1200, 960), 7, dtype=np.uint8))
    for cut in (len(data) - 1, len(data) // 2, len(data) - 1_000_000):
        with pytest.raises(dicom_io.Skip) as err:
            dicom_io.read_dicom(data[:cut], target_size=192)
        assert err.value.reason == dicom_io.TRUNCATED, (cut, err.value.reason)
