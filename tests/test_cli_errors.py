"""Bad arguments stop a command before any work, with exit 2 and one line (issue 22 item 8)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from radlint.cli import main

# A folder nobody can create files in, root included (tests may run as root, where modes do not stop writes).
READ_ONLY = Path("/proc")


@pytest.fixture
def place(tmp_path):
    (tmp_path / "lake").mkdir()
    (tmp_path / "afile").write_text("x")
    other = tmp_path / "other.duckdb"
    duckdb.connect(str(other)).execute("create table t (a int)").close()
    return tmp_path


def _one_line_exit_2(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("radlint: "), err
    return err


def test_audit_refuses_unwritable_paths_before_any_work(place, capsys):
    lake = str(place / "lake")
    assert "--db" in _one_line_exit_2(capsys, ["audit", lake, "--db", str(place / "afile" / "x.duckdb")])
    assert "--db" in _one_line_exit_2(capsys, ["audit", lake, "--db", str(place)])
    db = str(place / "a.duckdb")
    assert "--report" in _one_line_exit_2(capsys, ["audit", lake, "--db", db, "--report", str(place / "nodir" / "r.html")])
    assert "--report" in _one_line_exit_2(capsys, ["audit", lake, "--db", db, "--report", str(place / "afile" / "r.html")])
    assert "--out" in _one_line_exit_2(capsys, ["audit", lake, "--db", db, "--out", str(place / "afile" / "parts")])
    if READ_ONLY.is_dir():
        assert "cannot write --db" in _one_line_exit_2(capsys, ["audit", lake, "--db", str(READ_ONLY / "x.duckdb")])
        assert "cannot write --report" in _one_line_exit_2(
            capsys, ["audit", lake, "--db", db, "--report", str(READ_ONLY / "r.html")])
    # --out as a URL: an unknown protocol, a file:// URL under a file
    assert "cannot open --out nosuch://x" in _one_line_exit_2(capsys, ["audit", lake, "--db", db, "--out", "nosuch://x"])
    assert "--out" in _one_line_exit_2(capsys, ["audit", lake, "--db", db, "--out", f"file://{place}/afile/parts"])
    # Nothing was started: no database, lock or salt file, and no folder created on the way.
    assert sorted(p.name for p in place.iterdir()) == ["afile", "lake", "other.duckdb"]


def test_out_url_is_checked_by_putting_an_object(monkeypatch):
    """A store --out is probed with one small object, removed at once (s3 is covered in test_s3)."""
    import fsspec

    from radlint.cli import CannotRun, _check_writable_out

    _check_writable_out("memory:///writable-out")
    assert not fsspec.filesystem("memory").find("/writable-out")

    def refuse(self, path, value, **kw):
        raise PermissionError("Access Denied")

    monkeypatch.setattr("fsspec.implementations.memory.MemoryFileSystem.pipe_file", refuse)
    with pytest.raises(CannotRun, match=r"cannot write --out memory:///x: PermissionError: Access Denied"):
        _check_writable_out("memory:///x")


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "soon"])
def test_wait_lock_must_be_finite_and_not_negative(place, value, capsys):
    with pytest.raises(SystemExit) as err:
        main(["audit", str(place / "lake"), "--db", str(place / "a.duckdb"), "--wait-lock", value])
    assert err.value.code == 2
    assert "--wait-lock" in capsys.readouterr().err.strip().splitlines()[-1]


def test_report_into_a_missing_folder_is_refused(place, capsys):
    assert "folder of --out" in _one_line_exit_2(
        capsys, ["report", "--db", str(place / "other.duckdb"), "--out", str(place / "nodir" / "r.html")])
    assert not (place / "nodir").exists()


def test_export_corrections_of_a_database_without_an_audit(place, capsys):
    err = _one_line_exit_2(capsys, ["export-corrections", "--db", str(place / "other.duckdb"), "--out", str(place / "c.csv")])
    assert "no radlint audit" in err
    assert not (place / "c.csv").exists()
    assert "folder of --out" in _one_line_exit_2(
        capsys, ["export-corrections", "--db", str(place / "other.duckdb"), "--out", str(place / "nodir" / "c.csv")])


def test_registry_that_is_not_a_registry(place, capsys):
    (place / "bad.yaml").write_text("models: [unclosed\n")
    (place / "binary.yaml").write_bytes(bytes(range(256)))
    (place / "list.yaml").write_text("- just\n- a list\n")
    for name in ("bad.yaml", "binary.yaml", "list.yaml", "afile", "missing.yaml"):
        err = _one_line_exit_2(capsys, ["audit", str(place / "lake"), "--db", str(place / "a.duckdb"),
                                        "--registry", str(place / name)])
        assert "registry" in err, err
    assert not (place / "a.duckdb").exists()


def test_printed_summary_and_errors_escape_terminal_sequences(place, capsys):
    from radlint.cli import _print_summary

    hostile = "file:///lake/\x1b]0;owned\x07\x1b[2J\u202egpj.dcm"
    _print_summary({
        "run_id": "r", "status": "completed", "n_listed": 1, "n_new": 1, "n_skipped": 0, "mismatches": {}, "tables": {},
        "top_suspects": [{"severity": 0.9, "field": "body_part", "header_class": "\x1b[31mhead", "predicted_class": "chest",
                          "predicted_prob": 0.9, "uri": hostile}],
    })
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "\\x1b]0;owned\\x07" in out and "\\u202e" in out
    err = _one_line_exit_2(capsys, ["audit", str(place / "lake\x1b[2J"), "--db", str(place / "a.duckdb")])
    assert "\x1b" not in err and "\\x1b[2J" in err
