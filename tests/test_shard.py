"""tasks.shard.audit_shard called directly (no Prefect): rows, parts and skips."""

from __future__ import annotations

import pyarrow.parquet as pq

from tasks import discover, shard


def test_audit_shard_writes_parts_and_skips(tmp_path, make_dicom, tiny_registry):
    lake = tmp_path / "lake"
    lake.mkdir()
    for i in range(5):
        (lake / f"ok{i}.dcm").write_bytes(make_dicom(seed=i))
    (lake / "junk.bin").write_bytes(b"\x00" * 10)
    objects = discover.discover(str(lake))
    objects.append(discover.ObjectRef(f"file://{lake}/vanished.dcm", 10, "10-1"))
    result = shard.audit_shard(
        objects, out_dir=str(tmp_path / "out"), run_id="r1", shard_id="00007",
        registry_path=str(tiny_registry), salt="s", batch_size=2, device="cpu",
    )
    assert result["n_images"] == 5 and result["n_skipped"] == 2
    images = pq.read_table(result["parts"]["images"])
    preds = pq.read_table(result["parts"]["predictions"])
    skipped = pq.read_table(result["parts"]["skipped"]).to_pylist()
    assert images.num_rows == 5 and preds.num_rows == 15
    assert set(preds.column("task").to_pylist()) == {"body_part", "projection", "orientation"}
    assert {r["uri"].rsplit("/", 1)[-1]: r["reason"] for r in skipped} == {
        "junk.bin": "not_dicom",
        "vanished.dcm": "fetch_error",
    }
    assert result["parts"]["images"].endswith("images/run_id=r1/part-00007.parquet")
    # no temporary files are left behind
    assert not list((tmp_path / "out").rglob("*.tmp"))
