"""The findings view, given tiny inline tables on in-memory DuckDB, returns the expected rows."""

from __future__ import annotations

from datetime import datetime, timezone

import duckdb
import pytest

from radlint.tasks import database

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
T1 = datetime(2026, 2, 1, tzinfo=timezone.utc)
SHA = "sha-model"


# The gates columns the tests below fill; later columns (the confusable gate) stay NULL.
GATES = ("insert into gates (model, model_sha256, task, min_severity, target_precision, prevalence, class_thresholds, "
         "lake_min_severity, lake_rule, lake_weight, lake_prior_images, lake_distrust_scale) values ")


def image(uri, *, body=None, body_src=None, bpe=None, proj=None, proj_src=None, vp=None, orient=None, po=None,
          etag="e1", at=T0, sop=None, institution="H1"):
    return dict(
        uri=uri, etag=etag, sop_instance_uid=sop or uri.rsplit("/", 1)[-1], body_part_examined=bpe,
        view_position=vp, patient_orientation=po, label_body_part=body, label_body_part_source=body_src,
        label_projection=proj, label_projection_source=proj_src, label_orientation=orient,
        label_orientation_source="PatientOrientation" if orient else None, institution_name=institution,
        audited_at=at, run_id="r1",
    )


def pred(uri, task, probs: dict, etag="e1", at=T0):
    best = max(probs, key=probs.get)
    return dict(uri=uri, etag=etag, task=task, predicted=best, probability=probs[best], probabilities=probs,
                model="m", model_sha256=SHA, predicted_at=at, run_id="r1")


@pytest.fixture
def con():
    c = duckdb.connect()
    database.ensure_schema(c)
    database.create_views(c)
    thresholds = [("body_part", c_, 0.6) for c_ in ("chest", "head", "lower_limb", "abdomen", "pelvis")]
    thresholds += [("projection", c_, 0.7) for c_ in ("PA", "AP", "LATERAL")]
    thresholds += [("orientation", c_, 0.8) for c_ in ("upright", "rot90cw", "rot180", "rot90ccw")]
    c.executemany("insert into thresholds values ('m', ?, ?, ?, ?)", [(SHA, t, k, v) for t, k, v in thresholds])
    yield c
    c.close()


def given(con, images, predictions, labels=()):
    for row in images:
        cols = ", ".join(f'"{k}"' for k in row)
        con.execute(f"insert into images ({cols}) values ({', '.join('?' for _ in row)})", list(row.values()))
    for row in predictions:
        cols = ", ".join(row)
        vals = list(row.values())
        con.execute(f"insert into predictions ({cols}) values ({', '.join('?' for _ in row)})", vals)
    for row in labels:
        con.execute("insert into labels values (?, ?, ?, ?, ?, 'file.csv', ?)", row)


def findings(con):
    rows = con.execute(
        "select uri, field, header_class, label_source, predicted_class, is_mismatch, round(severity, 3), suggested_correction "
        "from findings order by uri, field"
    ).fetchall()
    return {(r[0], r[1]): r[2:] for r in rows}


