"""The fast one-row predictor must give scikit-learn's probabilities exactly, or step aside."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier

from sorter.fastpredict import FastCalibrated, FastForest, fast_predictor, probe_rows
from sorter.model import _final_step, load_model


def _data(n_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(600, 6))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    if n_classes == 3:
        y[X[:, 2] > 0.8] = 2
    X[rng.random(X.shape) < 0.15] = np.nan  # missing readings take the learned side
    return X, y


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("calibrated", [False, True])
def test_same_probabilities_as_sklearn(n_classes: int, calibrated: bool) -> None:
    X, y = _data(n_classes)
    est = HistGradientBoostingClassifier(max_iter=30, random_state=0)
    if calibrated:
        est = CalibratedClassifierCV(est, method="sigmoid", cv=3, ensemble=False)
    est.fit(X, y)
    fast = fast_predictor(est)
    assert isinstance(fast, FastCalibrated if calibrated else FastForest)
    Xt, _ = _data(n_classes, seed=1)
    np.testing.assert_array_equal(fast.predict_proba(Xt), est.predict_proba(Xt))
    for row in Xt[:20]:  # the line's case: one row at a time
        np.testing.assert_array_equal(fast.predict_proba(row[None, :]), est.predict_proba(row[None, :]))


def test_probe_rows_reach_both_sides_of_splits() -> None:
    X, y = _data(3)
    est = HistGradientBoostingClassifier(max_iter=10, random_state=0).fit(X, y)
    forest = FastForest(est)
    P = probe_rows(forest, n=256)
    leaves = forest.leaves(P)
    # Most leaves of the forest are reached by the probes, and NaN is among them.
    reached = np.unique(leaves).size
    n_leaves = int((forest.left == np.arange(forest.left.size)).sum())
    assert reached > 0.5 * n_leaves
    assert np.isnan(P).any()


def test_unsupported_models_keep_sklearn() -> None:
    X, y = _data(2)
    iso = CalibratedClassifierCV(
        HistGradientBoostingClassifier(max_iter=5), method="isotonic", cv=3, ensemble=False
    ).fit(X, y)
    assert fast_predictor(iso) is None
    ens = CalibratedClassifierCV(HistGradientBoostingClassifier(max_iter=5), cv=3).fit(X, y)  # ensemble=True
    assert fast_predictor(ens) is None
    assert fast_predictor(object()) is None


def test_a_disagreement_falls_back(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    X, y = _data(3)
    est = HistGradientBoostingClassifier(max_iter=10, random_state=0).fit(X, y)
    original = FastForest.raw
    monkeypatch.setattr(FastForest, "raw", lambda self, X: original(self, X) + 1e-12)
    with caplog.at_level(logging.WARNING, logger="sorter.fastpredict"):
        assert fast_predictor(est) is None
    assert "disagrees" in caplog.text


def test_shipped_model_uses_the_fast_path_and_matches(sample_raw: np.ndarray) -> None:
    model = load_model()
    clf, dmg = model.prepare()
    assert clf is not None and dmg is not None, "the shipped model should be on the fast path"
    from sorter.model import FAST_PATH_MAX_ROWS, features_fast

    want = _final_step(model.classifier).predict_proba(features_fast(model.classifier, sample_raw))
    want_dmg = _final_step(model.damage).predict_proba(features_fast(model.damage, sample_raw))[:, 1]
    # the line's small batches take the fast path, batch scoring's chunks scikit-learn's: the same
    for size in (1, 7, FAST_PATH_MAX_ROWS - 1, FAST_PATH_MAX_ROWS, len(sample_raw)):
        parts = [model.predict(sample_raw[i : i + size]) for i in range(0, len(sample_raw), size)]
        np.testing.assert_array_equal(np.vstack([p for p, _ in parts]), want)
        np.testing.assert_array_equal(np.concatenate([d for _, d in parts]), want_dmg)


@pytest.fixture(scope="module")
def sample_raw() -> np.ndarray:
    """Raw measurements of the committed sample log's items (real simulator output)."""
    from pathlib import Path

    from sorter.batch import iter_measured

    log_dir = Path(__file__).resolve().parent.parent / "data" / "sample-log"
    chunks = list(iter_measured([log_dir]))
    raw = np.vstack([c.raw[c.ok] for c in chunks])
    assert len(raw) >= 100
    return raw
