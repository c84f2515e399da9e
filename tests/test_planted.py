"""radlint.planted's gate choice on tiny given/expect lakes (in-memory DuckDB; findings as a table
with the columns the scorer reads)."""

from __future__ import annotations

import csv

import duckdb

from radlint import planted


def lake(tmp_path, name: str, rows: list[tuple[str, bool, float, float]]):
    """rows: (uri, planted, lake_label_prob, header_class_prob) for body_part findings labelled
    'chest'; the lake probe predicts 'head' and scored every row out-of-fold."""
    truth = tmp_path / f"{name}.csv"
    with truth.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uri", "field", "planted", "true_class", "systematic"])
        for uri, is_planted, _, _ in rows:
            w.writerow([uri, "body_part", str(is_planted), "head" if is_planted else "chest", "False"])
    con = duckdb.connect()
    con.execute("""create table findings (uri varchar, field varchar, header_class varchar, lake_method varchar,
                   lake_predicted_class varchar, lake_label_prob double, header_class_prob double,
                   generic_is_mismatch boolean, predicted_class varchar)""")
    con.executemany("insert into findings values (?, 'body_part', 'chest', 'lake_oof', 'head', ?, ?, false, 'chest')",
                    [(u, p_lake, p_gen) for u, _, p_lake, p_gen in rows])
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


def test_choose_lake_gates_cli_names_a_folder_without_an_audited_lake(tmp_path, capsys):
    from radlint import cli

    assert cli.main(["choose-lake-gates", str(tmp_path)]) == 2
    assert "run evaluate-planted --dir" in capsys.readouterr().err