def test_agree_mismatch_unconfident_and_null_label(con):
    given(
        con,
        [
            image("s3://b/agree", body="chest", body_src="BodyPartExamined", bpe="CHEST", proj="PA", proj_src="ViewPosition", vp="PA"),
            image("s3://b/wrong", body="head", body_src="BodyPartExamined", bpe="SKULL"),
            image("s3://b/unsure", body="abdomen", body_src="BodyPartExamined", bpe="ABDOMEN"),
            image("s3://b/nolabel"),
        ],
        [
            pred("s3://b/agree", "body_part", {"chest": 0.95, "head": 0.05}),
            pred("s3://b/agree", "projection", {"PA": 0.1, "AP": 0.85, "LATERAL": 0.05}),
            pred("s3://b/agree", "orientation", {"upright": 0.99, "rot180": 0.01}),
            pred("s3://b/wrong", "body_part", {"lower_limb": 0.9, "head": 0.1}),
            pred("s3://b/wrong", "orientation", {"upright": 0.1, "rot90cw": 0.9}),
            pred("s3://b/unsure", "body_part", {"pelvis": 0.55, "abdomen": 0.45}),
            pred("s3://b/unsure", "orientation", {"upright": 0.7, "rot180": 0.3}),
            pred("s3://b/nolabel", "body_part", {"head": 0.99, "chest": 0.01}),
            pred("s3://b/nolabel", "orientation", {"upright": 0.9, "rot180": 0.1}),
        ],
    )
    f = findings(con)
    assert f[("s3://b/agree", "body_part")] == ("chest", "BodyPartExamined", "chest", False, 0.05, None)
    # labelled PA, predicted AP above the 0.7 threshold: a mismatch with AP as the correction
    assert f[("s3://b/agree", "projection")] == ("PA", "ViewPosition", "AP", True, 0.9, "AP")
    assert f[("s3://b/agree", "orientation")] == ("upright", "assumed", "upright", False, 0.01, None)
    assert f[("s3://b/wrong", "body_part")] == ("head", "BodyPartExamined", "lower_limb", True, 0.9, "lower_limb")
    # stored turned 90 cw: the correction is to turn it 90 ccw
    assert f[("s3://b/wrong", "orientation")] == ("upright", "assumed", "rot90cw", True, 0.9, "rot90ccw")
    # disagreement below the class threshold (0.55 < 0.6) is not a mismatch, but still ranked
    assert f[("s3://b/unsure", "body_part")] == ("abdomen", "BodyPartExamined", "pelvis", False, 0.55, None)
    # unknown label stays NULL: no verdict, no severity
    assert f[("s3://b/nolabel", "body_part")] == (None, None, "head", None, None, None)
    # projection rows only for chest images (by label or confident prediction)
    assert ("s3://b/wrong", "projection") not in f and ("s3://b/nolabel", "projection") not in f


def test_multi_region_label_accepts_any_region(con):
    given(
        con,
        [image("s3://b/ap", body="abdomen|pelvis", body_src="BodyPartExamined", bpe="ABDOMENPELVIS")],
        [pred("s3://b/ap", "body_part", {"pelvis": 0.7, "abdomen": 0.2, "chest": 0.1})],
    )
    f = findings(con)
    assert f[("s3://b/ap", "body_part")] == ("abdomen|pelvis", "BodyPartExamined", "pelvis", False, 0.1, None)


def test_external_labels_override_header_and_latest_version_wins(con):
    given(
        con,
        [
            image("s3://b/x", body="chest", body_src="BodyPartExamined", bpe="CHEST", etag="old", at=T0),
            image("s3://b/x", body="chest", body_src="BodyPartExamined", bpe="CHEST", etag="new", at=T1, sop="1.2.3"),
        ],
        [
            pred("s3://b/x", "body_part", {"chest": 0.9, "head": 0.1}, etag="old", at=T0),
            pred("s3://b/x", "body_part", {"head": 0.95, "chest": 0.05}, etag="new", at=T1),
        ],
        labels=[(None, "1.2.3", "head", None, None, T1)],
    )
    f = findings(con)
    # the RIS says head, the pixels (of the newest version) say head: agreement
    assert f[("s3://b/x", "body_part")] == ("head", "labels_file", "head", False, 0.05, None)
    assert con.execute("select count(*) from findings where field = 'body_part'").fetchone()[0] == 1


def test_missing_prediction_gives_null_verdict(con):
    given(con, [image("s3://b/nopred", body="chest", body_src="BodyPartExamined", bpe="CHEST")], [])
    f = findings(con)
    assert f[("s3://b/nopred", "body_part")] == ("chest", "BodyPartExamined", None, None, None, None)


def test_unlabelled_confident_chest_gets_projection_row(con):
    given(
        con,
        [image("s3://b/c")],
        [
            pred("s3://b/c", "body_part", {"chest": 0.9, "head": 0.1}),
            pred("s3://b/c", "projection", {"PA": 0.8, "AP": 0.2}),
        ],
    )
    f = findings(con)
    assert f[("s3://b/c", "projection")] == (None, None, "PA", None, None, None)


