"""`radlint demo` end to end on the pydicom-data fallback lake (no shared radiographs needed)."""

from __future__ import annotations

import csv

import pytest

from radlint.tasks import database

pytestmark = pytest.mark.slow


def test_demo_without_shared_radiographs(tmp_path, tiny_registry, prefect_api, monkeypatch, capsys):
    from radlint.cli import main

    monkeypatch.setenv("RADLINT_RADIOGRAPHS", str(tmp_path / "absent"))
    work = tmp_path / "demo"
    code = main(["demo", "--dir", str(work), "--registry", str(tiny_registry), "--error-rate", "0.3", "--workers", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert (work / "report.html").exists() and "Review report:" in out
    assert "pydicom-data CR radiographs" in out and "Planted errors found" in out and str(work / "radlint.duckdb") in out
    truth = list(csv.DictReader(open(work / "planted_errors.csv", encoding="utf-8")))
    n_images = len({r["uri"] for r in truth})
    assert n_images == 12 and any(r["planted"] == "True" for r in truth)
    con = database.connect(work / "radlint.duckdb", read_only=True)
    try:
        assert con.execute("select count(*) from images").fetchone()[0] == n_images
        assert con.execute("select count(*) from thumbnails").fetchone()[0] == n_images
        assert con.execute("select count(*) from findings where field = 'body_part'").fetchone()[0] == n_images
    finally:
        con.close()
