"""Lake adaptation: cross-fitted probes, the self-supervised orientation probe, their fallbacks,
and the stage end to end through the audit flow."""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import numpy as np
import pytest

from radlint.tasks import adapt, database
from radlint.tasks.infer import EmbeddingSpec
from radlint.tasks.vocabulary import BODY_PART, ORIENTATION, TURNS


def clusters(n_per_class: int, classes, dim: int = 16, seed: int = 0, spread: float = 0.6):
    rng = np.random.default_rng(seed)
    centres = {c: rng.normal(size=dim) * 3 for c in classes}
    x, y = [], []
    for c in classes:
        x.append(centres[c] + rng.normal(scale=spread, size=(n_per_class, dim)))
        y += [c] * n_per_class
    return np.concatenate(x).astype(np.float32), y


def spy_fits(monkeypatch) -> list:
    """(fit rows, predicted rows, len(x_fit), len(x_pred)) of every cross-fitted probe fit from now on;
    rows are indices into the probe's input."""
    seen = []
    real_views, real_fit = adapt._fit_predict_views, adapt._fit_predict
    sizes = []

    def spy_views(features, y, views, fit_rows, pred_rows):
        out = real_views(features, y, views, fit_rows, pred_rows)
        seen.append((np.asarray(fit_rows), np.asarray(pred_rows), *sizes.pop()))
        return out

    def spy_fit(x_fit, y_fit, x_pred, **kw):
        sizes.append((len(x_fit), len(x_pred)))
        return real_fit(x_fit, y_fit, x_pred, **kw)

    monkeypatch.setattr(adapt, "_fit_predict_views", spy_views)
    monkeypatch.setattr(adapt, "_fit_predict", spy_fit)
    return seen


def test_probe_exposes_flipped_labels_out_of_fold():
    classes = ("head", "chest", "lower_limb")
    x, truth = clusters(80, classes)
    rng = np.random.default_rng(1)
    labels = list(truth)
    flipped = rng.choice(len(labels), size=24, replace=False)
    for i in flipped:
        labels[i] = next(c for c in classes if c != truth[i])
    groups = [f"p{i // 2}" for i in range(len(labels))]  # two images per patient
    r = adapt.cross_fitted_probe(x, labels, groups, classes)
    assert set(r.method) == {adapt.LAKE_OOF}
    p_label = np.array([r.probs[i, classes.index(lab)] for i, lab in enumerate(labels)])
    flagged = set(np.flatnonzero(p_label < 0.5))
    assert len(flagged & set(flipped)) >= 22  # recall >= 0.9
    assert len(flagged - set(flipped)) <= 2  # precision >= 0.9
    assert np.allclose(r.probs.sum(axis=1), 1.0, atol=1e-5)


def test_folds_never_split_a_patient(monkeypatch):
    classes = ("head", "chest")
    x, labels = clusters(40, classes)
    groups = [f"p{i % 10}" for i in range(len(labels))]
    seen = spy_fits(monkeypatch)
    adapt.cross_fitted_probe(x, labels, groups, classes)
    assert seen
    for fit_rows, pred_rows, _, _ in seen:
        assert not {groups[i] for i in fit_rows} & {groups[i] for i in pred_rows}


def test_turned_views_are_fitted_and_averaged_within_the_rows_fold(monkeypatch):
    classes = ("head", "chest", "lower_limb")
    x, truth = clusters(60, classes, spread=2.5, seed=3)  # one view alone is a poor witness
    rng = np.random.default_rng(4)
    views = {i: x[i] + rng.normal(scale=2.5, size=(3, x.shape[1])).astype(np.float32) for i in range(len(x))}
    labels = list(truth)
    flipped = rng.choice(len(labels), size=18, replace=False)
    for i in flipped:
        labels[i] = next(c for c in classes if c != truth[i])
    groups = [f"p{i // 2}" for i in range(len(labels))]
    seen = spy_fits(monkeypatch)
    with_views = adapt.cross_fitted_probe(x, labels, groups, classes, views=views)
    assert seen
    for fit_rows, pred_rows, n_fit, n_pred in seen:
        assert (n_fit, n_pred) == (4 * len(fit_rows), 4 * len(pred_rows))  # every view of every row
        assert not {groups[i] for i in fit_rows} & {groups[i] for i in pred_rows}
    alone = adapt.cross_fitted_probe(x, labels, groups, classes)

    def errors(r):  # flipped labels missed + right labels flagged, at p(label) < 0.5
        p_label = np.array([r.probs[i, classes.index(lab)] for i, lab in enumerate(labels)])
        flagged = set(np.flatnonzero(p_label < 0.5))
        return len(set(flipped) - flagged) + len(flagged - set(flipped))

    assert np.allclose(with_views.probs.sum(axis=1), 1.0, atol=1e-5)
    assert errors(with_views) < errors(alone)


