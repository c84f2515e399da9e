"""Metrics on known inputs and ``radlint evaluate`` on a tiny synthetic labeled folder."""

from __future__ import annotations

import argparse
import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from radlint import evaluate as cli
from radlint.tasks import evaluation as ev


def test_auc_perfect_reversed_and_ties():
    y = np.array([0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.7, 0.8, 0.9])
    assert ev.auc_ovr(y, s) == 1.0
    assert ev.auc_ovr(y, -s) == 0.0
    assert ev.auc_ovr(y, np.full(5, 0.3)) == 0.5
    # the positive is above one negative and below the other
    assert ev.auc_ovr([0, 1, 0], [0.1, 0.5, 0.9]) == 0.5
    assert math.isnan(ev.auc_ovr([1, 1], [0.2, 0.3]))


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200).astype(bool)
    s = np.round(rng.random(200), 1)  # many ties
    pos, neg = s[y], s[~y]
    ref = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        len(pos) * len(neg))
    assert abs(ev.auc_ovr(y, s) - ref) < 1e-12


def test_confusion_matrix_and_roc():
    cm = ev.confusion_matrix([0, 1, 2, 2, 1], [0, 2, 2, 2, 1], 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 2]]
    fpr, tpr = ev.roc_curve([0, 1], [0.2, 0.8])
    assert fpr[0] == 0 and tpr[-1] == 1 and fpr[-1] == 1


def test_bootstrap_ci_brackets_point_estimate():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = y + rng.normal(0, 0.8, 300)
    point, lo, hi = ev.bootstrap_ci(ev.auc_ovr, y, s, n_boot=200, seed=0)
    assert lo <= point <= hi and 0.5 < lo < hi < 1.0
    # perfect separation: the interval collapses to 1
    assert ev.bootstrap_ci(ev.auc_ovr, [0, 0, 1, 1], [0, 0.1, 0.9, 1], n_boot=50)[1:] == (1.0, 1.0)
    # grouped resampling keeps the groups together
    p, lo, hi = ev.bootstrap_ci(ev.accuracy, np.array([1, 1, 0, 0]), np.array([1, 1, 1, 1]),
                                n_boot=100, groups=np.array([0, 0, 1, 1]))
    assert p == 0.5 and lo == 0.0 and hi == 1.0


def test_choose_thresholds():
    y = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    p1 = np.array([0.9, 0.6, 0.55, 0.95, 0.9, 0.8, 0.7, 0.99])
    p = np.stack([1 - p1, p1], 1)
    # predicted class 1 for all items with p1 > .5: wrong ones at 0.9, 0.6, 0.55
    th = ev.choose_thresholds(y, p, ["a", "b"], target_precision=0.95)
    assert th["b"] == 0.95  # above 0.9 every prediction of b is right
    assert th["a"] == 0.99  # never predicted: the fallback


def _write_folder(tmp_path, n=4):
    rng = np.random.default_rng(0)
    rows = []
    (tmp_path / "img").mkdir()
    parts = ["chest", "lower_limb", "chest", "head"]
    views = ["PA", "", "LATERAL", ""]
    for i in range(n):
        arr = (rng.random((120 + 8 * i, 100)) * 255).astype(np.uint8)
        arr[20:60, 30:70] = 255
        name = f"img/im{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(arr).save(tmp_path / name)
        rows.append({"image_id": f"im{i}", "file": name, "patient_id": f"p{i}",
                     "source": "site_b" if i == 1 else "site_a",
                     "body_part": parts[i % 4], "view": views[i % 4]})
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(tmp_path / "split.csv", "w", newline="") as f:
        f.write("patient_id,split\np0,test\np1,test\np2,test\np3,train\n")
    return tmp_path / "labels.csv"


def test_evaluate_on_synthetic_folder(tmp_path):
    pytest.importorskip("onnxruntime")
    labels = _write_folder(tmp_path)
    res = ev.evaluate(labels, n_boot=20)
    assert res["n_images"] == 4
    bp = res["tasks"]["body_part"]
    assert bp["n"] == 4 and np.sum(bp["confusion"]) == 4
    pj = res["tasks"]["projection"]
    assert pj["n"] == 2  # chest images with a view
    ori = res["tasks"]["orientation"]
    assert ori["n"] == 16  # every image, four rotations
    assert np.array(ori["confusion"]).sum(1).tolist() == [4, 4, 4, 4]
    for row in ori["per_class"]:
        assert 0.0 <= row["auc"][0] <= 1.0

    # the command-line entry point, with a split filter and JSON output
    ap = argparse.ArgumentParser()
    cli.add_arguments(ap)
    out = tmp_path / "res.json"
    args = ap.parse_args(["--labels", str(labels), "--split-file", str(tmp_path / "split.csv"),
                          "--split", "test", "--out", str(out), "--bootstrap", "10"])
    assert cli.run(args) == 0
    data = json.loads(out.read_text())
    assert data["n_images"] == 3
    assert data["tasks"]["orientation"]["n"] == 12

    # a source filter keeps that source's rows only (leave-one-source-out), and says so
    out_md = tmp_path / "res.md"
    args = ap.parse_args(["--labels", str(labels), "--source", "site_b", "--out", str(out_md),
                          "--bootstrap", "10"])
    assert cli.run(args) == 0
    assert "on 1 images (source site_b)" in out_md.read_text()
    with pytest.raises(ValueError, match="from source 'nowhere'"):
        ev.evaluate(labels, source="nowhere")


