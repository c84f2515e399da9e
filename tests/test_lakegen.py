"""Planted-error lakes start from upright images: a labelled image that a review says is stored
rotated is brought upright before any error is planted."""

from __future__ import annotations

import csv

import numpy as np
import pydicom
from PIL import Image

from radlint import lakegen
from radlint.tasks.preprocess import rotate_to_orientation


def test_reviewed_image_is_brought_upright_before_planting(tmp_path):
    upright = np.zeros((120, 80), np.uint8)
    upright[:30] = 250  # a bright band at the top tells which way is up
    (tmp_path / "images").mkdir()
    Image.fromarray(rotate_to_orientation(upright, "rot90cw")).save(tmp_path / "images" / "a.png")
    Image.fromarray(upright).save(tmp_path / "images" / "b.png")
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "file", "patient_id", "body_part", "view", "institution"])
        w.writerow(["a", "images/a.png", "p1", "lower_limb", "", "H"])
        w.writerow(["b", "images/b.png", "p2", "lower_limb", "", "H"])
    review = tmp_path / "review.csv"
    review.write_text("file,orientation\nimages/a.png,rot90cw\n")

    sources = lakegen.read_labeled_folder(tmp_path / "labels.csv", overrides=review)
    assert [s.orientation for s in sources] == ["rot90cw", "upright"]
    truth = tmp_path / "truth.csv"
    lakegen.build_lake(sources, tmp_path / "lake", truth, error_rate=0.0, seed=0)
    for path in sorted((tmp_path / "lake").rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        px = ds.pixel_array.astype(float)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            px = px.max() - px
        assert px.shape == (120, 80), path.name
        assert px[:30].mean() > px[40:].mean(), path.name  # the bright band is on top
    with open(truth, newline="") as f:
        assert {r["true_class"] for r in csv.DictReader(f) if r["field"] == "orientation"} == {"upright"}


def test_japanese_descriptions_survive_the_round_trip():
    import warnings

    from pydicom.uid import ExplicitVRLittleEndian

    from radlint.tasks import dicom_io

    ds = lakegen.make_dataset(
        np.zeros((64, 64), np.uint8), patient_id="p1", body_part_examined=None, view_position=None,
        description="胸部臥位正面", institution="H1", manufacturer="FUJIFILM Corporation", study_date="20260101",
        monochrome1=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom only warns when it writes "?" for characters it cannot encode
        payload = lakegen.encode(ds, ExplicitVRLittleEndian)
    header = dicom_io.read_dicom(payload, target_size=64).header
    assert header["study_description"] == "胸部臥位正面"
    assert (header["label_body_part"], header["label_projection"]) == ("chest", "AP")
