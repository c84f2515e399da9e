"""tasks.discover: listing with versions, diff and sharding, without reading pixels."""

from __future__ import annotations

import os

import pytest

from radlint.tasks import discover


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


def test_automatic_shard_size():
    def lake(n, size_bytes):
        return [discover.ObjectRef(f"file:///{i}", size_bytes, "e") for i in range(n)]

    # small objects: ~5 ms each, so a minute is more than the 5,000-object ceiling
    assert discover.shard_size_for(lake(100_000, 8_000), workers=2) == discover.SHARD_MAX_OBJECTS
    # 10 MB radiographs: ~0.3 s each estimated, so the 500-object floor
    assert discover.shard_size_for(lake(100_000, 10_000_000), workers=2) == discover.SHARD_MIN_OBJECTS
    # ~2 MB objects: a minute of estimated work, between the bounds
    size = discover.shard_size_for(lake(100_000, 2_000_000), workers=2)
    assert discover.SHARD_MIN_OBJECTS < size < discover.SHARD_MAX_OBJECTS
    assert abs(discover.estimated_seconds(lake(size, 2_000_000)) - discover.SHARD_TARGET_SECONDS) < 1
    # a small run still gets two shards per worker; an explicit size is honoured up to that
    assert discover.shard_size_for(lake(1000, 8_000), workers=2) == 250
    # shards that run one after another in the flow's process: one shard when it is enough
    assert discover.shard_size_for(lake(10, 8_000), workers=1, shards_per_worker=1) == 10
    assert discover.shard_size_for(lake(10, 8_000), workers=1) == 5
    # the probed cost per MB sizes shards too: 10 MB of native pixels is ~0.016 s, not ~0.3 s
    native = discover.SECONDS_PER_MB_BY_SYNTAX["1.2.840.10008.1.2.1"]
    assert discover.shard_size_for(lake(100_000, 10_000_000), workers=2, seconds_per_mb=native) == round(
        discover.SHARD_TARGET_SECONDS / (discover.SECONDS_PER_OBJECT + 10 * native))
    assert discover.shard_size_for(lake(100_000, 8_000), workers=2, requested=7) == 7
    assert discover.shard_size_for(lake(10, 8_000), workers=4, requested=100) == 2
    assert discover.shard_size_for([], workers=2) == 1
    with pytest.raises(ValueError):
        discover.shard_size_for(lake(10, 1), workers=1, requested=0)


def test_local_listing_matches_fsspec_find(tmp_path):
    from fsspec.implementations.local import LocalFileSystem

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    for name in ("x.dcm", "a/y.dcm", "a/b/z", "a/.hidden", "a/b/.tmp-part"):
        (tmp_path / name).write_bytes(b"d" * (len(name) + 3))
    (tmp_path / "link.dcm").symlink_to(tmp_path / "x.dcm")
    (tmp_path / "linkdir").symlink_to(tmp_path / "a", target_is_directory=True)
    fs = LocalFileSystem()
    root = fs._strip_protocol(str(tmp_path))
    expected = {p: (i["size"], i["mtime"]) for p, i in fs.find(root, detail=True, withdirs=False).items()
                if i["type"] == "file"}
    got = {p: (i["size"], i["mtime"]) for p, i in discover.find_local(root).items()}
    assert got == expected and len(got) == 5
    # the audit-facing listing: same uris and etags through either path
    refs = discover.discover(str(tmp_path))
    assert [r.uri.rsplit("/", 1)[-1] for r in refs] == ["z", "y.dcm", "x.dcm"]
    assert all(r.etag == f"{r.size_bytes}-{expected[r.uri[len('file://'):]][1]}" for r in refs)
