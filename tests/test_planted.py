"""radlint.planted's gate choice on tiny given/expect lakes (in-memory DuckDB; findings as a table
with the columns the scorer reads)."""

from __future__ import annotations

import csv

import duckdb
import pytest

from radlint import planted


def chest_lake(tmp_path, name: str, rows: list[tuple]):
    """rows: (uri, planted, lake probe's class, lake_label_prob, header_class_prob, generic_distrust) for
    body_part findings labelled 'chest', every row scored out-of-fold by the lake probe."""
    truth = tmp_path / f"{name}.csv"
    with truth.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uri", "field", "planted", "true_class", "systematic"])
        for uri, is_planted, predicted, *_ in rows:
            w.writerow([uri, "body_part", str(is_planted), predicted if is_planted else "chest", "False"])
    con = duckdb.connect()
    con.execute("""create table findings (uri varchar, field varchar, header_class varchar, lake_method varchar,
                   lake_predicted_class varchar, lake_label_prob double, header_class_prob double,
                   generic_is_mismatch boolean, predicted_class varchar, generic_distrust double)""")
    con.executemany("insert into findings values (?, 'body_part', 'chest', 'lake_oof', ?, ?, ?, false, 'chest', ?)",
                    [(uri, predicted, p_lake, p_generic, distrust)
                     for uri, _, predicted, p_lake, p_generic, distrust in rows])
    return con, truth


def lake(tmp_path, name: str, rows: list[tuple]):
    """rows: (uri, planted, lake_label_prob, header_class_prob[, generic_distrust]) for body_part
    findings labelled 'chest'; the lake probe predicts 'head' and scored every row out-of-fold."""
    return chest_lake(tmp_path, name, [(r[0], r[1], "head", r[2], r[3], r[4] if len(r) > 4 else None) for r in rows])


def as_folder(con, truth, folder):
    """A lake's connection and truth written as evaluate-planted leaves a folder: radlint.duckdb (its
    findings) and planted_errors.csv."""
    folder.mkdir(parents=True)
    con.execute(f"attach '{folder / 'radlint.duckdb'}' as out")
    con.execute("create table out.findings as select * from findings")
    con.close()
    truth.rename(folder / "planted_errors.csv")
    return folder


def audited_folder(tmp_path, name: str, rows: list[tuple], folder):
    """``lake(...)`` written as an evaluate-planted folder."""
    return as_folder(*lake(tmp_path, name, rows), folder)


def test_gates_are_chosen_over_the_lakes_pooled(tmp_path):
    # Lake A alone is served best by a low gate (its planted errors have lake severity 0.75); lake B
    # has false alarms at severity 0.75 that only a gate above it avoids. Pooled, the gate must
    # trade both, and the result reports the worse lake.
    a = lake(tmp_path, "a", [(f"a{i}", True, 0.25, 1.0) for i in range(10)] + [(f"a_ok{i}", False, 0.9, 1.0) for i in range(90)])
    b = lake(tmp_path, "b", [(f"b{i}", True, 0.02, 1.0) for i in range(10)] + [(f"b_fa{i}", False, 0.25, 1.0) for i in range(30)]
             + [(f"b_ok{i}", False, 0.9, 1.0) for i in range(60)])
    only_a = planted.choose_lake_gates([a])["body_part"]
    assert (only_a["precision"], only_a["recall"]) == (1.0, 1.0) and only_a["n_lakes"] == 1
    pooled = planted.choose_lake_gates([a, b])["body_part"]
    assert pooled["n_lakes"] == 2
    # No setting gets both lakes right: the most recall at precision 0.95 flags B's 10 errors and not
    # its 30 false alarms, giving up A's 10 (precision 1.0, recall 0.5), and says lake A's recall was 0.
    assert pooled["criterion"] == "recall at precision >= 0.95, recall target 0.95 not reached"
    assert (pooled["precision"], pooled["recall"]) == (1.0, 0.5)
    assert pooled["worst"] == (0.0, 0.0)
    assert pooled["lake_min_severity"] > 0.75
    # the pooled counts behind the point values, and their Wilson intervals
    assert (pooled["true_positives"], pooled["flagged"], pooled["planted"]) == (10, 10, 20)
    assert pooled["recall_ci"] == planted.wilson(10, 20)
    # lake A's 10 errors missed, lake B's found; positions follow the order of the lakes given
    assert pooled["per_lake"] == [{"lake": 0, "true_positives": 0, "flagged": 0, "planted": 10},
                                  {"lake": 1, "true_positives": 10, "flagged": 10, "planted": 10}]
    lo, hi = pooled["precision_ci"]
    assert 0.6 < lo < 0.75 and hi == 1.0


