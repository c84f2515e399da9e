"""tasks.discover: listing with versions, diff and sharding, without reading pixels."""

from __future__ import annotations

import os

import pytest

from tasks import discover


def test_lists_files_with_size_and_version(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.dcm").write_bytes(b"1234")
    (tmp_path / "y.dcm").write_bytes(b"12")
    (tmp_path / ".hidden").write_bytes(b"zz")
    refs = discover.discover(str(tmp_path))
    assert [r.uri for r in refs] == [f"file://{tmp_path}/a/x.dcm", f"file://{tmp_path}/y.dcm"]
    assert [r.size_bytes for r in refs] == [4, 2]
    assert all(r.etag.startswith(f"{r.size_bytes}-") for r in refs)


def test_etag_changes_when_object_changes(tmp_path):
    f = tmp_path / "x.dcm"
    f.write_bytes(b"1234")
    before = discover.discover(str(tmp_path))[0]
    f.write_bytes(b"123456")
    os.utime(f, (1_900_000_000, 1_900_000_000))
    after = discover.discover(str(tmp_path))[0]
    assert before.uri == after.uri and before.etag != after.etag


def test_missing_lake_raises(tmp_path):
    with pytest.raises(discover.LakeError):
        discover.discover(str(tmp_path / "nope"))


def test_diff_and_shards():
    refs = [discover.ObjectRef(f"file:///l/{i}", i, f"e{i}") for i in range(10)]
    done = {("file:///l/1", "e1"), ("file:///l/2", "stale-etag")}
    todo = discover.diff(refs, done)
    assert len(todo) == 9 and refs[1] not in todo and refs[2] in todo
    shards = list(discover.make_shards(todo, 4))
    assert [len(s) for s in shards] == [4, 4, 1]
    with pytest.raises(ValueError):
        list(discover.make_shards(todo, 0))


def test_normalize_lake():
    assert discover.normalize_lake("/data/lake") == "file:///data/lake"
    assert discover.normalize_lake("s3://bucket/prefix/") == "s3://bucket/prefix"