def test_run_rejects_missing_labels(tmp_path, capsys):
    ap = argparse.ArgumentParser()
    cli.add_arguments(ap)
    assert cli.run(ap.parse_args(["--labels", str(tmp_path / "nope.csv")])) == 2
    assert "not found" in capsys.readouterr().out


def test_overrides_replace_cells_and_reject_stale_reviews(tmp_path):
    rows = [{"file": "a.jpg", "body_part": "chest", "view": "PA"},
            {"file": "b.jpg", "body_part": "head", "view": ""}]
    review = tmp_path / "review.csv"
    review.write_text("file,orientation,note\nb.jpg,rot180,stored upside down\n")
    out = ev.apply_overrides(rows, review)
    assert [ev.stored_orientation(r) for r in out] == ["upright", "rot180"]
    assert out[1]["body_part"] == "head" and "orientation" not in rows[1]  # input untouched
    assert ev.apply_overrides(rows, None) is rows
    stale = tmp_path / "stale.csv"
    stale.write_text("file,orientation\ngone.jpg,rot90cw\n")
    with pytest.raises(ValueError, match="not in the labels"):
        ev.apply_overrides(rows, stale)
    assert ev.apply_overrides(rows, stale, strict=False) == rows  # a subset of the labels
    corrected = tmp_path / "corrected.csv"
    corrected.write_text("file,orientation,body_part,body_part_fine,note\n"
                         "a.jpg,,spine,Thoracic Spine,a spine film labelled chest\n")
    out = ev.apply_overrides(rows, corrected)
    assert (out[0]["body_part"], out[0]["body_part_fine"], ev.stored_orientation(out[0])) == (
        "spine", "Thoracic Spine", "upright")
    assert out[1] == rows[1]
    unquoted = tmp_path / "unquoted.csv"
    unquoted.write_text("file,orientation,note\nb.jpg,rot180,stored upside down, fingers down\n")
    with pytest.raises(ValueError, match="more cells than the header"):
        ev.apply_overrides(rows, unquoted)
    typo = tmp_path / "typo.csv"
    typo.write_text("file,body_part\na.jpg,lumbar\n")
    with pytest.raises(ValueError, match="unknown body part"):
        ev.apply_overrides(rows, typo)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,orientation\na.jpg,sideways\n")
    with pytest.raises(ValueError, match="unknown orientation"):
        ev.apply_overrides(rows, bad)
    with pytest.raises(ValueError, match="unknown orientation 'sideways'"):
        ev.stored_orientation({"file": "a.jpg", "orientation": "sideways"})
    # a file listed twice keeps both rows, each with the review applied
    twice = ev.apply_overrides(rows + [dict(rows[1], view="X")], review)
    assert [(r["view"], r["orientation"]) for r in twice[1:]] == [("", "rot180"), ("X", "rot180")]


def test_an_image_stored_rotated_is_scored_from_upright(tmp_path):
    pytest.importorskip("onnxruntime")
    from radlint.tasks.infer import default_model
    from radlint.tasks.preprocess import rotate_to_orientation

    labels = _write_folder(tmp_path)
    with open(labels, newline="") as f:
        rows = list(csv.DictReader(f))
    upright = np.asarray(Image.open(tmp_path / rows[1]["file"]))
    # store image 1 turned 90 degrees clockwise, and say so in a review file
    Image.fromarray(rotate_to_orientation(upright, "rot90cw")).save(tmp_path / rows[1]["file"])
    review = tmp_path / "review.csv"
    review.write_text(f"file,orientation\n{rows[1]['file']},rot90cw\n")
    entry = default_model()
    _, ori_reviewed = ev.predict_folder(entry, ev.apply_overrides(rows, review), tmp_path)
    Image.fromarray(upright).save(tmp_path / rows[1]["file"])
    _, ori_upright = ev.predict_folder(entry, rows, tmp_path)
    np.testing.assert_allclose(ori_reviewed, ori_upright, atol=1e-6)
    res = ev.evaluate(labels, n_boot=5, overrides=review)
    assert res["not_upright_as_stored"] == 1 and res["overrides"] == str(review)


def test_the_shipped_label_review_is_well_formed():
    # models/splits/orientation_review.csv is applied by training, gates, cards and evaluate-planted;
    # a malformed row would only fail there, on a machine with the shared radiographs.
    from radlint.models.train import ORIENTATION_REVIEW
    from radlint.tasks.vocabulary import BODY_PART, ORIENTATION

    rows = ev.read_csv(ORIENTATION_REVIEW)
    assert rows and all(None not in r for r in rows)
    assert all(r["orientation"] or r["body_part"] for r in rows), "a row that changes nothing"
    assert {r["orientation"] for r in rows} <= set(ORIENTATION) | {""}
    assert {r["body_part"] for r in rows} <= set(BODY_PART) | {""}
    assert all(r["note"] for r in rows), "every correction says what the film shows"
    files = [r["file"] for r in rows]
    assert len(files) == len(set(files))