def precision_or_recall_lake(tmp_path):
    """Ten planted errors the probe is sure of (severity 0.98), ten it is less sure of (0.75), and two
    right labels it doubts as much (0.75): taking the second ten costs two false alarms."""
    return lake(tmp_path, "a", [(f"s{i}", True, 0.02, 1.0) for i in range(10)]
                + [(f"d{i}", True, 0.25, 1.0) for i in range(10)]
                + [(f"fa{i}", False, 0.25, 1.0) for i in range(2)]
                + [(f"ok{i}", False, 0.9, 1.0) for i in range(78)])


def test_precision_comes_first_where_no_setting_reaches_both_targets(tmp_path):
    # The best F1 (0.952) takes both tens at precision 0.909; body part's target precision is 0.95,
    # so the chooser keeps to the sure ten instead.
    chosen = planted.choose_lake_gates([precision_or_recall_lake(tmp_path)])["body_part"]
    assert (chosen["precision"], chosen["recall"]) == (1.0, 0.5)
    assert 0.75 < chosen["lake_min_severity"] <= 0.98
    assert chosen["target"] == (0.95, 0.95)
    # A field whose target precision is 0.9 (projection's, planted.LAKE_TARGETS) takes both tens.
    lower = planted.choose_lake_gates([precision_or_recall_lake(tmp_path)],
                                      targets={"body_part": (0.9, 0.85)})["body_part"]
    assert (round(lower["precision"], 3), lower["recall"]) == (0.909, 1.0)
    assert lower["criterion"] == "furthest past precision 0.9 and recall 0.85"
    # A recall target no setting reaches at that precision is said to be missed.
    strict = planted.choose_lake_gates([precision_or_recall_lake(tmp_path)],
                                       targets={"body_part": (1.0, 1.0)})["body_part"]
    assert strict["criterion"] == "recall at precision >= 1.0, recall target 1.0 not reached"
    assert planted.LAKE_TARGETS["projection"] == (0.9, 0.85)
    # Where no setting reaches the target precision (false alarms as sure as the errors), the best F1.
    blurred = planted.choose_lake_gates([lake(tmp_path, "b", [(f"s{i}", True, 0.02, 1.0) for i in range(10)]
                                              + [(f"fa{i}", False, 0.02, 1.0) for i in range(2)]
                                              + [(f"ok{i}", False, 0.9, 1.0) for i in range(88)])])["body_part"]
    assert blurred["criterion"] == "best F1, precision target 0.95 not reached"
    assert (round(blurred["precision"], 3), blurred["recall"]) == (0.833, 1.0)


def test_choose_lake_gates_cli_takes_targets_per_field(tmp_path, capsys):
    from radlint import cli

    folder = as_folder(*precision_or_recall_lake(tmp_path), tmp_path / "lake")
    assert cli.main(["choose-lake-gates", str(folder)]) == 0
    assert "precision 1.000" in capsys.readouterr().out
    assert cli.main(["choose-lake-gates", str(folder), "--target", "body_part:0.9:0.85"]) == 0
    out = capsys.readouterr().out
    assert "precision 0.909" in out and "furthest past precision 0.9 and recall 0.85" in out
    with pytest.raises(SystemExit):
        cli.main(["choose-lake-gates", str(folder), "--target", "body_part:0.9"])
    assert "not FIELD:PRECISION:RECALL" in capsys.readouterr().err


