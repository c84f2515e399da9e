"""findings with lake-adaptive probabilities, and group_findings, on tiny inline tables."""

from __future__ import annotations

import pytest

from tests.sql.test_findings import GATES, SHA, T0, con, given, image, pred  # noqa: F401  (con is a fixture)


def lake(con, uri, task, probs: dict | None, method="lake_oof", reason=None, etag="e1", distrust=None):
    best = max(probs, key=probs.get) if probs else None
    con.execute(
        "insert into lake_predictions values (?, ?, ?, ?, ?, ?, ?, ?, ?, 'r1', ?, ?)",
        [uri, etag, task, best, probs[best] if probs else None, probs, method, reason, SHA, T0, distrust],
    )


def rows(con):
    out = con.execute(
        "select uri, field, is_mismatch, flag_basis, round(severity, 2), suggested_correction, lake_method, "
        "round(lake_label_prob, 2), generic_is_mismatch from findings where field = 'body_part' order by uri"
    ).fetchall()
    return {r[0]: r[1:] for r in out}


def test_lake_probe_decides_where_it_scored(con):
    con.execute(GATES + "('m', ?, 'body_part', 0.0, 0.95, 0.1, false, 0.5, 'lake', null, null, null)", [SHA])
    given(
        con,
        [
            image("s3://b/ood", body="spine", body_src="BodyPartExamined", bpe="SPINE"),
            image("s3://b/real", body="head", body_src="BodyPartExamined", bpe="SKULL"),
            image("s3://b/lakeonly", body="chest", body_src="BodyPartExamined", bpe="CHEST"),
            image("s3://b/nolake", body="pelvis", body_src="BodyPartExamined", bpe="PELVIS"),
            image("s3://b/agree", body="chest", body_src="BodyPartExamined", bpe="CHEST"),
        ],
        [
            pred("s3://b/ood", "body_part", {"chest": 0.97, "spine": 0.03}),  # generic confidently wrong
            pred("s3://b/real", "body_part", {"lower_limb": 0.95, "head": 0.05}),  # a real error
            pred("s3://b/lakeonly", "body_part", {"chest": 0.9, "abdomen": 0.1}),
            pred("s3://b/nolake", "body_part", {"chest": 0.9, "pelvis": 0.1}),
            pred("s3://b/agree", "body_part", {"chest": 0.99, "head": 0.01}),
        ],
    )
    lake(con, "s3://b/ood", "body_part", {"spine": 0.9, "chest": 0.1})
    lake(con, "s3://b/real", "body_part", {"lower_limb": 0.8, "head": 0.2})
    lake(con, "s3://b/lakeonly", "body_part", {"abdomen": 0.7, "chest": 0.3}, method="lake_fit")
    lake(con, "s3://b/nolake", "body_part", None, method="generic", reason="class_too_rare")
    lake(con, "s3://b/agree", "body_part", {"chest": 0.95, "head": 0.05})
    r = rows(con)
    # the generic model's confident error on an unknown kind of film is not a flag any more
    assert r["s3://b/ood"] == ("body_part", False, None, 0.1, None, "lake_oof", 0.9, True)
    # both views see the real error; the correction is the lake's class
    assert r["s3://b/real"] == ("body_part", True, "both", 0.8, "lower_limb", "lake_oof", 0.2, True)
    # the lake probe alone
    assert r["s3://b/lakeonly"] == ("body_part", True, "lake", 0.7, "abdomen", "lake_fit", 0.3, False)
    # no probe for this class: the generic model decides, and says so
    assert r["s3://b/nolake"] == ("body_part", True, "generic", 0.9, "chest", "generic", None, True)
    assert r["s3://b/agree"][1:3] == (False, None)


