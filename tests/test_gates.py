"""models/gates.py: the gate chosen on validation reaches the target precision with the most recall."""

from __future__ import annotations

import numpy as np
import pytest

from radlint.models.gates import choose_gate, flag_rates


def _probs(rows):
    return np.asarray(rows, dtype=np.float64)


def test_flag_rates_follow_the_findings_rule():
    probs = _probs([[0.5, 0.46, 0.04], [0.9, 0.05, 0.05], [0.1, 0.1, 0.8]])
    labels = np.array([2, 0, 0])
    thresholds = np.array([0.6, 0.6, 0.6])
    # row 0: label has 0.04 but the predicted class (0.5) misses its threshold
    assert flag_rates(probs, labels, thresholds, 0.9).tolist() == [False, False, True]
    assert flag_rates(probs, labels, thresholds, 0.9, class_thresholds=False).tolist() == [True, False, True]
    # row 2 has severity 0.9: a higher gate holds it back
    assert flag_rates(probs, labels, thresholds, 0.95, class_thresholds=False).tolist() == [True, False, False]


def test_choose_gate_prefers_the_rule_with_more_recall_at_the_target():
    rng = np.random.default_rng(0)
    thresholds = np.array([0.9, 0.9, 0.9])
    # correct labels: confident in the label
    neg = rng.dirichlet([20, 1, 1], size=400)
    neg_l = np.zeros(400, int)
    # wrong labels (label 0): mass split between classes 1 and 2, so neither reaches 0.9
    pos = rng.dirichlet([1, 10, 10], size=400)
    pos_l = np.zeros(400, int)
    g = choose_gate((neg, neg_l, thresholds), (pos, pos_l, thresholds), 0.9, 0.1)
    assert g["class_thresholds"] is False
    assert g["precision"] >= 0.9 and g["recall"] > 0.9
    # when the classes are confident, both rules reach the target and thresholds are kept on ties
    pos2 = rng.dirichlet([1, 60, 1], size=400)
    g2 = choose_gate((neg, neg_l, thresholds), (pos2, pos_l, thresholds), 0.9, 0.1)
    assert g2["precision"] >= 0.9 and g2["recall"] > 0.9


def test_label_gates_pass_easy_labels_that_one_task_gate_holds_back():
    from radlint.models.gates import choose_label_gates

    rng = np.random.default_rng(1)
    thresholds = np.array([0.5, 0.5, 0.5])

    def mix(a, b, n, frac):
        k = int(n * frac)
        return np.concatenate([rng.dirichlet(a, size=n - k), rng.dirichlet(b, size=k)])

    # PA/AP (classes 0/1): a fifth of each look like the other; every frontal image keeps
    # p(LATERAL) near 0.1, as label smoothing leaves it, so "frontal labelled LATERAL" has
    # severity ~0.9, below the "PA that looks AP" doubts of correct labels
    probs = np.concatenate([mix([12, 4, 1.8], [1, 14, 1.8], 300, 0.2),
                            mix([4, 12, 1.8], [14, 1, 1.8], 300, 0.2),
                            rng.dirichlet([0.5, 0.5, 12], size=60)])
    truth = np.array([0] * 300 + [1] * 300 + [2] * 60)
    neg = (probs, truth, thresholds)
    pos_p, pos_l = [], []
    for p, y in zip(probs, truth):
        for w in range(3):
            if w != y:
                pos_p.append(p)
                pos_l.append(w)
    pos = (np.array(pos_p), np.array(pos_l), thresholds)
    single = choose_gate(neg, pos, 0.95, 0.1)
    assert single["precision"] < 0.95  # no single gate reaches the target here
    by_label = choose_label_gates(neg, pos, ["PA", "AP", "LATERAL"], 0.95, 0.1)
    assert by_label["recall"] > 0.4
    assert by_label["by_label"]["LATERAL"] < by_label["by_label"]["PA"]
    # each label's flags keep the target precision
    for c, name in enumerate(["PA", "AP", "LATERAL"]):
        g = by_label["by_label"][name]
        nm, pm = truth == c, pos[1] == c
        fpr = flag_rates(probs[nm], truth[nm], thresholds, g, by_label["class_thresholds"]).mean()
        tpr = flag_rates(pos[0][pm], pos[1][pm], thresholds, g, by_label["class_thresholds"]).mean()
        if tpr > 0:
            assert 0.1 * tpr / (0.1 * tpr + 0.9 * fpr) >= 0.95


def test_main_rewrites_the_generic_gates_and_keeps_the_lake_gates(tmp_path):
    """models.gates chooses min_severity & co.; the lake gates come from choose-lake-gates and stay."""
    pytest.importorskip("onnxruntime")
    import csv

    import yaml
    from PIL import Image

    from radlint.models import gates as gates_cli
    from tests.test_registry import _shipped_with

    rng = np.random.default_rng(0)
    rows = []
    (tmp_path / "img").mkdir()
    for i, (part, view) in enumerate([("chest", "PA"), ("chest", "AP"), ("chest", "PA"), ("chest", "AP"),
                                      ("head", ""), ("lower_limb", ""), ("chest", "LATERAL"), ("spine", "")]):
        arr = (rng.random((96, 80)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / f"img/{i}.png")
        rows.append({"file": f"img/{i}.png", "patient_id": f"p{i}", "body_part": part, "view": view})
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (tmp_path / "split.csv").write_text("patient_id,split\n" + "".join(f"p{i},val\n" for i in range(len(rows))))
    registry = _shipped_with(tmp_path, lambda embedding: None)
    entry = yaml.safe_load(registry.read_text())["models"][0]
    lake = {t: {k: v for k, v in spec["gate"].items() if k.startswith("lake_")} for t, spec in entry["tasks"].items()}
    assert all(lake.values())
    assert gates_cli.main(["--labels", str(tmp_path / "labels.csv"), "--split-file", str(tmp_path / "split.csv"),
                           "--registry", str(registry), "--overrides", ""]) == 0
    after = yaml.safe_load(registry.read_text())["models"][0]["tasks"]
    for task, kept in lake.items():
        assert {k: after[task]["gate"][k] for k in kept} == kept
        assert "min_severity" in after[task]["gate"]