def test_choose_lake_gates_cli_writes_a_registry_with_the_chosen_gates(tmp_path, capsys):
    from radlint import cli
    from radlint.tasks import infer

    folder = as_folder(*precision_or_recall_lake(tmp_path), tmp_path / "lake")
    out = tmp_path / "elsewhere" / "chosen.yaml"
    out.parent.mkdir()
    assert cli.main(["choose-lake-gates", str(folder), "--write-registry", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    written, shipped = infer.load_registry(out), infer.load_registry()
    body = written[0].tasks["body_part"]
    # the sure ten only (precision first): a gate above their doubted 0.75, the lake rule
    assert body.lake_rule == "lake" and 0.75 < body.lake_min_severity <= 0.98
    # everything else as shipped, the model files where they are and unchanged
    assert [e.name for e in written] == [e.name for e in shipped]
    for w, s in zip(written, shipped):
        assert (w.path, w.sha256) == (s.path, s.sha256)
        infer._verify_file(w.path, w.sha256)
    assert written[0].tasks["projection"].lake_confusable == shipped[0].tasks["projection"].lake_confusable
    assert written[0].tasks["body_part"].thresholds == shipped[0].tasks["body_part"].thresholds
    text = out.read_text()
    assert text.startswith("# Written by `radlint choose-lake-gates ")
    assert "# radlint model registry (data, not code)" in text  # the source's own header kept


def test_wilson_intervals_match_the_textbook_values():
    # Wilson 95 %: 0 of 10 -> [0, 0.2775]; 81 of 263 -> [0.2553, 0.3662] (Newcombe 1998, table I
    # gives 0.2553-0.3662 for 81/263); none without trials
    lo, hi = planted.wilson(0, 10)
    assert lo == 0.0 and round(hi, 4) == 0.2775
    lo, hi = planted.wilson(81, 263)
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    assert planted.wilson(0, 0) is None


def test_score_reports_intervals_and_the_table_prints_them(tmp_path):
    # 8 planted errors; the findings flag 10 images, 6 of them planted
    truth = tmp_path / "t.csv"
    with truth.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uri", "field", "planted", "true_class", "systematic"])
        for i in range(40):
            w.writerow([f"u{i}", "body_part", str(i < 8), "head", "False"])
    con = duckdb.connect()
    con.execute("create table findings (uri varchar, field varchar, header_class varchar, is_mismatch boolean)")
    con.executemany("insert into findings values (?, 'body_part', 'chest', ?)",
                    [(f"u{i}", i < 6 or 30 <= i < 34) for i in range(40)])
    s = planted.score(con, truth)["body_part"]
    assert (s["planted"], s["flagged"], s["true_positives"]) == (8, 10, 6)
    assert (s["precision"], s["recall"]) == (0.6, 0.75)
    assert s["precision_ci"] == planted.wilson(6, 10) and s["recall_ci"] == planted.wilson(6, 8)
    line = planted.format_table({"body_part": s}).splitlines()[1]
    lo, hi = s["precision_ci"]
    assert f"0.600 [{lo:.3f}, {hi:.3f}]" in line


def test_a_distrust_scale_is_chosen_where_the_generic_model_knows_some_films_and_not_others(tmp_path):
    # rows: (uri, planted, p_lake(label), p_generic(label), generic_distrust)
    # Known films (distrust 0.02): the generic model is right and sure, the probe is unsure of
    # their errors and confidently wrong on some right labels. Unknown films (distrust 0.9): the
    # generic model calls them all one class, so it agrees with the errors that name that class
    # and disagrees with every right label; the probe is right. No single weight and gate of the
    # grid separates both kinds; a weight that follows the distrust does.
    rows = ([(f"k{i}", True, 0.7, 0.0, 0.02) for i in range(10)]
            + [(f"k_fa{i}", False, 0.05, 0.99, 0.02) for i in range(20)]
            + [(f"k_ok{i}", False, 0.9, 0.99, 0.02) for i in range(60)]
            + [(f"u{i}", True, 0.02, 1.0, 0.9) for i in range(10)]
            + [(f"u_ok{i}", False, 0.98, 0.0, 0.9) for i in range(30)])
    chosen = planted.choose_lake_gates([lake(tmp_path, "a", rows)])["body_part"]
    assert (chosen["precision"], chosen["recall"]) == (1.0, 1.0)
    assert chosen["lake_distrust_scale"] is not None
    without = [r[:4] for r in rows]  # the same lake from an older audit: no distrust computed
    again = planted.choose_lake_gates([lake(tmp_path, "b", without)])["body_part"]
    assert again["precision"] < 1.0 or again["recall"] < 1.0


def test_choose_lake_gates_cli_names_a_folder_without_an_audited_lake(tmp_path, capsys):
    from radlint import cli

    assert cli.main(["choose-lake-gates", str(tmp_path)]) == 2
    assert "run evaluate-planted --dir" in capsys.readouterr().err


def test_choose_lake_gates_cli_prints_each_lake(tmp_path, capsys):
    # two audited folders as evaluate-planted leaves them (a database and its planted truth)
    from radlint import cli

    dirs = []
    for name, rows in (("a", [(f"a{i}", True, 0.25, 1.0) for i in range(10)] + [(f"a_ok{i}", False, 0.9, 1.0) for i in range(90)]),
                       ("b", [(f"b{i}", True, 0.02, 1.0) for i in range(5)] + [(f"b_ok{i}", False, 0.9, 1.0) for i in range(45)])):
        dirs.append(str(audited_folder(tmp_path, name, rows, tmp_path / f"work_{name}")))
    assert cli.main(["choose-lake-gates", *dirs]) == 0
    out = capsys.readouterr().out
    assert f"body_part    {dirs[0]}: 1.000 [" in out and "(10 of 10 flags right, 10 planted)" in out
    assert f"body_part    {dirs[1]}: 1.000 [" in out and "(5 of 5 flags right, 5 planted)" in out


def test_pool_scores_sums_the_counts_and_recomputes_the_rates():
    a = {"body_part": {"checked": 100, "planted": 10, "flagged": 8, "true_positives": 8}}
    b = {"body_part": {"checked": 50, "planted": 10, "flagged": 12, "true_positives": 6},
         "orientation": {"checked": 50, "planted": 5, "flagged": 0, "true_positives": 0}}
    pooled = planted.pool_scores([a, b])
    bp = pooled["body_part"]
    assert (bp["checked"], bp["planted"], bp["flagged"], bp["true_positives"]) == (150, 20, 20, 14)
    assert (bp["precision"], bp["recall"]) == (0.7, 0.7) and abs(bp["f1"] - 0.7) < 1e-12
    assert bp["precision_ci"] == planted.wilson(14, 20)
    o = pooled["orientation"]
    assert o["precision"] is None and o["recall"] == 0.0 and o["precision_ci"] is None


def test_worst_is_taken_over_lakes_each_pooled_over_its_builds(tmp_path):
    # lake X: two builds, one clean (10 of 10 found) and one that finds none of its 10; lake Y: one
    # clean build. Build by build the worst recall is 0; lake by lake it is X's pooled 0.5.
    found = [(f"x1_{i}", True, 0.02, 1.0) for i in range(10)] + [(f"x1_ok{i}", False, 0.9, 1.0) for i in range(40)]
    missed = [(f"x2_{i}", True, 0.9, 1.0) for i in range(10)] + [(f"x2_ok{i}", False, 0.9, 1.0) for i in range(40)]
    clean = [(f"y{i}", True, 0.02, 1.0) for i in range(10)] + [(f"y_ok{i}", False, 0.9, 1.0) for i in range(40)]
    lakes = [lake(tmp_path, "x1", found), lake(tmp_path, "x2", missed), lake(tmp_path, "y", clean)]
    by_build = planted.choose_lake_gates(lakes)["body_part"]
    by_lake = planted.choose_lake_gates(lakes, groups=["x", "x", "y"])["body_part"]
    assert (by_build["n_lakes"], by_build["n_builds"]) == (3, 3) and by_build["worst"][1] == 0.0
    assert (by_lake["n_lakes"], by_lake["n_builds"]) == (2, 3) and by_lake["worst"][1] == 0.5
    with pytest.raises(ValueError, match="2 group names for 3 lakes"):
        planted.choose_lake_gates(lakes, groups=["x", "y"])


def test_choose_lake_gates_cli_reads_a_folder_of_seed_builds_as_one_lake(tmp_path, capsys):
    from radlint import cli

    root = tmp_path / "work"
    for seed, rows in ((5, [(f"a{i}", True, 0.02, 1.0) for i in range(10)] + [(f"ok{i}", False, 0.9, 1.0) for i in range(40)]),
                       (6, [(f"b{i}", True, 0.02, 1.0) for i in range(8)] + [(f"ok{i}", False, 0.9, 1.0) for i in range(40)])):
        audited_folder(tmp_path, f"s{seed}", rows, root / f"seed-{seed}")
    assert cli.main(["choose-lake-gates", str(root)]) == 0
    out = capsys.readouterr().out
    assert "over 1 lake(s) (2 builds)" in out
    assert f"{root / 'seed-5'}: 1.000 [" in out and f"{root / 'seed-6'}: 1.000 [" in out
    assert cli.main(["choose-lake-gates", str(tmp_path / "nothing")]) == 2
    assert "nor seed-* folders" in capsys.readouterr().err


def confusable_lake(tmp_path):
    """Chest labels. The probe's claims of "head" are right down to severity 0.8; its claims of
    "abdomen" (a look-alike of chest in this toy lake) are false alarms at 0.87 and right only at
    0.95. One gate cannot take the first without the false alarms; a stricter gate for claims
    inside the set 'chest|abdomen' can."""
    rows = ([(f"h{i}", True, "head", 0.2) for i in range(10)]
            + [(f"a{i}", True, "abdomen", 0.05) for i in range(10)]
            + [(f"a_fa{i}", False, "abdomen", 0.13) for i in range(10)]
            + [(f"ok{i}", False, "chest", 0.9) for i in range(70)])
    return chest_lake(tmp_path, "t", [(uri, p, cls, prob, prob, None) for uri, p, cls, prob in rows])


def test_a_confusable_gate_holds_back_doubtful_claims_between_look_alike_classes(tmp_path):
    con, truth = confusable_lake(tmp_path)
    plain = planted.choose_lake_gates([(con, truth)])["body_part"]
    assert plain["lake_confusable_min_severity"] is None and (plain["precision"], plain["recall"]) != (1.0, 1.0)
    chosen = planted.choose_lake_gates([(con, truth)], confusable={"body_part": ("chest|abdomen",)})["body_part"]
    assert (chosen["precision"], chosen["recall"]) == (1.0, 1.0)
    assert chosen["lake_confusable"] == ["chest|abdomen"]
    assert chosen["lake_min_severity"] <= 0.8 < 0.87 < chosen["lake_confusable_min_severity"] <= 0.95


def test_choose_lake_gates_cli_takes_the_confusable_sets_from_its_registry(tmp_path, capsys):
    from radlint import cli
    from tests.test_registry import shipped_registry

    folder = as_folder(*confusable_lake(tmp_path), tmp_path / "lake")
    registry = shipped_registry(
        tmp_path, lambda model: model["tasks"]["body_part"]["gate"].update(lake_confusable=[["chest", "abdomen"]]))
    assert cli.main(["choose-lake-gates", str(folder)]) == 0
    shipped = capsys.readouterr().out
    assert "body_part:" in shipped and "lake_confusable_min_severity" not in shipped
    assert cli.main(["choose-lake-gates", str(folder), "--registry", str(registry)]) == 0
    out = capsys.readouterr().out
    assert "lake_confusable ['chest|abdomen'], lake_confusable_min_severity" in out
    assert "precision 1.000" in out and "recall 1.000" in out