def test_lake_gate_from_gates_table(con):
    given(con, [image("s3://b/x", body="chest", body_src="BodyPartExamined", bpe="CHEST")],
          [pred("s3://b/x", "body_part", {"chest": 0.9, "abdomen": 0.1})])
    lake(con, "s3://b/x", "body_part", {"abdomen": 0.7, "chest": 0.3})
    assert rows(con)["s3://b/x"][1] is False  # default rule both: the generic model agrees with the label
    con.execute(GATES + "('m', ?, 'body_part', 0.0, 0.95, 0.1, false, null, 'lake', null, null, null)", [SHA])
    assert rows(con)["s3://b/x"][1] is True  # default lake gate 0.5
    con.execute("update gates set lake_min_severity = 0.8")
    assert rows(con)["s3://b/x"][1] is False  # 1 - 0.3 < 0.8


@pytest.mark.parametrize("rule,generic_probs,flagged", [
    ("both", {"abdomen": 0.9, "chest": 0.1}, True),  # the generic model flags it too
    ("both", {"abdomen": 0.55, "chest": 0.45}, False),  # it disagrees, but under its severity gate
    ("disagree", {"abdomen": 0.55, "chest": 0.45}, True),
    ("disagree", {"chest": 0.9, "abdomen": 0.1}, False),  # the generic model agrees with the label
    ("lake", {"chest": 0.9, "abdomen": 0.1}, True),
])
def test_lake_rule(con, rule, generic_probs, flagged):
    con.execute(GATES + "('m', ?, 'body_part', 0.6, 0.95, 0.1, false, 0.5, ?, null, null, null)", [SHA, rule])
    given(con, [image("s3://b/x", body="chest", body_src="BodyPartExamined", bpe="CHEST")],
          [pred("s3://b/x", "body_part", generic_probs)])
    lake(con, "s3://b/x", "body_part", {"abdomen": 0.8, "chest": 0.2})
    assert rows(con)["s3://b/x"][1] is flagged


def test_lake_rows_of_an_older_version_are_ignored(con):
    given(con, [image("s3://b/x", body="chest", body_src="BodyPartExamined", bpe="CHEST", etag="e2")],
          [pred("s3://b/x", "body_part", {"chest": 0.9, "abdomen": 0.1}, etag="e2")])
    lake(con, "s3://b/x", "body_part", {"abdomen": 0.99, "chest": 0.01}, etag="e1")
    assert rows(con)["s3://b/x"][1:3] == (False, None)
    assert rows(con)["s3://b/x"][5] is None  # no lake method: the image's version was not scored


def test_group_findings_flags_a_group_the_model_disagrees_with(con):
    imgs, preds = [], []
    for i in range(6):  # one institution labels abdomen films as spine
        uri = f"s3://b/sys{i}"
        imgs.append(image(uri, body="spine", body_src="BodyPartExamined", bpe="SPINE", institution="Site Z"))
        preds.append(pred(uri, "body_part", {"abdomen": 0.9, "spine": 0.1}))
    for i in range(6):  # another one is right, with one real error
        uri = f"s3://b/ok{i}"
        imgs.append(image(uri, body="spine", body_src="BodyPartExamined", bpe="SPINE", institution="Site Y"))
        preds.append(pred(uri, "body_part", {"spine": 0.9, "chest": 0.1} if i else {"chest": 0.9, "spine": 0.1}))
    given(con, imgs, preds)
    got = {
        (r[0], r[1], r[2]): r[3:]
        for r in con.execute(
            "select field, dimension, group_value, header_class, predicted_class, n_images, n_disagree, "
            "round(share_disagree, 3), is_flagged from group_findings where field = 'body_part'"
        ).fetchall()
    }
    assert got[("body_part", "institution_name", "Site Z")] == ("spine", "abdomen", 6, 6, 1.0, True)
    assert got[("body_part", "institution_name", "Site Y")] == ("spine", "chest", 6, 1, 0.167, False)
    assert got[("body_part", "header_value", "SPINE")] == ("spine", "abdomen", 12, 7, 0.583, True)


