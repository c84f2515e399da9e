"""Object names a hostile or careless lake holds (issue 22 items 3 and 5): bytes that are not UTF-8,
and keys containing fsspec's URL syntax (``::``, ``?versionId=``, glob characters)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from radlint.tasks import database, discover
from radlint.tasks.shard import _fetch_chunk


def test_uri_encoding_is_lossless():
    for path in ["/lake/caf\udce9.dcm", "/lake/100%.dcm", "/lake/x%E9.dcm", "/lake/plain.dcm", "/lake/ü ß.dcm",
                 "/lake/victim::other.dcm", "/lake/k?versionId=abc.dcm"]:
        uri = discover.uri_for("file", path)
        uri.encode("utf-8")  # storable: no surrogates left
        assert discover.path_for_uri(uri) == ("file", path)
    assert discover.uri_for("file", "/lake/caf\udce9.dcm") == "file:///lake/caf%E9.dcm"
    assert discover.uri_for("file", "/lake/x%E9.dcm") == "file:///lake/x%25E9.dcm"
    # Ordinary names keep the uris earlier runs stored.
    assert discover.uri_for("file", "/lake/a b/ü.dcm") == "file:///lake/a b/ü.dcm"
    assert discover.path_for_uri("s3://b/cr/k?versionId=abc.dcm") == ("s3", "b/cr/k?versionId=abc.dcm")


def test_each_listed_object_is_read_by_its_own_path(tmp_path):
    contents = {b"victim": b"A", b"victim::other.dcm": b"B", b"a1.dcm": b"C", b"a[1].dcm": b"D", b"caf\xe9.dcm": b"E",
                b"100%.dcm": b"F", b"k?versionId=abc.dcm": b"G", b"k": b"H"}
    for name, data in contents.items():
        with open(os.path.join(os.fsencode(tmp_path), name), "wb") as f:
            f.write(data)
    refs = discover.discover(str(tmp_path))
    got = {os.fsencode(discover.path_for_uri(r.uri)[1]).rsplit(b"/", 1)[-1]: p for r, p in zip(refs, _fetch_chunk(refs, None))}
    assert got == contents


def _lake_with_odd_names(lake: Path, make_dicom) -> dict[bytes, str]:
    """name -> BodyPartExamined of the object of that name."""
    lake.mkdir()
    parts = {b"ok.dcm": "CHEST", b"caf\xe9.dcm": "KNEE", b"victim": "CHEST", b"victim::other.dcm": "KNEE",
             b"a[1].dcm": "SKULL", b"a1.dcm": "CHEST"}
    for i, (name, body) in enumerate(parts.items()):
        with open(os.path.join(os.fsencode(lake), name), "wb") as f:
            f.write(make_dicom(seed=i, body_part_examined=body))
    return parts


def _bodies_by_name(db: Path) -> dict[bytes, str]:
    con = database.connect(db, read_only=True)
    try:
        rows = con.execute("select uri, body_part_examined from images").fetchall()
    finally:
        con.close()
    return {os.fsencode(discover.path_for_uri(u)[1]).rsplit(b"/", 1)[-1]: b for u, b in rows}


@pytest.mark.slow
def test_cli_audits_odd_local_names(tmp_path, make_dicom, tiny_registry, prefect_api, capsys):
    from radlint.cli import main
    from tests.test_flows import counts

    lake = tmp_path / "lake"
    parts = _lake_with_odd_names(lake, make_dicom)
    db = tmp_path / "odd.duckdb"
    argv = ["audit", str(lake), "--db", str(db), "--registry", str(tiny_registry), "--device", "cpu"]
    assert main(argv) == 0
    # Each object audited with its own bytes: a name that is not UTF-8 stops nothing, and neither
    # '::' nor glob characters make the audit read another object.
    assert _bodies_by_name(db) == parts
    first = counts(db)
    assert first["images"] == len(parts) and first["skipped"] == 0
    assert main(argv) == 0  # a re-run finds nothing new and adds nothing
    assert counts(db) == {**first, "runs": first["runs"] + 1}
    assert not list((tmp_path / "odd_parts").rglob("*.tmp"))


@pytest.mark.s3
@pytest.mark.slow
def test_s3_keys_with_version_and_chaining_syntax(tmp_path, s3_server, make_dicom, tiny_registry, prefect_api):
    import s3fs

    from radlint.cli import run_audit
    from tests.test_flows import audit_args

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("oddlake")
    keys = {"cr/k": "CHEST", "cr/k?versionId=abc.dcm": "KNEE", "cr/v": "CHEST", "cr/v::other.dcm": "SKULL"}
    for i, (key, body) in enumerate(keys.items()):
        # put_object, not fs.pipe: s3fs itself would cut the key at '?versionId='.
        fs.call_s3("put_object", Bucket="oddlake", Key=key, Body=make_dicom(seed=i, body_part_examined=body))
    db = tmp_path / "odds3.duckdb"
    summary = run_audit(audit_args("s3://oddlake/cr", db, tiny_registry, executor="local"))
    assert summary["status"] == "completed"
    con = database.connect(db, read_only=True)
    try:
        got = dict(con.execute("select uri, body_part_examined from images").fetchall())
    finally:
        con.close()
    assert got == {f"s3://oddlake/{k}": v for k, v in keys.items()}
