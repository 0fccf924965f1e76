"""A model directory's fast predictor file, ``predictor.npz``: scoring without scikit-learn.

The skops files are the model.  Beside them, ``predictor.npz`` holds what the line and
``sorter score`` need to predict the same probabilities, as plain numeric and text arrays
(numpy's ``.npz``, read with ``allow_pickle=False``: no objects, no code): for each part
(``classifier``, ``damage``, ``energy``)

- the feature steps: the names of the functions of :mod:`sorter.features.derive` (the only
  names accepted) and the raw columns each is applied to,
- the trees' node arrays and the calibration of :mod:`sorter.fastpredict`,
- a fixed probe set and the outputs scikit-learn gave on it when the file was written: rows
  that straddle every split threshold (and NaN), in feature space, and random raw
  measurement rows through the whole pipeline (features, then probabilities).

Loading it (:func:`read_fast_file`) imports neither scikit-learn nor skops (about 2.5 s of a
start-up here): the manifest's sha256 covers this file as it covers the skops files, and the
loader recomputes the probe outputs and requires them equal, bit for bit, to the stored ones
(the self-check that :func:`sorter.fastpredict.fast_predictor` does against scikit-learn, run
against scikit-learn's answers recorded at writing time).  :func:`fast_arrays` builds the
arrays from the fitted estimators and checks them against scikit-learn first; ``sorter train``
and ``sorter calibrate`` write the file, and ``sorter model upgrade DIR`` adds it to a model
directory written before it existed, without retraining.

Examples
--------
>>> from sorter.model import load_model
>>> m = load_model(estimators=False)   # the shipped model, without scikit-learn
>>> m.classifier is None, m.classes
(True, ('lead_acid', 'li_ion', 'other'))
"""

from __future__ import annotations

import io
import logging
import zipfile
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .fastpredict import FastCalibrated, FastForest, FastRegressor, fast_predictor, fast_regressor, probe_rows
from .features.derive import FEATURE_FUNCTIONS
from .features.measure import RAW_COLUMNS

logger = logging.getLogger(__name__)

__all__ = ["FAST_FILE", "FAST_FORMAT", "FastPart", "FeatureStep", "fast_arrays", "read_fast_file", "write_fast_file"]

FAST_FILE = "predictor.npz"
FAST_FORMAT = "sorter-fast/1"
PARTS = ("classifier", "damage", "energy", "energy_upper")
PROBE_ROWS = 512  # rows straddling the thresholds, per part (the self-check of sorter.fastpredict)
RAW_PROBE_ROWS = 64  # raw measurement rows through the whole pipeline, per part