def test_group_of_scattered_errors_the_lake_already_flags_is_not_a_group_finding(con):
    imgs, preds = [], []
    for i in range(6):  # random errors that happen to share a label: each one a lake flag
        uri = f"s3://b/r{i}"
        imgs.append(image(uri, body="neck", body_src="BodyPartExamined", bpe="CSPINE", institution="X"))
        preds.append(pred(uri, "body_part", {"chest": 0.9, "neck": 0.1} if i < 4 else {"neck": 0.9, "chest": 0.1}))
    given(con, imgs, preds)
    for i in range(6):
        lake(con, f"s3://b/r{i}", "body_part", {"chest": 0.9, "neck": 0.1} if i < 4 else {"neck": 0.9, "chest": 0.1})
    got = con.execute(
        "select n_disagree, n_lake_explained, is_flagged from group_findings where dimension = 'header_value'"
    ).fetchone()
    assert got == (4, 4, False)


@pytest.mark.parametrize("n,flagged", [(4, False), (5, True)])
def test_group_findings_needs_five_images(con, n, flagged):
    imgs = [image(f"s3://b/g{i}", body="spine", body_src="BodyPartExamined", bpe="SPINE", institution="Z")
            for i in range(n)]
    given(con, imgs, [pred(f"s3://b/g{i}", "body_part", {"abdomen": 0.9, "spine": 0.1}) for i in range(n)])
    got = con.execute("select is_flagged from group_findings where dimension = 'institution_name'").fetchone()
    assert got == (flagged,)


@pytest.mark.parametrize("weight,flagged,severity", [(1.0, True, 0.8), (0.5, False, 0.5), (0.7, True, 0.62)])
def test_lake_weight_blends_the_two_severities(con, weight, flagged, severity):
    # the probe says abdomen (p(chest) 0.2), the generic model is sure of the label (p(chest) 0.8)
    con.execute(GATES + "('m', ?, 'body_part', 0.0, 0.95, 0.1, false, 0.6, 'lake', ?, null, null)",
                [SHA, weight])
    given(con, [image("s3://b/x", body="chest", body_src="BodyPartExamined", bpe="CHEST")],
          [pred("s3://b/x", "body_part", {"chest": 0.8, "abdomen": 0.2})])
    lake(con, "s3://b/x", "body_part", {"abdomen": 0.8, "chest": 0.2})
    got = rows(con)["s3://b/x"]
    assert got[1] is flagged and got[3] == pytest.approx(severity)


def test_lake_prior_shrinks_the_probe_for_rare_labels(con):
    # one chest image among the lake's labels: with a prior of 3 images the probe's share is 0.8 x 1/4
    con.execute(GATES + "('m', ?, 'body_part', 0.0, 0.95, 0.1, false, 0.6, 'lake', 0.8, 3, null)", [SHA])
    given(con, [image("s3://b/x", body="chest", body_src="BodyPartExamined", bpe="CHEST")],
          [pred("s3://b/x", "body_part", {"chest": 0.8, "abdomen": 0.2})])
    lake(con, "s3://b/x", "body_part", {"abdomen": 0.8, "chest": 0.2})
    got = con.execute("select is_mismatch, lake_weight, round(severity, 3) from findings where field = 'body_part'").fetchone()
    assert got == (False, pytest.approx(0.2), pytest.approx(0.2 * 0.8 + 0.8 * 0.2))


