"""models/gates.py: the gate chosen on validation reaches the target precision with the most recall."""

from __future__ import annotations

import numpy as np

from models.gates import choose_gate, flag_rates


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