def test_each_probe_fits_its_space_once_and_never_on_labels(monkeypatch):
    """Standardisation and principal components are fitted once per probe, on every row and view it
    scores, with no label passed: the folds and rounds refit only the classifier."""
    classes = ("head", "chest", "lower_limb")
    x, labels = clusters(40, classes)
    rng = np.random.default_rng(5)
    views = {i: x[i] + rng.normal(size=(3, x.shape[1])).astype(np.float32) for i in range(0, len(x), 2)}
    fitted_on = []
    real = adapt._space

    def spy(rows, **kw):
        fitted_on.append(len(rows))
        return real(rows, **kw)

    monkeypatch.setattr(adapt, "_space", spy)
    assert "y" not in inspect.signature(real).parameters
    adapt.cross_fitted_probe(x, labels, [f"p{i}" for i in range(len(x))], classes, views=views)
    assert fitted_on == [len(x) + 3 * len(views)]
    fitted_on.clear()
    n = 60
    stored = rng.normal(size=(n, 16)).astype(np.float32)
    sampled = np.arange(0, n, 2)
    turned = {t: rng.normal(size=(len(sampled), 16)).astype(np.float32) for t in adapt.TURNS}
    r = adapt.orientation_probe(stored, ["upright"] * n, [f"p{i}" for i in range(n)], sampled, turned)
    assert fitted_on == [4 * len(sampled)]  # the rounds of five folds and the unsampled rows' fit share it
    assert {adapt.LAKE_OOF, adapt.LAKE_FIT} == set(r.method)


def test_a_space_over_more_rows_than_its_cap_is_fitted_on_a_sample_and_scores_every_row(monkeypatch):
    classes = ("head", "chest")
    x, labels = clusters(60, classes)
    monkeypatch.setattr(adapt, "SPACE_FIT_ROWS", 30)
    pcas = []
    real = adapt._space

    def spy(rows, **kw):
        space = real(rows, **kw)
        pcas.append(space.named_steps["pca"].n_samples_)
        return space

    monkeypatch.setattr(adapt, "_space", spy)
    r = adapt.cross_fitted_probe(x, labels, [f"p{i}" for i in range(len(x))], classes)
    assert pcas == [30]
    assert set(r.method) == {adapt.LAKE_OOF} and not np.isnan(r.probs).any()


def test_fallbacks_small_lake_one_class_rare_class():
    x, labels = clusters(3, ("head", "chest"))
    r = adapt.cross_fitted_probe(x[:5], labels[:5], [str(i) for i in range(5)], BODY_PART)
    assert r.method == [adapt.GENERIC] * 5 and set(r.reason) == {"too_few_images"}

    x, labels = clusters(40, ("chest",))
    r = adapt.cross_fitted_probe(x, labels, [str(i) for i in range(40)], BODY_PART)
    assert set(r.method) == {adapt.GENERIC} and set(r.reason) == {"one_class"}

    x, labels = clusters(30, ("head", "chest", "pelvis"))
    keep = list(range(60)) + [60, 61, 62]  # only three pelvis images
    labels = [labels[i] for i in keep] + [None]
    x = np.concatenate([x[keep], x[:1]])
    r = adapt.cross_fitted_probe(x, labels, [str(i) for i in range(len(labels))], BODY_PART)
    assert [r.method[i] for i in (60, 61, 62)] == [adapt.GENERIC] * 3
    assert {r.reason[i] for i in (60, 61, 62)} == {"class_too_rare"}
    assert set(r.method[:60]) == {adapt.LAKE_OOF}
    assert r.method[-1] == adapt.LAKE_FIT  # unlabelled: scored by the probe fitted on the others
    assert r.probs[0, BODY_PART.index("pelvis")] == 0.0  # a class the probe did not learn


