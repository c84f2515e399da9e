"""tasks.shard.audit_shard called directly (no Prefect): rows, parts and skips."""

from __future__ import annotations

import pyarrow.parquet as pq

from radlint.tasks import discover, shard


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
        registry_path=str(tiny_registry), batch_size=2, device="cpu",
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


def test_threaded_native_decode_writes_what_one_thread_writes(tmp_path, make_dicom, tiny_registry):
    from pydicom.uid import RLELossless

    lake = tmp_path / "lake"
    lake.mkdir()
    for i in range(6):
        (lake / f"native{i}.dcm").write_bytes(make_dicom(seed=i, monochrome1=i % 2 == 1))
    (lake / "rle.dcm").write_bytes(make_dicom(RLELossless, seed=7))  # decoded in the shard's own thread
    truncated = make_dicom(seed=8)
    (lake / "truncated.dcm").write_bytes(truncated[: len(truncated) - 4000])  # native, fails in a decode thread
    objects = discover.discover(str(lake))
    assert shard._threads_help((lake / "native0.dcm").read_bytes())
    assert not shard._threads_help((lake / "rle.dcm").read_bytes())

    def run(threads):
        result = shard.audit_shard(
            objects, out_dir=str(tmp_path / f"out{threads}"), run_id="r", shard_id="00000",
            registry_path=str(tiny_registry), batch_size=3, device="cpu", decode_threads=threads,
        )
        tables = {k: pq.read_table(result["parts"][k]).drop_columns(
            [c for c in ("audited_at", "predicted_at", "skipped_at") if c in pq.read_schema(result["parts"][k]).names])
            for k in ("images", "predictions", "thumbnails", "skipped")}
        return result, tables

    one, one_tables = run(1)
    two, two_tables = run(2)
    assert (one["n_images"], one["n_skipped"]) == (two["n_images"], two["n_skipped"]) == (7, 1)
    for kind in one_tables:
        assert one_tables[kind].equals(two_tables[kind]), kind
    assert one_tables["skipped"].column("uri").to_pylist()[0].endswith("truncated.dcm")


def test_a_worker_with_another_model_fails_its_shard_and_writes_nothing(tmp_path, make_dicom, tiny_registry):
    import pytest

    from radlint.tasks import infer

    (tmp_path / "a.dcm").write_bytes(make_dicom(seed=1))
    with pytest.raises(infer.RegistryError, match="is not the flow's .*same radlint version"):
        shard.audit_shard(discover.discover(str(tmp_path / "a.dcm")), out_dir=str(tmp_path / "out"), run_id="r",
                          shard_id="0", registry_path=str(tiny_registry), device="cpu", model_sha256="0" * 64)
    assert not (tmp_path / "out").exists()


def test_a_model_failure_while_the_next_batch_decodes_fails_the_shard_and_publishes_nothing(
        tmp_path, make_dicom, tiny_registry, monkeypatch):
    import pytest

    from radlint.tasks import infer

    lake = tmp_path / "lake"
    lake.mkdir()
    for i in range(7):
        (lake / f"ok{i}.dcm").write_bytes(make_dicom(seed=i))
    real, calls = infer.predict_with_embedding, []

    def second_batch_fails(*args, **kwargs):  # ONNX Runtime failing mid-shard (out of memory, a bad device)
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("onnxruntime: failed to allocate")
        return real(*args, **kwargs)

    monkeypatch.setattr(infer, "predict_with_embedding", second_batch_fails)
    with pytest.raises(RuntimeError, match="failed to allocate"):
        shard.audit_shard(discover.discover(str(lake)), out_dir=str(tmp_path / "out"), run_id="r", shard_id="0",
                          registry_path=str(tiny_registry), batch_size=2, device="cpu")
    assert len(calls) == 2  # the failure stopped the shard before a third batch was classified
    assert not list((tmp_path / "out").rglob("*.parquet")) and not list((tmp_path / "out").rglob("*.tmp"))
