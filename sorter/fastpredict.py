"""One-row prediction for the fitted models without scikit-learn's per-tree dispatch.

scikit-learn's ``HistGradientBoostingClassifier`` predicts tree by tree: a Python loop
over every tree (210 for three classes and 70 rounds), each a Cython call with its own
argument handling and allocation, behind input validation, and, for the calibrated
classifier, another layer of validation per call.  For a batch of thousands of rows
that is nothing; for the line's one row it is most of the model's 2-3 ms.

:class:`FastForest` takes the fitted trees apart once (the node arrays scikit-learn
itself predicts from) and walks *all* trees at once, one numpy step per tree level.
It reproduces scikit-learn's arithmetic exactly: the same comparisons (``x <=
threshold``, missing values following ``missing_go_to_left``), the leaf values added
to the baseline in the same order, and the same link and calibration functions.
:func:`fast_predictor` builds one and then *checks* it against scikit-learn on probe
rows that straddle every threshold of every tree (and NaN); any difference, or a
model of a kind it does not know (categorical splits, another calibration method),
and it returns ``None`` so that the caller keeps scikit-learn's own path.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np
from scipy.special import expit

logger = logging.getLogger(__name__)

__all__ = ["FastForest", "FastCalibrated", "FastRegressor", "fast_predictor", "fast_regressor"]

_FOREST_ARRAYS = ("feature", "threshold", "missing_left", "left", "right", "value", "roots", "outputs", "baseline")
_FOREST_DTYPES = {
    "feature": np.intp,
    "threshold": np.float64,
    "missing_left": bool,
    "left": np.int64,
    "right": np.int64,
    "value": np.float64,
    "roots": np.intp,
    "outputs": np.intp,
    "baseline": np.float64,
}


class FastForest:
    """All trees of a fitted ``HistGradientBoostingClassifier``, as flat node arrays.

    ``raw(X)`` equals the estimator's ``_raw_predict(X)`` (its decision function,
    before the link), bit for bit.
    """

    def __init__(self, hgb: Any):
        if getattr(hgb, "is_categorical_", None) is not None and np.any(hgb.is_categorical_):
            raise ValueError("categorical splits are not supported")
        preds = hgb._predictors
        self.n_outputs = int(hgb.n_trees_per_iteration_)
        self.baseline = np.asarray(hgb._baseline_prediction, dtype=np.float64).reshape(self.n_outputs)
        feats, thr, mleft, left, right, value, roots, outputs = [], [], [], [], [], [], [], []
        depth = 0
        offset = 0
        for it in preds:
            for k, p in enumerate(it):
                nodes = p.nodes
                if np.any(nodes["is_categorical"]):
                    raise ValueError("categorical splits are not supported")
                n = len(nodes)
                leaf = nodes["is_leaf"].astype(bool)
                own = np.arange(offset, offset + n)
                # Leaves point at themselves, so walking a fixed number of levels is harmless.
                left.append(np.where(leaf, own, nodes["left"].astype(np.int64) + offset))
                right.append(np.where(leaf, own, nodes["right"].astype(np.int64) + offset))
                feats.append(np.where(leaf, 0, nodes["feature_idx"]).astype(np.intp))
                thr.append(nodes["num_threshold"].astype(np.float64))
                mleft.append(nodes["missing_go_to_left"].astype(bool))
                value.append(nodes["value"].astype(np.float64))
                roots.append(offset)
                outputs.append(k)
                depth = max(depth, int(nodes["depth"].max()))
                offset += n
        self.feature = np.concatenate(feats)
        self.threshold = np.concatenate(thr)
        self.missing_left = np.concatenate(mleft)
        self.left = np.concatenate(left)
        self.right = np.concatenate(right)
        self.value = np.concatenate(value)
        self.roots = np.asarray(roots, dtype=np.intp)
        self.outputs = np.asarray(outputs, dtype=np.intp)
        self.depth = depth
        self.n_features = int(hgb.n_features_in_)
        self._finish()

    def _finish(self) -> None:
        # Trees per output, in boosting order: sklearn adds them in this order.
        self._order = [np.flatnonzero(self.outputs == k) for k in range(self.n_outputs)]

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The node arrays and sizes, for :meth:`from_arrays` (plain numeric arrays: no pickle)."""
        out = {k: getattr(self, k) for k in _FOREST_ARRAYS}
        out["sizes"] = np.array([self.n_outputs, self.depth, self.n_features], dtype=np.int64)
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "FastForest":
        """The forest :meth:`to_arrays` described; ``ValueError`` for arrays that do not fit together."""
        self = cls.__new__(cls)
        for k in _FOREST_ARRAYS:
            setattr(self, k, np.asarray(arrays[k]).astype(_FOREST_DTYPES[k], casting="same_kind", copy=False))
        n_outputs, depth, n_features = (int(v) for v in np.asarray(arrays["sizes"]).ravel()[:3])
        self.n_outputs, self.depth, self.n_features = n_outputs, depth, n_features
        n = self.feature.size
        if not (
            n > 0
            and all(getattr(self, k).shape == (n,) for k in _FOREST_ARRAYS[:6])
            and self.roots.shape == self.outputs.shape
            and self.baseline.shape == (n_outputs,)
            and 0 <= depth <= 64
            and n_features > 0
        ):
            raise ValueError("the forest's arrays do not fit together")
        for k in ("left", "right", "roots"):
            a = getattr(self, k)
            if a.size and (a.min() < 0 or a.max() >= n):
                raise ValueError(f"node index out of range in {k!r}")
        if (
            self.feature.min() < 0
            or self.feature.max() >= n_features
            or self.outputs.min() < 0
            or self.outputs.max() >= n_outputs
        ):
            raise ValueError("feature or output index out of range")
        self._finish()
        return self

    def leaves(self, X: np.ndarray) -> np.ndarray:
        """Leaf index reached in every tree, shape ``(n, trees)``."""
        X = np.asarray(X, dtype=np.float64)
        n = X.shape[0]
        idx = np.broadcast_to(self.roots, (n, self.roots.size)).copy()
        rows = np.arange(n)[:, None]
        for _ in range(self.depth):
            x = X[rows, self.feature[idx]]
            go_left = np.where(np.isnan(x), self.missing_left[idx], x <= self.threshold[idx])
            idx = np.where(go_left, self.left[idx], self.right[idx])
        return idx

    def raw(self, X: np.ndarray) -> np.ndarray:
        """Raw predictions ``(n, n_outputs)``: baseline plus leaf values, summed in boosting order."""
        vals = self.value[self.leaves(X)]
        out = np.empty((vals.shape[0], self.n_outputs))
        for k, cols in enumerate(self._order):
            # cumsum adds left to right, one tree at a time, as sklearn's loop does.
            seq = np.concatenate([np.full((vals.shape[0], 1), self.baseline[k]), vals[:, cols]], axis=1)
            out[:, k] = np.cumsum(seq, axis=1)[:, -1]
        return out

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities, as the estimator's ``predict_proba``."""
        raw = self.raw(X)
        if self.n_outputs == 1:
            p1 = expit(raw[:, 0])
            return np.column_stack([1.0 - p1, p1])
        # HalfMultinomialLoss.predict_proba: a softmax with the max subtracted
        z = raw - raw.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