def test_mismatch_rates_and_top_suspects(con):
    given(
        con,
        [
            image("s3://b/1", body="head", body_src="BodyPartExamined", bpe="SKULL", institution="H1"),
            image("s3://b/2", body="chest", body_src="BodyPartExamined", bpe="CHEST", institution="H1"),
            image("s3://b/3", body="chest", body_src="BodyPartExamined", bpe="CHEST", institution=None),
        ],
        [
            pred("s3://b/1", "body_part", {"lower_limb": 0.9, "head": 0.1}),
            pred("s3://b/2", "body_part", {"chest": 0.99, "head": 0.01}),
            pred("s3://b/3", "body_part", {"head": 0.97, "chest": 0.03}),
        ],
    )
    rates = {
        r[0]: r[1:]
        for r in con.execute(
            "select group_value, n_checked, n_mismatch, mismatch_rate from mismatch_rates "
            "where field = 'body_part' and dimension = 'institution_name'"
        ).fetchall()
    }
    assert rates == {"H1": (2, 1, 0.5), "(unknown)": (1, 1, 1.0)}
    top = con.execute("select rank, uri, suggested_correction from top_suspects").fetchall()
    assert top == [(1, "s3://b/3", "head"), (2, "s3://b/1", "lower_limb")]


def test_export_corrections_csv(con, tmp_path):
    import csv

    from radlint.tasks import findings as findings_mod

    given(
        con,
        [
            image("s3://b/1", body="head", body_src="BodyPartExamined", bpe="SKULL"),
            image("s3://b/2", body="chest", body_src="BodyPartExamined", bpe="CHEST"),
        ],
        [
            pred("s3://b/1", "body_part", {"lower_limb": 0.9, "head": 0.1}),
            pred("s3://b/1", "orientation", {"rot180": 0.95, "upright": 0.05}),
            pred("s3://b/2", "body_part", {"chest": 0.99, "head": 0.01}),
        ],
    )
    out = tmp_path / "corrections.csv"
    assert findings_mod.export_corrections(con, out) == 2
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert [(r["uri"], r["field"], r["current_value"], r["suggested_correction"]) for r in rows] == [
        ("s3://b/1", "orientation", None or "", "rot180"),
        ("s3://b/1", "body_part", "SKULL", "lower_limb"),
    ]
    assert float(rows[0]["severity"]) == 0.95 and rows[1]["sop_instance_uid"] == "1"
    # Probabilities are stored as FLOAT: rounded as such they would print as 0.8999999761581421.
    assert rows[1]["confidence"] == "0.9" and rows[0]["confidence"] == "0.95"
    top = findings_mod.top_suspects(con)
    assert [(t["predicted_prob"], t["severity"]) for t in top] == [(0.95, 0.95), (0.9, 0.9)]


def test_readme_sql_cookbook_runs(con):
    import re

    from tests.conftest import PROJECT_ROOT

    given(
        con,
        [image("s3://b/1", body="head", body_src="BodyPartExamined", bpe="SKULL", sop="1.2.840.113619.2.55.3.1234")],
        [pred("s3://b/1", "body_part", {"lower_limb": 0.9, "head": 0.1}),
         pred("s3://b/1", "orientation", {"rot90cw": 0.9, "upright": 0.1})],
    )
    con.execute("update predictions set sop_instance_uid = '1.2.840.113619.2.55.3.1234'")
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"### SQL cookbook.*?```sql\n(.*?)```", readme, re.S).group(1)
    queries = [q.strip() for q in block.split(";") if q.strip()]
    assert len(queries) == 10
    results = [con.execute(q).fetchall() for q in queries]
    assert results[0][0][1] == "s3://b/1"  # top suspect
    assert len(results[3]) == 1 and results[3][0][2] == "rot90ccw"  # rotated image and its fix
    assert len(results[8]) == 2  # probability vectors of the image