def turned_lake(n: int, share_rotated: float = 0.15, dim: int = 12, seed: int = 0):
    """Embeddings = content + a vector per orientation, as a model's features roughly are."""
    rng = np.random.default_rng(seed)
    content = rng.normal(size=(n, dim))
    direction = {o: rng.normal(size=dim) * 2.5 for o in ORIENTATION}
    stored_truth = ["upright"] * n
    for i in rng.choice(n, size=int(n * share_rotated), replace=False):
        stored_truth[i] = rng.choice(TURNS)

    def emb(i, orientation):
        return content[i] + direction[orientation] + rng.normal(scale=0.3, size=dim)

    stored = np.array([emb(i, stored_truth[i]) for i in range(n)], np.float32)
    return stored, stored_truth, emb


def test_generic_distrust_is_high_where_the_generic_model_disagrees_with_the_lake_s_labels():
    x, kind = clusters(60, ("known", "unknown"), dim=16)
    rng = np.random.default_rng(3)
    # known films: the generic model agrees with the labels but for a few wrong ones; unknown
    # films: it disagrees with nearly all of them
    sev = np.where(np.array(kind) == "known", 0.02, 0.95).astype(np.float32)
    sev[rng.choice(60, 6, replace=False)] = 0.98
    sev[[5, 70]] = np.nan  # unlabelled: scored, never a neighbour
    d = adapt.generic_distrust(x, sev)
    known, unknown = d[:60], d[60:]
    assert np.all(known < 0.1) and np.all(unknown > 0.9)
    assert not np.isnan(d).any()
    # an image's own severity is left out: a lone disagreement among agreeing look-alikes stays low
    assert d[int(np.flatnonzero(sev[:60] == 0.98)[0])] < 0.1
    # a reference subset gives the same picture
    small = adapt.generic_distrust(x, sev, max_reference=40)
    assert np.all(small[:60] < 0.1) and np.all(small[60:] > 0.9)
    # too few labelled images: nothing is computed
    assert np.isnan(adapt.generic_distrust(x[:10], sev[:10])).all()


def test_orientation_probe_finds_rotated_images_without_labels():
    n = 200
    stored, truth, emb = turned_lake(n)
    sampled = np.arange(0, n, 2)  # half the lake was run turned
    turned = {t: np.array([emb(i, adapt._compose(truth[i], t)) for i in sampled], np.float32) for t in TURNS}
    r = adapt.orientation_probe(stored, ["upright"] * n, [f"p{i}" for i in range(n)], sampled, turned)
    assert {r.method[i] for i in sampled} == {adapt.LAKE_OOF}
    assert {r.method[i] for i in range(1, n, 2)} == {adapt.LAKE_FIT}
    predicted = [ORIENTATION[int(k)] for k in r.probs.argmax(axis=1)]
    rotated = {i for i in range(n) if truth[i] != "upright"}
    flagged = {i for i in range(n) if r.probs[i, 0] < 0.5}
    assert len(flagged & rotated) >= 0.9 * len(rotated)
    assert len(flagged - rotated) <= 0.05 * n
    assert sum(predicted[i] == truth[i] for i in rotated) >= 0.9 * len(rotated)


def test_orientation_probe_needs_a_sample():
    stored, truth, emb = turned_lake(40)
    sampled = np.arange(5)
    turned = {t: np.array([emb(i, t) for i in sampled], np.float32) for t in TURNS}
    r = adapt.orientation_probe(stored, ["upright"] * 40, [str(i) for i in range(40)], sampled, turned)
    assert set(r.method) == {adapt.GENERIC} and set(r.reason) == {"too_few_samples"}


def test_turn_composition_matches_the_image_rotation():
    from radlint.tasks.preprocess import rotate_to_orientation

    img = np.arange(12, dtype=np.float32).reshape(3, 4)
    for stored in ORIENTATION:
        for turn in TURNS:
            composed = adapt._compose(stored, turn)
            assert np.array_equal(rotate_to_orientation(rotate_to_orientation(img, stored), turn),
                                  rotate_to_orientation(img, composed))


def test_sample_rate():
    assert adapt.orientation_sample_rate(0, 0) == 0.0
    assert adapt.orientation_sample_rate(500, 0) == 1.0  # a small lake: every image
    assert adapt.orientation_sample_rate(100_000, 0) == pytest.approx(adapt.ORIENTATION_SAMPLE_TARGET / 100_000)
    assert adapt.orientation_sample_rate(1_000_000, 0) == pytest.approx(adapt.ORIENTATION_SAMPLE_MIN_RATE)
    assert adapt.orientation_sample_rate(1000, 5000) == pytest.approx(adapt.ORIENTATION_SAMPLE_MIN_RATE)


