"""radlint.planted's gate choice on tiny given/expect lakes (in-memory DuckDB; findings as a table
with the columns the scorer reads)."""

from __future__ import annotations

import csv

import duckdb

from radlint import planted


def lake(tmp_path, name: str, rows: list[tuple]):
    """rows: (uri, planted, lake_label_prob, header_class_prob[, generic_distrust]) for body_part
    findings labelled 'chest'; the lake probe predicts 'head' and scored every row out-of-fold."""
    truth = tmp_path / f"{name}.csv"
    with truth.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uri", "field", "planted", "true_class", "systematic"])
        for uri, is_planted, *_ in rows:
            w.writerow([uri, "body_part", str(is_planted), "head" if is_planted else "chest", "False"])
    con = duckdb.connect()
    con.execute("""create table findings (uri varchar, field varchar, header_class varchar, lake_method varchar,
                   lake_predicted_class varchar, lake_label_prob double, header_class_prob double,
                   generic_is_mismatch boolean, predicted_class varchar, generic_distrust double)""")
    con.executemany("insert into findings values (?, 'body_part', 'chest', 'lake_oof', 'head', ?, ?, false, 'chest', ?)",
                    [(r[0], r[2], r[3], r[4] if len(r) > 4 else None) for r in rows])
    return con, truth


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
    # No setting gets both lakes right: the best F1 flags B's 10 errors and not its 30 false alarms,
    # giving up A's 10 (precision 1.0, recall 0.5), and says lake A's recall was 0.
    assert pooled["criterion"] == "best F1"
    assert (pooled["precision"], pooled["recall"]) == (1.0, 0.5)
    assert pooled["worst"] == (0.0, 0.0)
    assert pooled["lake_min_severity"] > 0.75


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
