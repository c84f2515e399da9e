"""One options object: the CLI, the flow, the deployments and the stage defaults agree with AuditOptions."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import yaml

from radlint.tasks.options import AuditOptions
from tests.conftest import PROJECT_ROOT


def test_flow_parameters_are_the_options_with_their_defaults():
    from radlint.flows.audit_lake import audit_lake

    params = inspect.signature(audit_lake.fn).parameters
    assert tuple(params) == AuditOptions.names()
    for name, param in params.items():
        if name in ("lake", "db"):
            assert param.default is inspect.Parameter.empty
        else:
            assert param.default == AuditOptions.default(name), name


def test_cli_defaults_are_the_options_defaults():
    from radlint.cli import audit_options, build_parser

    args = build_parser().parse_args(["audit", "some/lake", "--db", "x.duckdb"])
    assert audit_options(args) == AuditOptions(lake="some/lake", db="x.duckdb")
    args = build_parser().parse_args([
        "audit", "l", "--db", "x.duckdb", "--labels", "labels.csv", "--wait-lock", "2.5", "--max-inflight-mb", "64",
        "--batch-size", "8", "--executor", "local", "--device", "cpu", "--max-pixels", "1000",
    ])
    assert audit_options(args) == AuditOptions(
        lake="l", db="x.duckdb", labels_file="labels.csv", lock_wait_seconds=2.5, max_inflight_bytes=64 << 20,
        batch_size=8, executor="local", device="cpu", max_pixels=1000,
    )


def test_deployments_set_only_options_and_restate_no_default():
    spec = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())
    for deployment in spec["deployments"]:
        if not deployment["entrypoint"].endswith(":audit_lake"):
            continue
        params = deployment["parameters"]
        assert set(params) <= set(AuditOptions.names()), deployment["name"]
        for name, value in params.items():
            if name not in ("lake", "db"):
                assert value != AuditOptions.default(name), f"{deployment['name']}: {name} restates the default"


@pytest.mark.parametrize("pattern", [r"80_?000_?000\b", r"512 \* 1024 \* 1024"])
def test_defaults_are_declared_once(pattern):
    sources = [p for folder in ("radlint", "flows", "tasks", "bench") for p in (PROJECT_ROOT / folder).rglob("*.py")]
    sources += [PROJECT_ROOT / "prefect.yaml"]
    holders = [str(p.relative_to(PROJECT_ROOT)) for p in sources if re.search(pattern, p.read_text())]
    assert holders == ["tasks/options.py"]


def test_batch_size_default_is_not_restated():
    pattern = re.compile(r"batch_size(: int)? ?= ?32\b|batch_size: 32\b")
    sources = [p for folder in ("radlint", "flows", "tasks") for p in (PROJECT_ROOT / folder).rglob("*.py")]
    sources.append(PROJECT_ROOT / "prefect.yaml")
    assert [str(p) for p in sources if pattern.search(p.read_text())] == []


def test_stage_defaults_come_from_the_options():
    from radlint.tasks import dicom_io, infer, shard

    assert inspect.signature(dicom_io.read_dicom).parameters["max_pixels"].default == AuditOptions.default("max_pixels")
    params = inspect.signature(shard.audit_shard).parameters
    for name in ("batch_size", "max_pixels", "max_inflight_bytes"):
        assert params[name].default == AuditOptions.default(name), name
    assert inspect.signature(infer.predict).parameters["batch_size"].default == AuditOptions.default("batch_size")


@pytest.mark.parametrize("bad", [
    {"executor": "threads"}, {"device": "tpu"}, {"batch_size": 0}, {"workers": -1}, {"shard_size": 0},
    {"max_pixels": 0}, {"lock_wait_seconds": float("nan")}, {"lock_wait_seconds": -1.0},
    {"lock_wait_seconds": float("inf")},
])
def test_options_refuse_values_outside_their_range(bad):
    with pytest.raises(ValueError):
        AuditOptions(lake="l", db="x.duckdb", **bad)


def test_default_of_a_required_option_is_refused():
    with pytest.raises(KeyError):
        AuditOptions.default("lake")


def test_plan_runs_a_small_remainder_in_process(tmp_path):
    from radlint.tasks import discover, plan

    todo = [discover.ObjectRef(Path(tmp_path / f"{i}.dcm").as_uri(), 20_000, "e") for i in range(10)]
    planned = plan.plan_shards(todo, "auto", None, workers=2)
    assert planned.executor == "local" and planned.workers == 1
    assert [len(s) for s in planned.shards] == [10] and planned.estimated_seconds is not None
    planned = plan.plan_shards(todo, "dask", None, workers=2, shard_size=3)
    assert planned.executor == "dask" and [len(s) for s in planned.shards] == [3, 3, 3, 1]
    assert planned.workers == 2 and planned.estimated_seconds is None
    assert plan.plan_shards([], "auto", None, workers=2).shards == []


def test_shard_options_hold_no_path_of_the_flows_disk_when_out_is_a_url(tmp_path, monkeypatch):
    """Issue 24 item 2: with --out on a store and the salt in the environment, a worker on another
    machine reads nothing of the flow's disk; only a --registry the user passes stays a path."""
    from radlint.tasks import infer, plan

    monkeypatch.setenv("RADLINT_PATIENT_SALT", "s")
    entry = infer.default_model()
    todo = [plan.discover.ObjectRef("s3://lake/a.dcm", 1000, "e")]
    planned = plan.plan_shards(todo, "dask", "tcp://scheduler:8786", workers=2)
    opts = AuditOptions(lake="s3://lake", db=str(tmp_path / "a.duckdb"), out="s3://bucket/parts")
    kwargs = plan.shard_options(opts, entry, opts.out, planned, 0.0)
    assert kwargs["out_dir"] == "s3://bucket/parts" and kwargs["model_sha256"] == entry.sha256
    assert kwargs["registry_path"] is None and kwargs["salt_file"] is None
    strings = [v for v in kwargs.values() if isinstance(v, str)]
    assert not [v for v in strings if str(tmp_path) in v or v.startswith("/")]
    assert not (tmp_path / "a.duckdb.salt").exists()
    registry = str(tmp_path / "registry.yaml")
    assert plan.shard_options(AuditOptions(**{**opts.parameters(), "registry": registry}), entry, opts.out, planned,
                              0.0)["registry_path"] == registry


def test_a_worker_without_the_salt_file_says_where_it_is_and_what_to_set(tmp_path, monkeypatch):
    from radlint.tasks import settings

    monkeypatch.delenv("RADLINT_PATIENT_SALT", raising=False)
    with pytest.raises(settings.SaltError, match=r"cannot read the patient-key salt file .*beside the database on "
                       r"the flow's machine.* set RADLINT_PATIENT_SALT"):
        settings.read_salt(str(tmp_path / "elsewhere.duckdb.salt"))
    with pytest.raises(settings.SaltError, match="no patient-key salt on worker .*RADLINT_PATIENT_SALT"):
        settings.read_salt(None)