# ---------------------------------------------------------------------------------------------
# Through the flow, with a small model that has an embedding output


def build_embedding_model(path: Path, size: int = 32) -> None:
    """Average-pool to a 4x4 grid (16 numbers: they change under a quarter turn), then linear heads."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from radlint.tasks.vocabulary import TASKS

    rng = np.random.default_rng(0)
    k = size // 4
    nodes = [
        helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[k, k], strides=[k, k]),
        helper.make_node("Flatten", ["pooled"], ["embedding"], axis=1),
    ]
    inits, outputs = [], [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 16])]
    for task, classes in TASKS.items():
        w = rng.normal(size=(16, len(classes))).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"{task}_w"))
        nodes += [helper.make_node("MatMul", ["embedding", f"{task}_w"], [f"{task}_logits"]),
                  helper.make_node("Softmax", [f"{task}_logits"], [task], axis=1)]
        outputs.append(helper.make_tensor_value_info(task, TensorProto.FLOAT, ["N", len(classes)]))
    graph = helper.make_graph(nodes, "emb", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                           ["N", 1, size, size])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.fixture(scope="module")
def embedding_registry(tmp_path_factory) -> Path:
    import yaml

    from radlint.tasks.vocabulary import TASKS

    folder = tmp_path_factory.mktemp("emb_model")
    build_embedding_model(folder / "emb.onnx")
    registry = {"schema": 1, "models": [{
        "name": "emb-test", "file": "emb.onnx",
        "sha256": hashlib.sha256((folder / "emb.onnx").read_bytes()).hexdigest(),
        "input": {"name": "image", "size": 32, "channels": 1},
        "embedding": {"output": "embedding", "size": 16},
        "preprocessing": {"letterbox": True, "scale": "minmax_uint8", "mean": 0.5, "std": 0.5},
        "tasks": {t: {"output": t, "classes": list(c), "thresholds": {k: 0.5 for k in c}} for t, c in TASKS.items()},
    }]}
    path = folder / "registry.yaml"
    path.write_text(yaml.safe_dump(registry, sort_keys=False))
    return path


def synthetic_lake(tmp_path, make_dicom, n: int) -> Path:
    """A folder of ``n`` synthetic DICOMs, one patient each."""
    lake_dir = tmp_path / "lake"
    lake_dir.mkdir()
    for i in range(n):
        (lake_dir / f"img{i:03d}.dcm").write_bytes(make_dicom(seed=i, patient_id=f"P{i}"))
    return lake_dir


def audit(lake_dir: Path, db: Path, registry: Path, shard_size: int) -> dict:
    from radlint.cli import run_audit
    from tests.test_flows import audit_args

    return run_audit(audit_args(str(lake_dir), db, registry, executor="local", shard_size=shard_size))


@pytest.mark.slow
def test_audit_stores_embeddings_and_refits_on_rerun(tmp_path, make_dicom, embedding_registry, prefect_api):
    lake_dir, db = synthetic_lake(tmp_path, make_dicom, 40), tmp_path / "a.duckdb"
    assert audit(lake_dir, db, embedding_registry, shard_size=20)["status"] == "completed"
    con = database.connect(db, read_only=True)
    try:
        assert con.execute("select count(*), min(len(vector)), max(len(vector)) from embeddings").fetchone() == (40, 16, 16)
        # a lake of 40 new objects is turned whole for the orientation probe
        assert con.execute("select count(distinct uri), count(*) from orientation_samples").fetchone() == (40, 120)
        methods = dict(con.execute("select task, list(distinct method) from lake_predictions group by task").fetchall())
        assert set(methods) == {"body_part", "projection", "orientation"} or set(methods) == {"body_part", "orientation"}
        assert methods["orientation"] == ["lake_oof"]
        fitted_first = con.execute("select distinct fitted_run_id from lake_predictions").fetchall()
        # every findings row says how it was decided
        assert con.execute("select count(*) from findings where lake_method is null").fetchone()[0] == 0
    finally:
        con.close()

    # one new object: it alone is read; the probes are refitted over all 41 images
    (lake_dir / "new.dcm").write_bytes(make_dicom(seed=99, patient_id="P99"))
    assert audit(lake_dir, db, embedding_registry, shard_size=20)["n_new"] == 1
    con = database.connect(db, read_only=True)
    try:
        assert con.execute("select count(*) from embeddings").fetchone()[0] == 41
        n, runs = con.execute("select count(distinct uri), list(distinct fitted_run_id) from lake_predictions").fetchone()
        assert n == 41 and len(runs) == 1 and [runs[0]] != [r[0] for r in fitted_first]
    finally:
        con.close()


@pytest.mark.slow
def test_a_lake_of_five_images_falls_back_to_the_generic_model(tmp_path, make_dicom, embedding_registry, prefect_api):
    db = tmp_path / "a.duckdb"
    assert audit(synthetic_lake(tmp_path, make_dicom, 5), db, embedding_registry, shard_size=5)["status"] == "completed"
    con = database.connect(db, read_only=True)
    try:
        got = dict(con.execute("select task, list(distinct fallback_reason) from lake_predictions "
                               "where method = 'generic' group by task").fetchall())
        assert got["body_part"] == ["too_few_images"] and got["orientation"] == ["too_few_samples"]
        # the generic model's verdict stands, and every row says so
        assert con.execute("select count(*) from findings where is_mismatch is distinct from generic_is_mismatch "
                           "or lake_method <> 'generic'").fetchone()[0] == 0
    finally:
        con.close()


def test_adapt_without_embeddings_falls_back_per_row():
    """Rows read by an older model have no vector of the current one: generic, and said so."""
    import duckdb

    from tests.sql.test_findings import SHA, given, image, pred

    con = duckdb.connect()
    database.ensure_schema(con)
    database.create_views(con)
    imgs, preds = [], []
    for i in range(40):
        uri = f"s3://b/{i}"
        cls = ("head", "chest")[i % 2]
        imgs.append(image(uri, body=cls, body_src="BodyPartExamined", bpe=cls.upper()))
        preds.append(pred(uri, "body_part", {cls: 0.9, "other": 0.1}))
    given(con, imgs, preds)
    x, _ = clusters(20, ("head", "chest"), dim=8)
    for i in range(36):  # four images lack a vector
        vec = x[(i // 2) + (20 if i % 2 else 0)]
        con.execute("insert into embeddings values (?, 'e1', ?, ?, 'r1')", [f"s3://b/{i}", SHA, vec.tolist()])

    class Entry:
        sha256 = SHA
        embedding = EmbeddingSpec("embedding", 8)
        tasks = {"body_part": type("T", (), {"classes": BODY_PART})()}

    counts = adapt.adapt_lake(con, Entry(), "r2")
    assert counts["body_part"] == {"generic:no_embedding": 4, "lake_oof": 36}
    got = dict(con.execute("select uri, method from lake_predictions where task = 'body_part'").fetchall())
    assert {got[f"s3://b/{i}"] for i in range(36, 40)} == {"generic"}
    # the generic model agrees with every label (p 0.9): low distrust where a vector exists, none elsewhere
    distrust = dict(con.execute("select uri, generic_distrust from lake_predictions where task = 'body_part'").fetchall())
    assert all(distrust[f"s3://b/{i}"] == pytest.approx(0.1) for i in range(36))
    assert all(distrust[f"s3://b/{i}"] is None for i in range(36, 40))
    # nothing changed: the fit stands
    assert adapt.adapt_lake(con, Entry(), "r3") == {"unchanged": {"kept": 40}}
    assert con.execute("select count(*), list(distinct fitted_run_id) from lake_predictions").fetchone() == (40, ["r2"])

    class OtherColumns(Entry):  # the registry now points the probe at other columns: refitted
        embedding = EmbeddingSpec("embedding", 8, probe_features={"body_part": (0, 4)})

    assert "unchanged" not in adapt.adapt_lake(con, OtherColumns(), "r3b")
    assert adapt.adapt_lake(con, OtherColumns(), "r3c") == {"unchanged": {"kept": 40}}
    assert "unchanged" not in adapt.adapt_lake(con, Entry(), "r3d")
    # a new vector: refitted, and the rows are replaced rather than added to
    con.execute("insert into embeddings values ('s3://b/36', 'e1', ?, ?, 'r4')", [SHA, x[0].tolist()])
    counts = adapt.adapt_lake(con, Entry(), "r4")
    assert counts["body_part"] == {"generic:no_embedding": 3, "lake_oof": 37}
    assert con.execute("select count(*), list(distinct fitted_run_id) from lake_predictions").fetchone() == (40, ["r4"])


def test_adapt_follows_a_labels_file_that_changes_between_runs():
    """The probe is refitted on the labels as they are now: a later labels file wins."""
    import duckdb

    from tests.sql.test_findings import GATES, SHA, T0, given, image, pred

    con = duckdb.connect()
    database.ensure_schema(con)
    database.create_views(con)
    x, classes = clusters(20, ("head", "chest"), dim=8)
    imgs, preds = [], []
    for i, cls in enumerate(classes):
        imgs.append(image(f"s3://b/{i}", body=cls, body_src="BodyPartExamined", bpe=cls.upper(),
                          sop=f"1.2.{i}"))
        preds.append(pred(f"s3://b/{i}", "body_part", {cls: 0.9, "other": 0.1}))
        con.execute("insert into embeddings values (?, 'e1', ?, ?, 'r1')", [f"s3://b/{i}", SHA, x[i].tolist()])
    given(con, imgs, preds)

    class Entry:
        sha256 = SHA
        embedding = EmbeddingSpec("embedding", 8)
        tasks = {"body_part": type("T", (), {"classes": BODY_PART})()}

    adapt.adapt_lake(con, Entry(), "r1")
    assert con.execute("select count(*) from findings where field = 'body_part' and is_mismatch").fetchone()[0] == 0
    # the RIS says image 0 (a head film) is a chest: the refit flags exactly that label
    con.execute("insert into labels values (null, '1.2.0', 'chest', null, null, 'ris.csv', ?)", [T0])
    con.execute(GATES + "('m', ?, 'body_part', 0.0, 0.95, 0.1, false, 0.5, 'lake', null, null, null)", [SHA])
    adapt.adapt_lake(con, Entry(), "r2")
    flagged = con.execute("select uri, label_source from findings where field = 'body_part' and is_mismatch").fetchall()
    assert flagged == [("s3://b/0", "labels_file")]


def test_registry_embedding_that_the_graph_lacks_is_refused(tmp_path, embedding_registry):
    import yaml

    from radlint.tasks import infer

    data = yaml.safe_load(embedding_registry.read_text())
    data["models"][0]["file"] = str(embedding_registry.parent / "emb.onnx")
    data["models"][0]["embedding"] = {"output": "features", "size": 16}
    bad = tmp_path / "registry.yaml"
    bad.write_text(yaml.safe_dump(data))
    entry = infer.default_model(bad)
    with pytest.raises(infer.RegistryError, match="no output 'features'"):
        infer.session_for(entry, "cpu")
    data["models"][0]["embedding"] = {"output": "embedding", "size": 32}
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(infer.RegistryError, match="16 wide"):
        infer.session_for(infer.default_model(bad), "cpu", threads=1)


def test_turned_views_read_both_the_turned_columns_and_whole_vectors_of_older_runs():
    """orientation_samples holds the registry's turned columns; rows written before the registry
    named a turned file hold whole embeddings, which are cut to those columns. Images missing a
    turn, and rows of another width, are not views."""
    import duckdb

    from radlint.tasks.infer import TurnedSpec
    from tests.sql.test_findings import SHA, given, image

    con = duckdb.connect()
    database.ensure_schema(con)
    given(con, [image(f"s3://b/{i}") for i in range(4)], [])
    whole = np.arange(6, dtype=np.float32)
    for k, turn in enumerate(TURNS):
        for uri, vec in (("s3://b/0", whole + 10 * k), ("s3://b/1", whole[2:] + 100 * k), ("s3://b/3", whole[:3])):
            con.execute("insert into orientation_samples values (?, 'e1', ?, ?, ?, 'r1')", [uri, SHA, turn, vec.tolist()])
        if turn != TURNS[-1]:  # image 2 lacks one turn
            con.execute("insert into orientation_samples values ('s3://b/2', 'e1', ?, ?, ?, 'r1')",
                        [SHA, turn, whole[2:].tolist()])

    class Entry:
        sha256 = SHA
        embedding = EmbeddingSpec("embedding", 6, {"orientation": (2, 6)},
                                  TurnedSpec(Path("m.turned.onnx"), "s", "embedding", (2, 6)))

    vectors, turned_of = adapt._turned_views(con, Entry(), {f"s3://b/{i}": i for i in range(4)})
    assert sorted(turned_of) == [0, 1]
    for k in range(len(TURNS)):
        np.testing.assert_array_equal(vectors[turned_of[0][k]], whole[2:] + 10 * k)
        np.testing.assert_array_equal(vectors[turned_of[1][k]], whole[2:] + 100 * k)
    # The sample the next run refills counts only the images whose rows the probes can read: image 3's
    # rows (of neither width) are a sample written under other turned columns.
    assert adapt.turned_widths(Entry()) == (4, 6)
    assert database.orientation_sampled_count(con, SHA) == 4
    assert database.orientation_sampled_count(con, SHA, adapt.turned_widths(Entry())) == 3


def test_a_lake_too_small_to_fit_never_imports_scikit_learn():
    # scikit-learn's import (~1.2 s on 2 cores) would be most of a small audit's cost; the flow only
    # preloads it for lakes of adapt.MIN_IMAGES or more, so the probes must not import it when they
    # fall back. Run in a fresh interpreter: this one has imported it already.
    import subprocess
    import sys

    code = """
