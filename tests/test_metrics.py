"""Offline metrics against scikit-learn and by hand."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, roc_auc_score

from mtlrec.training.metrics import auc, binary_metrics, delta_m, group_auc, logloss_from_logits


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(-3, 3)), min_size=2, max_size=200))
def test_auc_matches_sklearn_with_many_ties(pairs):
    y = np.array([p[0] for p in pairs], dtype=float)
    s = np.array([p[1] for p in pairs], dtype=float) / 2
    if y.min() == y.max():
        assert np.isnan(auc(y, s))
    else:
        assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_by_hand():
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)


def test_logloss_and_calibration():
    rng = np.random.default_rng(0)
    z = rng.normal(size=1000)
    y = (rng.random(1000) < 1 / (1 + np.exp(-z))).astype(float)
    p = 1 / (1 + np.exp(-z))
    assert logloss_from_logits(y, z) == pytest.approx(log_loss(y, p), rel=1e-9)
    assert logloss_from_logits([1.0], [800.0]) == pytest.approx(0.0)  # no overflow
    m = binary_metrics(y, z)
    assert m["calibration"] == pytest.approx(p.mean() / y.mean())


def test_group_auc_and_delta_m():
    y = np.array([[0], [1], [0], [1]], dtype=float)
    z = np.array([[0.1], [0.9], [0.8], [0.2]])
    g = np.array(["NL", "NL", "US", "US"])
    assert group_auc(y, z, g, ["ctr"]) == {"NL": {"ctr": 1.0}, "US": {"ctr": 0.0}}
    assert delta_m({"a": 0.9, "b": 1.1}, {"a": 1.0, "b": 1.0}) == pytest.approx(0.0)
    assert delta_m({"a": 1.1}, {"a": 1.0}) == pytest.approx(10.0)
    assert delta_m({"mae": 0.9}, {"mae": 1.0}, frozenset({"mae"})) == pytest.approx(10.0)