class FastCalibrated:
    """A ``CalibratedClassifierCV(method="sigmoid", ensemble=False)`` over a forest."""

    forest: FastForest
    n_classes: int
    pos: list[int]
    a: np.ndarray
    b: np.ndarray

    def __init__(self, cal: Any):
        ccs = cal.calibrated_classifiers_
        if len(ccs) != 1 or ccs[0].method != "sigmoid":
            raise ValueError("only a single sigmoid-calibrated classifier (ensemble=False) is supported")
        cc = ccs[0]
        self.forest = FastForest(cc.estimator)
        classes = list(cal.classes_)
        self.n_classes = len(classes)
        # a binary estimator has one output, for the positive class (column 1)
        self.pos = [1] if self.n_classes == 2 else [classes.index(c) for c in cc.estimator.classes_]
        self.a = np.array([c.a_ for c in cc.calibrators], dtype=np.float64)
        self.b = np.array([c.b_ for c in cc.calibrators], dtype=np.float64)
        if len(self.a) != self.forest.n_outputs:
            raise ValueError("calibrators do not match the estimator's outputs")

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The forest's arrays and the calibration's, for :meth:`from_arrays`."""
        return {
            **self.forest.to_arrays(),
            "cal_a": self.a,
            "cal_b": self.b,
            "cal_pos": np.asarray(self.pos, dtype=np.int64),
            "n_classes": np.array(self.n_classes),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "FastCalibrated":
        self = cls.__new__(cls)
        self.forest = FastForest.from_arrays(arrays)
        self.n_classes = int(arrays["n_classes"])
        self.pos = [int(v) for v in np.asarray(arrays["cal_pos"]).ravel()]
        self.a = np.asarray(arrays["cal_a"], dtype=np.float64).ravel()
        self.b = np.asarray(arrays["cal_b"], dtype=np.float64).ravel()
        if not (
            len(self.a) == len(self.b) == len(self.pos) == self.forest.n_outputs
            and self.n_classes >= 2
            and all(0 <= p < self.n_classes for p in self.pos)
        ):
            raise ValueError("the calibration's arrays do not fit the forest")
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        raw = self.forest.raw(X)
        n = raw.shape[0]
        proba = np.zeros((n, self.n_classes))
        for j, (cls, a, b) in enumerate(zip(self.pos, self.a, self.b)):
            proba[:, cls] = expit(-(a * raw[:, j] + b))
        if self.n_classes == 2:
            proba[:, 0] = 1.0 - proba[:, 1]
        else:
            den = proba.sum(axis=1)[:, None]
            proba = np.divide(proba, den, out=np.full_like(proba, 1 / self.n_classes), where=den != 0)
        proba[(1.0 < proba) & (proba <= 1.0 + 1e-5)] = 1.0
        return proba


class FastRegressor:
    """A ``HistGradientBoostingRegressor`` with the identity link (squared error):
    ``predict(X)`` equals the estimator's, bit for bit."""

    def __init__(self, forest: FastForest):
        if forest.n_outputs != 1:
            raise ValueError("a regressor has one output")
        self.forest = forest

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.forest.raw(X)[:, 0]

    def to_arrays(self) -> dict[str, np.ndarray]:
        return self.forest.to_arrays()

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "FastRegressor":
        return cls(FastForest.from_arrays(arrays))


