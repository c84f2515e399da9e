"""`radlint evaluate-planted` end to end on a small labelled folder of synthetic images (a real
audit through the flow, the tiny model), one build and several."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from radlint import planted

pytestmark = pytest.mark.slow

PARTS = (("chest", "Chest", "PA"), ("chest", "Chest", "AP"), ("head", "Skull", ""), ("lower_limb", "Knee", ""))


@pytest.fixture
def labelled_folder(tmp_path):
    """24 images (four kinds, one patient each) and a labels.csv in the shared radiographs' format."""
    root = tmp_path / "radiographs"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(3)
    rows = []
    for i in range(24):
        body_part, fine, view = PARTS[i % len(PARTS)]
        pixels = (rng.random((96, 80)) * 255).astype(np.uint8)
        pixels[: 20 + 10 * (i % len(PARTS))] //= 3  # each kind a little different
        name = f"images/img{i:02d}.png"
        Image.fromarray(pixels).save(root / name)
        rows.append({"image_id": f"img{i:02d}", "file": name, "source": "synthetic", "institution": "Test Hospital",
                     "patient_id": f"p{i:02d}", "body_part": body_part, "body_part_fine": fine, "view": view})
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root / "labels.csv"


def test_one_build(labelled_folder, tmp_path, tiny_registry, prefect_api, capsys):
    from radlint.cli import main

    work = tmp_path / "one"
    code = main(["evaluate-planted", "--labels", str(labelled_folder), "--dir", str(work), "--error-rate", "0.3",
                 "--workers", "1", "--registry", str(tiny_registry)])
    out = capsys.readouterr().out
    assert code == 0
    assert "lake: 24 images, planted error rate 0.3 per field" in out
    assert (work / "radlint.duckdb").exists() and (work / "planted_errors.csv").exists()
    assert "precision [95% CI]" in out and "builds pooled" not in out


def test_several_builds_are_pooled_and_the_gates_chosen_over_them(labelled_folder, tmp_path, tiny_registry,
                                                                   prefect_api, capsys):
    from radlint.cli import main
    from radlint.tasks import database

    work = tmp_path / "several"
    code = main(["evaluate-planted", "--labels", str(labelled_folder), "--dir", str(work), "--error-rate", "0.3",
                 "--workers", "1", "--registry", str(tiny_registry), "--seeds", "5,6"])
    out = capsys.readouterr().out
    assert code == 0
    builds = [work / "seed-5", work / "seed-6"]
    scores = []
    for b in builds:
        assert f"=== build with seed {b.name.split('-')[1]} ({b})" in out
        con = database.connect(b / "radlint.duckdb", read_only=True)
        try:
            scores.append(planted.score(con, b / "planted_errors.csv"))
        finally:
            con.close()
    # other seeds, other planted draws
    truths = [{(r["image_id"], r["field"]): r["planted"] for r in csv.DictReader(open(b / "planted_errors.csv"))}
              for b in builds]
    assert truths[0] != truths[1]
    assert "=== 2 builds pooled (seeds 5, 6)" in out
    pooled_table = out.split("=== 2 builds pooled")[1]
    assert planted.format_table(planted.pool_scores(scores)) in pooled_table
    assert "Lake gates chosen over the builds" in pooled_table
    assert str(builds[0]) in pooled_table.split("Each build under those gates")[1]


def test_seed_and_seeds_are_exclusive(labelled_folder, tmp_path, capsys):
    from radlint.cli import main

    with pytest.raises(SystemExit) as e:
        main(["evaluate-planted", "--labels", str(labelled_folder), "--dir", str(tmp_path / "x"),
              "--seed", "1", "--seeds", "2,3"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["evaluate-planted", "--labels", str(labelled_folder), "--dir", str(tmp_path / "x"), "--seeds", "2,2"])
    assert "give distinct seeds" in capsys.readouterr().err