@dataclass(frozen=True)
class FeatureStep:
    """A pipeline's feature step as plain functions: each of :data:`~sorter.features.derive.FEATURE_FUNCTIONS`
    named in ``steps`` applied to its raw columns, the results side by side.  Equals the fitted
    ``ColumnTransformer``'s ``transform`` (checked when the file is written, and by the tests)
    without its per-call validation, which costs milliseconds on the line's one-row calls."""

    steps: tuple[tuple[str, np.ndarray], ...]

    def transform(self, raw: np.ndarray) -> np.ndarray:
        return np.hstack([FEATURE_FUNCTIONS[name](raw[:, cols]) for name, cols in self.steps])

    @classmethod
    def from_pipeline(cls, pipe: Any) -> "FeatureStep":
        """The feature step of a fitted ``Pipeline([("features", ColumnTransformer), (..., estimator)])``;
        ``ValueError`` for a feature step made of anything else."""
        if len(pipe.steps) != 2:
            raise ValueError(f"expected a pipeline of a feature step and an estimator, got {len(pipe.steps)} steps")
        steps = []
        for _, trans, cols in pipe.steps[0][1].transformers_:
            if isinstance(trans, str) and trans == "drop" or (isinstance(cols, list) and not cols):
                continue
            name = type(trans).__name__
            if name not in FEATURE_FUNCTIONS or type(trans).__module__ != "sorter.features.transformers":
                raise ValueError(f"feature step {name} has no plain function in sorter.features.derive")
            idx = np.asarray(cols)
            if idx.dtype.kind not in "iu":
                raise ValueError(f"feature step {name} selects its columns by {idx.dtype}, not by position")
            steps.append((name, idx.astype(np.intp)))
        return cls(tuple(steps))

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "steps": np.array([n for n, _ in self.steps]),
            "step_sizes": np.array([c.size for _, c in self.steps], dtype=np.int64),
            "step_cols": np.concatenate([c for _, c in self.steps]).astype(np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "FeatureStep":
        names = [str(n) for n in np.asarray(arrays["steps"]).ravel()]
        sizes = np.asarray(arrays["step_sizes"]).astype(np.int64).ravel()
        cols = np.asarray(arrays["step_cols"]).astype(np.int64).ravel()
        unknown = [n for n in names if n not in FEATURE_FUNCTIONS]
        if unknown:
            raise ValueError(f"unknown feature steps {unknown}")
        if len(sizes) != len(names) or sizes.sum() != cols.size or np.any(sizes < 1):
            raise ValueError("the feature steps' columns do not fit together")
        if cols.size and (cols.min() < 0 or cols.max() >= len(RAW_COLUMNS)):
            raise ValueError("a feature step names a raw column that does not exist")
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        return cls(tuple((n, cols[a:b].astype(np.intp)) for n, a, b in zip(names, bounds[:-1], bounds[1:])))


@dataclass(frozen=True)
class FastPart:
    """A classifier part: raw rows to probabilities through its feature step and fast predictor."""

    features: FeatureStep
    predictor: FastForest | FastCalibrated

    def predict_proba(self, raw: np.ndarray) -> np.ndarray:
        return self.predictor.predict_proba(self.features.transform(raw))


def raw_probe_rows(n: int = RAW_PROBE_ROWS, seed: int = 0) -> np.ndarray:
    """Random raw measurement rows for checking the feature wiring: positive values over six
    orders of magnitude, about one in ten missing, and one row with nothing measured."""
    rng = np.random.default_rng(seed)
    X = np.exp(rng.normal(2.0, 3.0, size=(n, len(RAW_COLUMNS))))
    X[rng.random(X.shape) < 0.1] = np.nan
    X[0] = np.nan
    return X


def _final(pipe: Any) -> Any:
    return pipe.steps[-1][1]


def fast_arrays(
    classifier: Any, damage: Any | None, energy_regressor: Any | None, seed: int = 0, energy_upper: Any | None = None
) -> dict[str, np.ndarray] | None:
    """The arrays of ``predictor.npz`` for fitted estimators, or ``None`` when a part is of a kind
    the fast path does not reproduce exactly (the model then loads through skops only).

    Every part is checked against scikit-learn before it is returned (:func:`~sorter.fastpredict.fast_predictor`),
    and the outputs scikit-learn gives on the probe rows are stored with it."""
    out: dict[str, np.ndarray] = {"format": np.array(FAST_FORMAT)}
    parts = []
    raw = raw_probe_rows(seed=seed)
    for part, pipe in (("classifier", classifier), ("damage", damage)):
        if pipe is None:
            continue
        fast = fast_predictor(_final(pipe))
        if fast is None:
            return None
        try:
            feats = FeatureStep.from_pipeline(pipe)
        except (ValueError, AttributeError) as err:
            logger.info("no fast predictor file: %s", err)
            return None
        want_feat = pipe[:-1].transform(raw)
        if not np.array_equal(feats.transform(raw), want_feat, equal_nan=True):
            logger.warning("the plain feature functions disagree with the %s pipeline's; no fast predictor file", part)
            return None
        forest = fast.forest if isinstance(fast, FastCalibrated) else fast
        X = probe_rows(forest, n=PROBE_ROWS, seed=seed)
        arrays = {
            **fast.to_arrays(),
            **feats.to_arrays(),
            "kind": np.array(type(fast).__name__),
            "probe_x": X,
            "probe_want": _final(pipe).predict_proba(X),
            "probe_raw": raw,
            "probe_raw_want": pipe.predict_proba(raw),
        }
        out.update({f"{part}.{k}": v for k, v in arrays.items()})
        parts.append(part)
    for part, reg in (("energy", energy_regressor), ("energy_upper", energy_upper)):
        if reg is None:
            continue
        fast_e = fast_regressor(reg)
        if fast_e is None:
            return None
        X = probe_rows(fast_e.forest, n=PROBE_ROWS, seed=seed)
        arrays = {
            **fast_e.to_arrays(),
            "kind": np.array("FastRegressor"),
            "probe_x": X,
            "probe_want": reg.predict(X),
        }
        out.update({f"{part}.{k}": v for k, v in arrays.items()})
        parts.append(part)
    out["parts"] = np.array(parts)
    return out


def write_fast_file(arrays: Mapping[str, np.ndarray]) -> bytes:
    """The ``.npz`` bytes of ``arrays``: stored (not compressed, for a fast load), members in
    sorted order with a fixed date, so the same arrays always give the same bytes (and hash)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arrays[key]), allow_pickle=False)
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


@dataclass(frozen=True)
class FastModel:
    """What :func:`read_fast_file` returns: the verified parts (``damage``/``energy``: ``None``
    when the file has none)."""

    classifier: FastPart
    damage: FastPart | None
    energy: FastRegressor | None
    energy_upper: FastRegressor | None = None  # the energy bound's quantile regressor


class ProbeMismatch(ValueError):
    """The file's predictors do not reproduce its stored probe outputs on this machine."""


def read_fast_file(data: bytes) -> FastModel:
    """Read and verify ``predictor.npz`` from its bytes (hash them first).

    Raises ``ValueError`` (or ``KeyError``) for a file that is not one this sorter wrote, and
    :class:`ProbeMismatch` when the predictors, run here, do not give the stored outputs
    to within :data:`PROBE_ATOL` (another numpy's arithmetic, a damaged file): the caller then
    uses the skops files.
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"not a readable .npz file ({err})") from err
    fmt = str(arrays.get("format", ""))
    if fmt != FAST_FORMAT:
        raise ValueError(f"format {fmt!r} is not {FAST_FORMAT!r}")
    parts = [str(p) for p in np.asarray(arrays["parts"]).ravel()]
    if "classifier" not in parts or not set(parts) <= set(PARTS):
        raise ValueError(f"parts {parts} are not a classifier and optional damage and energy parts")

    def sub(part: str) -> dict[str, np.ndarray]:
        pre = part + "."
        return {k[len(pre) :]: v for k, v in arrays.items() if k.startswith(pre)}

    def classifier_part(part: str) -> FastPart:
        a = sub(part)
        kind = str(a["kind"])
        if kind == "FastCalibrated":
            pred: FastForest | FastCalibrated = FastCalibrated.from_arrays(a)
        elif kind == "FastForest":
            pred = FastForest.from_arrays(a)
        else:
            raise ValueError(f"{part}: unknown predictor kind {kind!r}")
        fp = FastPart(FeatureStep.from_arrays(a), pred)
        forest = pred.forest if isinstance(pred, FastCalibrated) else pred
        width = fp.features.transform(np.full((1, len(RAW_COLUMNS)), np.nan)).shape[1]
        if width != forest.n_features:
            raise ValueError(f"{part}: the feature steps make {width} features, the trees read {forest.n_features}")
        _check(part, pred.predict_proba(np.asarray(a["probe_x"], dtype=np.float64)), a["probe_want"])
        _check(
            part + " (raw rows)", fp.predict_proba(np.asarray(a["probe_raw"], dtype=np.float64)), a["probe_raw_want"]
        )
        return fp

    def regressor_part(part: str) -> FastRegressor | None:
        if part not in parts:
            return None
        a = sub(part)
        if str(a["kind"]) != "FastRegressor":
            raise ValueError(f"{part}: unknown predictor kind {str(a['kind'])!r}")
        reg = FastRegressor.from_arrays(a)
        _check(part, reg.predict(np.asarray(a["probe_x"], dtype=np.float64)), a["probe_want"])
        return reg

    return FastModel(
        classifier_part("classifier"),
        classifier_part("damage") if "damage" in parts else None,
        regressor_part("energy"),
        regressor_part("energy_upper"),
    )


# How far the outputs on the stored probe rows may lie from the stored ones. The file is often
# read on another machine than the one that wrote it, and numpy's exp and log take the CPU's own
# vector instructions (AVX-512 on one, AVX2 on another), which differ in the last bit of some
# results: 1.1e-16 was seen between two x86-64 machines.  A wrong or damaged tree walk is off by
# a leaf value, many orders of magnitude more.  (On the machine that writes the file, the fast
# predictor must equal scikit-learn's exactly: sorter.fastpredict.fast_predictor.)
PROBE_ATOL = 1e-12


def _check(what: str, got: np.ndarray, want: np.ndarray) -> None:
    if got.shape != want.shape or not np.allclose(got, want, rtol=0.0, atol=PROBE_ATOL, equal_nan=True):
        diff = float(np.nanmax(np.abs(got - want))) if got.shape == want.shape else float("nan")
        raise ProbeMismatch(
            f"{what}: the fast predictor's outputs on the stored probe rows differ from "
            f"scikit-learn's (max |diff| {diff:.3g})"
        )
