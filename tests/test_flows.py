"""audit_lake end to end: Prefect (session API), a real Dask LocalCluster, real DuckDB files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from radlint.tasks import database, discover
from radlint.tasks.options import AuditOptions

pytestmark = pytest.mark.slow

SYNTAXES = [ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless, JPEGLSLossless]


def build_small_lake(folder: Path, make_dicom, n: int = 12) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sub = folder / ("chest" if i % 2 else "knee")
        sub.mkdir(exist_ok=True)
        (sub / f"img{i:03d}.dcm").write_bytes(
            make_dicom(SYNTAXES[i % len(SYNTAXES)], seed=i, monochrome1=bool(i % 3 == 0), patient_id=f"P{i}")
        )
    (folder / "notes.txt").write_text("not a dicom file")
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "cut.dcm").write_bytes(make_dicom(seed=99)[:2000])


def audit_args(lake: str, db: Path, registry: Path, **kw) -> AuditOptions:
    base = dict(
        lake=lake, db=str(db), workers=2, batch_size=4, shard_size=5, device="cpu", registry=str(registry),
        # Tests run the real Dask path unless they test the choice of executor.
        executor="dask",
    )
    base.update(kw)
    return AuditOptions(**base)


def counts(db: Path) -> dict[str, int]:
    con = database.connect(db, read_only=True)
    try:
        return {t: con.execute(f"select count(*) from {t}").fetchone()[0] for t in ("images", "predictions", "skipped", "runs")}
    finally:
        con.close()


def test_audit_local_lake_end_to_end_and_idempotent(tmp_path, make_dicom, tiny_registry, prefect_api):
    from radlint.cli import run_audit

    lake = tmp_path / "lake"
    build_small_lake(lake, make_dicom)
    db = tmp_path / "audit.duckdb"
    summary = run_audit(audit_args(str(lake), db, tiny_registry))
    assert summary["status"] == "completed"
    assert summary["n_listed"] == 15 and summary["n_new"] == 15
    c = counts(db)
    assert c == {"images": 12, "predictions": 36, "skipped": 3, "runs": 1}

    con = database.connect(db, read_only=True)
    try:
        reasons = dict(con.execute("select regexp_extract(uri, '[^/]+$'), reason from skipped").fetchall())
        assert reasons == {"notes.txt": "not_dicom", "empty.dcm": "not_dicom", "cut.dcm": "truncated"}
        n_findings = con.execute("select count(*) from findings").fetchone()[0]
        # body_part + orientation for all 12; projection for the chest-labelled ones (all are CHEST here)
        assert n_findings == 36
        sums = con.execute(
            "select min(s), max(s) from (select list_sum(map_values(probabilities)) as s from predictions)"
        ).fetchone()
        assert abs(sums[0] - 1) < 1e-4 and abs(sums[1] - 1) < 1e-4
        parts = sorted(Path(p).name for p in (tmp_path / "audit_parts" / "images").rglob("*.parquet"))
        # 15 objects, 2 workers: shards of 4 (at least two per worker), never above --shard-size 5
        assert parts == [f"part-0000{i}.parquet" for i in range(4)]
    finally:
        con.close()

    # Re-run on the unchanged lake: nothing new is read, no rows are added.
    again = run_audit(audit_args(str(lake), db, tiny_registry))
    assert again["n_new"] == 0 and again["n_shards"] == 0
    assert counts(db) == {**c, "runs": 2}

    # New objects arrive: only they are audited.
    (lake / "new").mkdir()
    for i in range(3):
        (lake / "new" / f"n{i}.dcm").write_bytes(make_dicom(seed=100 + i))
    third = run_audit(audit_args(str(lake), db, tiny_registry))
    assert third["n_new"] == 3
    c3 = counts(db)
    assert c3["images"] == 15 and c3["predictions"] == 45 and c3["skipped"] == 3


def test_small_remainder_runs_in_process_with_the_same_rows(tmp_path, make_dicom, tiny_registry, prefect_api):
    from radlint.cli import run_audit

    lake = tmp_path / "lake"
    build_small_lake(lake, make_dicom)
    db = tmp_path / "auto.duckdb"
    summary = run_audit(audit_args(str(lake), db, tiny_registry, executor="auto"))
    assert summary["executor"] == "local" and summary["status"] == "completed"
    assert counts(db) == {"images": 12, "predictions": 36, "skipped": 3, "runs": 1}

    dask_db = tmp_path / "dask.duckdb"
    run_audit(audit_args(str(lake), dask_db, tiny_registry))
    query = "select uri, task, predicted, round(probability, 5) from predictions order by all"
    a, b = database.connect(db, read_only=True), database.connect(dask_db, read_only=True)
    try:
        assert a.execute(query).fetchall() == b.execute(query).fetchall()
    finally:
        a.close()
        b.close()


def test_executor_choice(tmp_path, make_dicom):
    from radlint.tasks.discover import ObjectRef
    from radlint.tasks.plan import break_even_seconds, choose_executor

    assert break_even_seconds(1) == float("inf")
    # seconds of decoding, not minutes, before a cluster pays on 2 cores
    assert break_even_seconds(16) < break_even_seconds(4) < break_even_seconds(2) < 30

    def lake(n: int, size_bytes: int, files: list[Path]) -> list[ObjectRef]:
        # listed sizes as a lake of 2500x2000 radiographs would have; the probe reads file meta
        return [ObjectRef(files[i % len(files)].as_uri(), size_bytes, "e") for i in range(n)]

    def write_files(name: str, syntax) -> list[Path]:
        files = []
        for i in range(3):
            path = tmp_path / f"{name}{i}.dcm"
            path.write_bytes(make_dicom(syntax, seed=i))
            files.append(path)
        return files

    native = write_files("native", ExplicitVRLittleEndian)
    jpegls = write_files("jpegls", JPEGLSLossless)
    not_dicom = [tmp_path / "notes.txt"]
    not_dicom[0].write_text("not a DICOM file " * 300)
    missing = [tmp_path / "gone.dcm"]

    two = 2
    # clear either way: no object is read
    assert choose_executor("auto", None, lake(10, 20_000, missing), two)[0] == "local"
    assert choose_executor("auto", None, lake(5000, 10_000_000, missing), two)[0] == "dask"
    # 400 radiographs of 10 MB: seconds of strided reads, minutes of JPEG-LS decoding
    where, cost = choose_executor("auto", None, lake(400, 10_000_000, native), two)
    assert where == "local" and cost == discover.SECONDS_PER_MB_BY_SYNTAX[ExplicitVRLittleEndian]
    where, cost = choose_executor("auto", None, lake(400, 10_000_000, jpegls), two)
    assert where == "dask" and cost == discover.SECONDS_PER_MB_BY_SYNTAX[JPEGLSLossless]
    # unknown or unreadable: the middle guess
    for files in (not_dicom, missing):
        assert choose_executor("auto", None, lake(400, 10_000_000, files), two) == ("dask", discover.SECONDS_PER_MB)
    # a mixed lake is costed by the sampled objects' sizes
    mixed = lake(4, 10_000_000, native) + lake(4, 30_000_000, jpegls)
    by_syntax = discover.SECONDS_PER_MB_BY_SYNTAX
    expected = (10 * by_syntax[ExplicitVRLittleEndian] + 30 * by_syntax[JPEGLSLossless]) / 40
    assert discover.probe_seconds_per_mb(mixed) == pytest.approx(expected)
    # one worker cannot gain from a cluster
    assert choose_executor("auto", None, lake(400, 10_000_000, jpegls), 1)[0] == "local"

    small = lake(10, 20_000, native)
    assert choose_executor("auto", "tcp://scheduler:8786", small, two)[0] == "dask"
    assert choose_executor("local", None, lake(5000, 10_000_000, native), two)[0] == "local"
    assert choose_executor("dask", None, small, two)[0] == "dask"
    with pytest.raises(ValueError):
        choose_executor("threads", None, small, two)


def test_cli_exit_codes(tmp_path, tiny_registry):
    from radlint.cli import main

    assert main(["audit", str(tmp_path / "missing"), "--db", str(tmp_path / "x.duckdb")]) == 2
    with pytest.raises(SystemExit) as err:
        main(["audit", str(tmp_path), "--db", str(tmp_path / "x.duckdb"), "--workers", "0"])
    assert err.value.code == 2
    assert main(["audit", str(tmp_path), "--db", str(tmp_path / "nodir" / "x.duckdb")]) == 2


def test_locked_database_gives_clear_error(tmp_path, tiny_registry, capsys):
    from radlint.cli import main

    db = tmp_path / "locked.duckdb"
    holder = database.connect(db)
    try:
        import subprocess
        import sys

        proc = subprocess.run(
            [sys.executable, "-m", "radlint.cli", "audit", str(tmp_path), "--db", str(db), "--registry", str(tiny_registry)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        holder.close()
    assert proc.returncode == 2
    assert "locked" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert main is not None


def test_audit_of_5000_objects_passes_shards_by_reference(tmp_path, make_dicom, tiny_registry, prefect_api):
    """Object lists must not travel as flow parameters (the Prefect API refuses > 512 KiB)."""
    from radlint.cli import run_audit

    lake = tmp_path / "big"
    lake.mkdir()
    data = make_dicom(pixels=np.zeros((16, 16), np.uint8) + 7)
    for i in range(5000):
        (lake / f"o{i:05d}.dcm").write_bytes(data)
    db = tmp_path / "big.duckdb"
    summary = run_audit(audit_args(str(lake), db, tiny_registry, shard_size=2500, batch_size=64))
    assert summary["status"] == "completed" and summary["n_shards"] == 4  # 1250 each: two per worker
    assert counts(db)["images"] == 5000


def test_cli_audit_with_its_own_temporary_prefect_server(tmp_path, make_dicom, tiny_registry):
    """No PREFECT_API_URL: the CLI boots Prefect's API itself, audits, stops it, exits 0."""
    import os
    import subprocess
    import sys

    lake = tmp_path / "lake"
    lake.mkdir()
    for i in range(3):
        (lake / f"i{i}.dcm").write_bytes(make_dicom(seed=i))
    db = tmp_path / "own.duckdb"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    proc = subprocess.run(
        [sys.executable, "-m", "radlint.cli", "audit", str(lake), "--db", str(db), "--registry", str(tiny_registry),
         "--device", "cpu"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Starting temporary server" not in proc.stderr  # Prefect's own fallback server was not needed
    assert counts(db)["images"] == 3