def probe_rows(forest: FastForest, n: int = 512, seed: int = 0) -> np.ndarray:
    """Rows that straddle the forest's thresholds: each feature is drawn from its split
    thresholds, nudged just below, exactly at, or just above, or NaN."""
    rng = np.random.default_rng(seed)
    X = np.full((n, forest.n_features), np.nan)
    inner = forest.left != np.arange(forest.left.size)
    for f in range(forest.n_features):
        t = forest.threshold[inner & (forest.feature == f)]
        t = t[np.isfinite(t)]
        if t.size == 0:
            X[:, f] = rng.normal(size=n)
            continue
        pick = rng.choice(t, size=n)
        nudge = rng.choice([-1.0, 0.0, 1.0], size=n) * np.maximum(np.abs(pick), 1.0) * 1e-9
        X[:, f] = pick + nudge
        X[rng.random(n) < 0.1, f] = np.nan
    return X


def fast_predictor(estimator: Any) -> FastForest | FastCalibrated | None:
    """A fast equivalent of ``estimator.predict_proba``, verified, or ``None``.

    ``estimator`` is the pipeline's final step: a ``HistGradientBoostingClassifier``
    or a sigmoid ``CalibratedClassifierCV`` of one.  The result is checked against
    ``estimator.predict_proba`` on :func:`probe_rows`; it must agree exactly.
    """
    try:
        if hasattr(estimator, "calibrated_classifiers_"):
            fast: FastForest | FastCalibrated = FastCalibrated(estimator)
            forest = fast.forest  # type: ignore[union-attr]
        elif hasattr(estimator, "_predictors"):
            fast = forest = FastForest(estimator)
        else:
            return None
        X = probe_rows(forest)
        want = estimator.predict_proba(X)
        got = fast.predict_proba(X)
    except Exception as err:  # noqa: BLE001 - an unknown model layout: keep sklearn's path
        logger.info("fast prediction unavailable for %s: %s", type(estimator).__name__, err)
        return None
    if got.shape != want.shape or not np.array_equal(got, want):
        diff = float(np.nanmax(np.abs(got - want))) if got.shape == want.shape else float("nan")
        logger.warning("fast prediction disagrees with scikit-learn (max |diff| %.3g); using scikit-learn's path", diff)
        return None
    return fast


def fast_regressor(estimator: Any) -> FastRegressor | None:
    """A fast equivalent of a ``HistGradientBoostingRegressor``'s ``predict``, verified on
    :func:`probe_rows` as :func:`fast_predictor` does, or ``None``."""
    try:
        link = type(getattr(getattr(estimator, "_loss", None), "link", None)).__name__
        if not hasattr(estimator, "_predictors") or link != "IdentityLink":
            return None
        fast = FastRegressor(FastForest(estimator))
        X = probe_rows(fast.forest)
        want = estimator.predict(X)
        got = fast.predict(X)
    except Exception as err:  # noqa: BLE001 - an unknown model layout: keep sklearn's path
        logger.info("fast prediction unavailable for %s: %s", type(estimator).__name__, err)
        return None
    if got.shape != want.shape or not np.array_equal(got, want):
        logger.warning("fast regression disagrees with scikit-learn; using scikit-learn's path")
        return None
    return fast