def test_severity_gate_holds_back_weak_contradictions(con):
    con.execute(GATES + "('m', ?, 'body_part', 0.9, 0.9, 0.1, true, null, null, null, null, null)", [SHA])
    given(
        con,
        [
            image("s3://b/strong", body="head", body_src="BodyPartExamined", bpe="SKULL"),
            image("s3://b/weak", body="head", body_src="BodyPartExamined", bpe="SKULL"),
        ],
        [
            pred("s3://b/strong", "body_part", {"chest": 0.95, "head": 0.05}),
            pred("s3://b/weak", "body_part", {"chest": 0.8, "head": 0.2}),
        ],
    )
    f = findings(con)
    assert f[("s3://b/strong", "body_part")][3:] == (True, 0.95, "chest")
    # 0.8 passes the class threshold (0.6) but severity 0.8 < gate 0.9: ranked, not flagged
    assert f[("s3://b/weak", "body_part")][3:] == (False, 0.8, None)


def test_severity_gate_alone_flags_a_label_whose_probability_is_split_elsewhere(con):
    # The label "head" gets 0.04; the rest is split between chest and neck, so no class reaches its
    # threshold (0.6). With class_thresholds the label stands; with the gate alone it is flagged.
    given(
        con,
        [image("s3://b/split", body="head", body_src="BodyPartExamined", bpe="SKULL")],
        [pred("s3://b/split", "body_part", {"chest": 0.5, "neck": 0.46, "head": 0.04})],
    )
    con.execute(GATES + "('m', ?, 'body_part', 0.9, 0.9, 0.1, true, null, null, null, null, null)", [SHA])
    assert findings(con)[("s3://b/split", "body_part")][3:] == (False, 0.96, None)
    con.execute("update gates set class_thresholds = false")
    assert findings(con)[("s3://b/split", "body_part")][3:] == (True, 0.96, "chest")
    # NULL (a database from before schema 3) keeps the class thresholds
    con.execute("update gates set class_thresholds = null")
    assert findings(con)[("s3://b/split", "body_part")][3:] == (False, 0.96, None)


def test_label_gate_replaces_the_task_gate_for_its_label(con):
    # A frontal image labelled LATERAL keeps p(LATERAL) near 0.1 (severity 0.9) while a PA image
    # that looks AP reaches severity 0.95: one task gate of 0.96 flags neither; a gate of 0.85 for
    # the label LATERAL flags the first and leaves the PA/AP doubt under the task's gate.
    con.execute(GATES + "('m', ?, 'projection', 0.96, 0.95, 0.1, false, null, null, null, null, null)", [SHA])
    chest = dict(body="chest", body_src="BodyPartExamined", bpe="CHEST", proj_src="ViewPosition")
    given(
        con,
        [
            image("s3://b/lat", proj="LATERAL", vp="LL", **chest),
            image("s3://b/pa", proj="PA", vp="PA", **chest),
            image("s3://b/multi", proj="PA|AP", vp="FRONTAL", **chest),
        ],
        [
            pred("s3://b/lat", "projection", {"PA": 0.82, "AP": 0.08, "LATERAL": 0.1}),
            pred("s3://b/pa", "projection", {"PA": 0.05, "AP": 0.9, "LATERAL": 0.05}),
            pred("s3://b/multi", "projection", {"PA": 0.05, "AP": 0.05, "LATERAL": 0.9}),
        ],
    )
    gate = "select uri, severity_gate from findings where field = 'projection' order by uri"
    assert findings(con)[("s3://b/lat", "projection")][3:] == (False, 0.9, None)
    con.execute("insert into label_gates values ('m', ?, 'projection', 'LATERAL', 0.85)", [SHA])
    con.execute("insert into label_gates values ('m', ?, 'projection', 'PA', 0.97)", [SHA])
    f = findings(con)
    assert f[("s3://b/lat", "projection")][3:] == (True, 0.9, "PA")
    assert f[("s3://b/pa", "projection")][3:] == (False, 0.95, None)
    # a label accepting several classes has no gate of its own: the task's applies
    assert f[("s3://b/multi", "projection")][3:] == (False, 0.9, None)
    assert con.execute(gate).fetchall() == [("s3://b/lat", pytest.approx(0.85)),
                                            ("s3://b/multi", pytest.approx(0.96)),
                                            ("s3://b/pa", pytest.approx(0.97))]
    # another model's label gates do not apply
    con.execute("update label_gates set model_sha256 = 'other'")
    assert findings(con)[("s3://b/lat", "projection")][3:] == (False, 0.9, None)