@pytest.mark.parametrize("distrust,weight,flagged", [
    (0.05, 0.1, False),  # the generic model agrees with this kind of film's labels: it keeps 90 % of the say
    (0.2, 0.4, False),
    (0.6, 1.0, True),  # it disagrees with most of them: the probe decides alone
    (None, 1.0, True),  # not computed: the task's weight as it is
])
def test_lake_distrust_scale_gives_the_generic_model_its_say_where_it_agrees_with_the_lake(
        con, distrust, weight, flagged):
    # the probe says abdomen (p(chest) 0.1), the generic model is sure of the label (p(chest) 0.95)
    con.execute(GATES + "('m', ?, 'body_part', 0.0, 0.95, 0.1, false, 0.8, 'lake', 1.0, null, 0.5)",
                [SHA])
    given(con, [image("s3://b/x", body="chest", body_src="BodyPartExamined", bpe="CHEST")],
          [pred("s3://b/x", "body_part", {"chest": 0.95, "abdomen": 0.05})])
    lake(con, "s3://b/x", "body_part", {"abdomen": 0.9, "chest": 0.1}, distrust=distrust)
    got = con.execute("select is_mismatch, lake_weight, generic_distrust, severity from findings "
                      "where field = 'body_part'").fetchone()
    assert got[0] is flagged
    assert got[1] == pytest.approx(weight)
    assert got[2] == (None if distrust is None else pytest.approx(distrust))
    assert got[3] == pytest.approx(weight * 0.9 + (1 - weight) * 0.05)


def test_without_a_distrust_scale_the_weight_ignores_generic_distrust(con):
    con.execute(GATES + "('m', ?, 'body_part', 0.0, 0.95, 0.1, false, 0.8, 'lake', 1.0, null, null)",
                [SHA])
    given(con, [image("s3://b/x", body="chest", body_src="BodyPartExamined", bpe="CHEST")],
          [pred("s3://b/x", "body_part", {"chest": 0.95, "abdomen": 0.05})])
    lake(con, "s3://b/x", "body_part", {"abdomen": 0.9, "chest": 0.1}, distrust=0.01)
    assert con.execute("select is_mismatch, lake_weight from findings where field = 'body_part'").fetchone() == (True, 1.0)


def test_confusable_classes_need_the_stricter_lake_gate(con):
    # Three chest films with the probe at p(label) 0.15 (severity 0.85, over the lake gate of 0.8): a PA
    # the probe calls AP is a claim between the set 'PA|AP' and needs its gate of 0.9, so it is held
    # back; a PA it calls LATERAL passes the task's gate; a PA it calls AP at p(label) 0.05 passes both.
    con.execute("insert into gates (model, model_sha256, task, min_severity, target_precision, prevalence, "
                "class_thresholds, lake_min_severity, lake_rule, lake_weight, lake_prior_images, lake_distrust_scale, "
                "lake_confusable, lake_confusable_min_severity) "
                "values ('m', ?, 'projection', 0.99, 0.95, 0.1, false, 0.8, 'lake', 1.0, null, null, ['PA|AP'], 0.9)",
                [SHA])
    chest = dict(body="chest", body_src="BodyPartExamined", bpe="CHEST", proj="PA", vp="PA", proj_src="ViewPosition")
    uris = ("s3://b/ap_weak", "s3://b/lateral", "s3://b/ap_strong")
    given(con, [image(u, **chest) for u in uris],
          [pred(u, "projection", {"PA": 0.5, "AP": 0.3, "LATERAL": 0.2}) for u in uris])
    lake(con, "s3://b/ap_weak", "projection", {"PA": 0.15, "AP": 0.8, "LATERAL": 0.05})
    lake(con, "s3://b/lateral", "projection", {"PA": 0.15, "AP": 0.05, "LATERAL": 0.8})
    lake(con, "s3://b/ap_strong", "projection", {"PA": 0.05, "AP": 0.9, "LATERAL": 0.05})
    got = {r[0]: r[1:] for r in con.execute(
        "select uri, is_mismatch, lake_gate, suggested_correction from findings where field = 'projection'").fetchall()}
    assert got["s3://b/ap_weak"] == (False, pytest.approx(0.9), None)
    assert got["s3://b/lateral"] == (True, pytest.approx(0.8), "LATERAL")
    assert got["s3://b/ap_strong"] == (True, pytest.approx(0.9), "AP")
    # without the confusable gate every claim has the task's lake gate
    con.execute("update gates set lake_confusable_min_severity = null")
    assert con.execute("select count(*) from findings where field = 'projection' and is_mismatch "
                       "and lake_gate = 0.8").fetchone() == (3,)