import sys
import numpy as np
from radlint.tasks import adapt
rng = np.random.default_rng(0)
x = rng.normal(size=(5, 16)).astype(np.float32)
adapt.cross_fitted_probe(x, ["chest"] * 5, [str(i) for i in range(5)], ("chest", "head"))
adapt.orientation_probe(x, ["upright"] * 5, [str(i) for i in range(5)], np.arange(5),
                        {t: x for t in ("rot90cw", "rot180", "rot90ccw")})
adapt.generic_distrust(x, np.full(5, 0.1, np.float32))
print("sklearn" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_probes_of_tasks_a_turn_does_not_change_learn_from_the_turned_views(monkeypatch):
    """Body part and projection (PA, AP and lateral stay so under a quarter turn) fit each sampled
    image's turned views under its label; orientation reads them its own way."""
    import duckdb

    from tests.sql.test_findings import SHA, given, image, pred

    con = duckdb.connect()
    database.ensure_schema(con)
    database.create_views(con)
    imgs, preds = [], []
    for i in range(40):
        uri, proj = f"s3://b/{i}", ("PA", "LATERAL")[i % 2]
        imgs.append(image(uri, body="chest", body_src="BodyPartExamined", bpe="CHEST", proj=proj,
                          proj_src="ViewPosition", vp=proj))
        preds += [pred(uri, "body_part", {"chest": 0.9, "other": 0.1}),
                  pred(uri, "projection", {proj: 0.9, "AP": 0.1})]
    given(con, imgs, preds)
    x, _ = clusters(20, ("PA", "LATERAL"), dim=8)
    for i in range(40):
        vec = x[(i // 2) + (20 if i % 2 else 0)]
        con.execute("insert into embeddings values (?, 'e1', ?, ?, 'r1')", [f"s3://b/{i}", SHA, vec.tolist()])
        if i < 30:  # three quarters of the lake was sampled
            for turn in TURNS:
                con.execute("insert into orientation_samples values (?, 'e1', ?, ?, ?, 'r1')",
                            [f"s3://b/{i}", SHA, turn, (vec + 0.01).tolist()])

    class Entry:
        sha256 = SHA
        embedding = EmbeddingSpec("embedding", 8)
        tasks = {"body_part": type("T", (), {"classes": BODY_PART})(),
                 "projection": type("T", (), {"classes": ("PA", "AP", "LATERAL")})()}

    views_of = {}
    real = adapt.cross_fitted_probe

    def spy(features, labels, groups, classes, views=None, **kw):
        views_of[classes] = views or {}
        return real(features, labels, groups, classes, views=views, **kw)

    monkeypatch.setattr(adapt, "cross_fitted_probe", spy)
    counts = adapt.adapt_lake(con, Entry(), "r1")
    assert counts["projection"] == {"lake_oof": 40}
    assert set(views_of) == {BODY_PART, ("PA", "AP", "LATERAL")}
    assert {c: len(v) for c, v in views_of.items()} == {BODY_PART: 30, ("PA", "AP", "LATERAL"): 30}
    assert all(v.shape[0] == len(TURNS) for views in views_of.values() for v in views.values())
