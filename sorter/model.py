"""The model: a fitted pipeline, a damage detector, policy thresholds, and a manifest.

A model directory holds ``classifier.skops`` (features + chemistry classifier, a scikit-learn
Pipeline), optionally ``damage.skops`` (the damaged-Li-ion detector), ``energy.skops`` (the
rated-energy regressor, :mod:`sorter.energy`) and ``predictor.npz`` (the fast predictor's arrays,
:mod:`sorter.fastmodel`: scoring loads without scikit-learn or skops); ``manifest.json`` (format
and library versions, feature names, classes, policy thresholds, a digest of the training data,
metrics, the sha256 of every file, and the model's applicability domain: the training line's
declared settings ``line_domain`` (:mod:`sorter.domain`), the class densities of the novelty
score ``novelty`` (:mod:`sorter.novelty`) and the line's measurement ``normalisation`` set by
``sorter calibrate``); and ``MODEL_CARD.md`` (optional, not loaded).

Files are written with skops, whose loader builds objects from a declared schema and runs no
code from the file.  Loading checks, in order: the manifest's format, every file's sha256, the
library versions, and that every type in a file is on the reviewed allow-list :data:`ALLOWED_TYPES`.
``load_model(dir, estimators=False)`` (the line, ``sorter score``) reads ``predictor.npz``
instead of the skops files when the directory has one: the same hash and version checks,
then the fast predictor's self-check on the file's probe rows; the skops files are hashed
but not loaded, and neither scikit-learn nor skops is imported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .domain import LineDomain
from .energy import EnergyModel
from .errors import ModelError, ModelIntegrityError
from .features.measure import MEASUREMENTS_VERSION, RAW_COLUMNS
from .novelty import NoveltyModel
from .policy import PolicyThresholds

logger = logging.getLogger(__name__)

MODEL_FORMAT = "sorter-model/1"
MANIFEST = "manifest.json"
CLASSIFIER_FILE = "classifier.skops"
DAMAGE_FILE = "damage.skops"
ENERGY_FILE = "energy.skops"
ENERGY_UPPER_FILE = "energy_upper.skops"  # the energy bound's quantile regressor (sorter.energy), optional
FAST_FILE = "predictor.npz"  # sorter.fastmodel.FAST_FILE (not imported here: see load_model)

# Reviewed allow-list: the types skops reports as "untrusted" by default in our
# pipelines, each checked to be a plain estimator or data holder whose construction
# from the file runs no code of the file's choosing.  A file naming any other type is
# refused.  Extend only after reviewing the new type.
ALLOWED_TYPES: frozenset[str] = frozenset(
    {
        "sklearn.calibration._CalibratedClassifier",
        "sklearn.calibration._SigmoidCalibration",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
        "sklearn._loss.loss.HalfMultinomialLoss",
        "sklearn._loss.loss.HalfBinomialLoss",
        "sklearn._loss.link.MultinomialLogit",
        "sklearn._loss.link.LogitLink",
        "sklearn._loss.link.Interval",
        # the feature steps: `sorter train --features material`'s, then the default's
        "sorter.features.transformers.MassShapeFeatures",
        "sorter.features.transformers.MaterialFeatures",
        "sorter.features.transformers.CameraFeatures",
        "sorter.features.transformers.CrossSensorFeatures",
        "sorter.features.transformers.ScaleProfilerFeatures",
        "sorter.features.transformers.ThermalFeatures",
        "sorter.features.transformers.XrayFeatures",
    }
)


_THREADPOOLS: Any = None


def _openmp_one_thread() -> Any:
    global _THREADPOOLS
    if _THREADPOOLS is None:
        from threadpoolctl import ThreadpoolController

        _THREADPOOLS = ThreadpoolController()
    return _THREADPOOLS.limit(limits=1, user_api="openmp")


# Below this many rows the fast predictors are used. They walk every tree to its full depth for
# every row, which beats scikit-learn's per-tree dispatch for the line's few rows (0.5 vs
# 2.4 ms for one row) but loses to its compiled per-row walk from about 48 rows on (16 vs
# 6.4 ms for 256). Both give the same probabilities (fast_predictor checks it).
FAST_PATH_MAX_ROWS = 48
FAST_BLOCK_ROWS = 1024  # rows per fast-path call when only the fast predictors are loaded
_RAW_INDEX = {c: i for i, c in enumerate(RAW_COLUMNS)}


def _final_step(pipe: Any) -> Any:
    return pipe.steps[-1][1]


def features_fast(pipe: Any, raw: np.ndarray) -> np.ndarray:
    """The pipeline's feature step on trusted raw rows, without per-call validation.

    Equivalent to ``pipe[:-1].transform(raw)`` (tested), but a ColumnTransformer validates
    and dispatches on every call, which costs milliseconds for the one-row calls of the
    line; here each sensor's function (:mod:`sorter.features.derive`) is applied to its
    columns directly (:class:`sorter.fastmodel.FeatureStep`).
    """
    from .fastmodel import FeatureStep

    return FeatureStep.from_pipeline(pipe).transform(raw)


def _version(dist: str, module: str) -> str:
    # The installed distribution's version, without importing it: importing skops imports all
    # of scikit-learn (about 2.5 s here), which the fast load avoids.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        import importlib

        return str(importlib.import_module(module).__version__)


def library_versions() -> dict[str, str]:
    """The versions the manifest records and :func:`load_model` compares."""
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": _version("scikit-learn", "sklearn"),
        "skops": _version("skops", "skops"),
    }


def _versions_compatible(saved: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    """Differences that make a model unsafe to load: scikit-learn must match exactly (models
    only load reliably under the version that saved them), numpy and skops by major version."""
    out = []
    if saved.get("scikit-learn") != now["scikit-learn"]:
        out.append(f"scikit-learn {saved.get('scikit-learn')} saved it, {now['scikit-learn']} is installed")
    for lib in ("numpy", "skops"):
        if str(saved.get(lib, "")).split(".")[0] != now[lib].split(".")[0]:
            out.append(f"{lib} {saved.get(lib)} saved it, {now[lib]} is installed")
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class SorterModel:
    """A trained model: chemistry pipeline, optional damage detector, policy thresholds."""

    classifier: Any  # Pipeline: raw measurements -> calibrated probabilities
    thresholds: PolicyThresholds
    classes: tuple[str, ...] = ("lead_acid", "li_ion", "other")
    damage: Any | None = None  # Pipeline: raw measurements -> P(damaged)
    manifest: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    novelty: NoveltyModel | None = None  # class densities for the novelty score
    domain: LineDomain | None = None  # the lines (declared settings) the model is valid for
    # Per raw column, (a, b): the column is read as a * value + b before anything else (sorter
    # calibrate maps a new line's measurements onto the training line's); empty: as measured.
    normalisation: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    energy: EnergyModel | None = None  # rated energy estimate and bound of likely Li-ion items
    # Verified fast predictors (sorter.fastmodel.FastPart) of the classifier and the damage
    # detector: built from the pipelines on first use, or read from predictor.npz by
    # load_model(estimators=False), which leaves classifier and damage None.
    _fast: tuple[Any, Any] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def model_id(self) -> str:
        """Short, stable identifier: the first 12 hex digits of the classifier file's hash."""
        files = self.manifest.get("files", {})
        digest = files.get(CLASSIFIER_FILE, "unsaved")
        return f"{self.manifest.get('name', 'model')}@{digest[:12]}"

    @property
    def has_estimators(self) -> bool:
        """Whether the scikit-learn pipelines are loaded (not so after ``load_model(estimators=False)``)."""
        return self.classifier is not None

    @property
    def has_damage(self) -> bool:
        """Whether the model has a damage detector (without one, P(damaged) is NaN)."""
        if self.classifier is not None:
            return self.damage is not None
        return self._fast is not None and self._fast[1] is not None

    def prepare(self) -> tuple[Any, Any]:
        """Build (once) the verified fast predictors (:class:`sorter.fastmodel.FastPart`).

        Either is ``None`` when the estimator is of a kind the fast path does not
        reproduce exactly; :meth:`predict` then uses scikit-learn's own path.
        """
        if self._fast is None:
            if self.classifier is None:
                raise ModelError("the model has neither its pipelines nor its fast predictors; load it with load_model")
            from .fastmodel import FastPart, FeatureStep
            from .fastpredict import fast_predictor

            def part(pipe: Any) -> Any:
                fast = fast_predictor(_final_step(pipe))
                if fast is None:
                    return None
                try:
                    return FastPart(FeatureStep.from_pipeline(pipe), fast)
                except ValueError as err:
                    logger.info("fast prediction unavailable: %s", err)
                    return None

            with _openmp_one_thread():
                clf = part(self.classifier)
                dmg = part(self.damage) if self.damage is not None else None
            self._fast = (clf, dmg)
        return self._fast

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        """``raw`` with the line's normalisation applied (``raw`` itself when there is none)."""
        if not self.normalisation:
            return raw
        out = np.array(raw, dtype=np.float64, copy=True)
        for col, (a, b) in self.normalisation.items():
            k = _RAW_INDEX[col]
            out[:, k] = a * out[:, k] + b
        return out

    def novelty_scores(self, raw: np.ndarray) -> np.ndarray:
        """Novelty of raw rows for each class, shape ``(n, 3)`` (NaN without a novelty model)."""
        raw = np.atleast_2d(raw)
        if self.novelty is None:
            return np.full((raw.shape[0], len(self.classes)), np.nan)
        return self.novelty.score(self.normalise(raw))

    def energy_wh(self, raw: np.ndarray, novelty_li: np.ndarray | None = None, hazard: np.ndarray | None = None):
        """Rated energy estimate and upper bound (Wh) of raw rows, as :mod:`sorter.energy`
        defines them; the physical bound where the item is unlike the training Li-ion items
        (``novelty_li`` above the energy model's threshold) or without an energy model.
        ``hazard``: bool per row, the item goes to the hazard lane."""
        raw = np.atleast_2d(raw)
        if self.energy is None:
            from .energy import physical_upper_wh

            upper = physical_upper_wh(raw[:, _RAW_INDEX["weight_g"]])
            return np.full(raw.shape[0], np.nan), upper
        fallback = None
        if novelty_li is not None:
            fallback = np.nan_to_num(novelty_li, nan=np.inf) > self.energy.novelty_max
        return self.energy.predict(self.normalise(raw), fallback, hazard)

    def predict(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities ``(n, 3)`` in :attr:`classes` order and P(damaged) ``(n,)``.

        ``raw`` is a 2-D float array of raw measurements (``RAW_COLUMNS``); pass a
        contiguous array (single rows are the line's hot path).  Fewer than
        :data:`FAST_PATH_MAX_ROWS` rows go through the fast predictors, that many or more
        through scikit-learn's own; the probabilities are the same.
        """
        raw = np.ascontiguousarray(raw, dtype=np.float64)
        if raw.ndim != 2 or raw.shape[1] != len(RAW_COLUMNS):
            raise ValueError(f"expected raw measurements of shape (n, {len(RAW_COLUMNS)}), got {raw.shape}")
        raw = self.normalise(raw)
        fast_clf, fast_dmg = self.prepare()
        has_damage = self.has_damage
        if (
            fast_clf is not None
            and (not has_damage or fast_dmg is not None)
            and (raw.shape[0] < FAST_PATH_MAX_ROWS or self.classifier is None)
        ):
            proba = np.empty((raw.shape[0], len(self.classes)))
            p_dmg = np.full(raw.shape[0], np.nan)
            # in blocks: the fast path holds a (rows x trees) array per tree level
            for a in range(0, raw.shape[0], FAST_BLOCK_ROWS):
                block = raw[a : a + FAST_BLOCK_ROWS]
                proba[a : a + FAST_BLOCK_ROWS] = fast_clf.predict_proba(block)
                if has_damage:
                    p_dmg[a : a + FAST_BLOCK_ROWS] = fast_dmg.predict_proba(block)[:, 1]
            return proba, p_dmg
        # One OpenMP thread: the trees are small, and parallel workers (or a busy line PC)
        # make OpenMP's spinning threads slow every call down by orders of magnitude.
        with _openmp_one_thread():
            proba = _final_step(self.classifier).predict_proba(features_fast(self.classifier, raw))
            if self.damage is not None:
                p_dmg = _final_step(self.damage).predict_proba(features_fast(self.damage, raw))[:, 1]
            else:
                p_dmg = np.full(raw.shape[0], np.nan)
        return proba, p_dmg


def save_model(
    model: SorterModel,
    out_dir: str | os.PathLike,
    *,
    name: str = "sorter",
    extra_manifest: Mapping[str, Any] | None = None,
    card: str | None = None,
) -> Path:
    """Write a model directory (skops files + manifest with hashes)."""
    import skops.io as sio

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sio.dump(model.classifier, out / CLASSIFIER_FILE)
    files = [CLASSIFIER_FILE]
    if model.damage is not None:
        sio.dump(model.damage, out / DAMAGE_FILE)
        files.append(DAMAGE_FILE)
    elif (out / DAMAGE_FILE).exists():
        (out / DAMAGE_FILE).unlink()
    e = model.energy
    for fname, est in ((ENERGY_FILE, e and e.regressor), (ENERGY_UPPER_FILE, e and e.upper_regressor)):
        if est is not None:
            sio.dump(est, out / fname)
            files.append(fname)
        elif (out / fname).exists():
            (out / fname).unlink()
    if _write_fast_file(out, model):
        files.append(FAST_FILE)
    manifest: dict[str, Any] = {
        "format": MODEL_FORMAT,
        "name": name,
        "classes": list(model.classes),
        "libraries": library_versions(),
        "policy": model.thresholds.to_json(),
    }
    if model.novelty is not None:
        manifest["novelty"] = model.novelty.to_json()
    if model.domain is not None:
        manifest["line_domain"] = model.domain.to_json()
    if model.normalisation:
        # a column calibration dropped maps to (0, NaN), written as (0, null): JSON has no NaN
        manifest["normalisation"] = {k: [a, None if math.isnan(b) else b] for k, (a, b) in model.normalisation.items()}
    if model.energy is not None:
        manifest["energy"] = model.energy.to_json()
    manifest.update(dict(extra_manifest or {}))
    manifest["files"] = {f: sha256_file(out / f) for f in files}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if card is not None:
        (out / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    model.manifest = manifest
    model.path = out
    return out


def inherited_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """What a model derived from another (calibrated, given a new energy bound) keeps of its base's
    manifest: all but the entries :func:`save_model` writes from the model itself."""
    own = ("files", "format", "name", "classes", "libraries", "policy", "novelty", "line_domain", "normalisation")
    return {k: v for k, v in manifest.items() if k not in own and k != "energy"}


def _write_fast_file(out: Path, model: SorterModel) -> bool:
    """Write ``out/predictor.npz`` from the model's estimators (:mod:`sorter.fastmodel`); remove a
    stale one and return False when the model is of a kind without a fast predictor."""
    from .fastmodel import write_fast_file

    arrays = _fast_arrays(model)
    path = out / FAST_FILE
    if arrays is None:
        logger.info("%s: no fast predictor file (a model of another kind); it loads through skops", out)
        if path.exists():
            path.unlink()
        return False
    _replace_bytes(path, write_fast_file(arrays))
    return True


def _fast_arrays(model: SorterModel) -> dict[str, np.ndarray] | None:
    from .fastmodel import fast_arrays

    e = model.energy
    with _openmp_one_thread():
        return fast_arrays(model.classifier, model.damage, e and e.regressor, energy_upper=e and e.upper_regressor)


def _replace_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` atomically: a temporary file beside it, fsync'ed, then renamed over it."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp's file is private (0600): give it the mode of the file it replaces, or a new file's
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def default_model_dir() -> Path:
    """The shipped model (``models/default`` in the source tree, ``sorter.models`` when installed)."""
    return Path(str(resources.files("sorter.models").joinpath("default")))


def load_model(model_dir: str | os.PathLike | None = None, *, estimators: bool = True) -> SorterModel:
    """Load and verify a model directory; ``None`` loads the shipped default model.

    Raises :class:`~sorter.errors.ModelIntegrityError` for a wrong format, a file whose
    hash does not match the manifest, other library versions, or a type outside the
    allow-list; the file's contents are never executed.

    ``estimators=False`` loads only what scoring needs: from ``predictor.npz`` when the
    directory has one (:mod:`sorter.fastmodel`; the model's ``classifier`` and ``damage`` are
    then ``None``, and neither scikit-learn nor skops is imported), else from the skops files.
    The checks are the same; if the file's predictors do not reproduce its stored probe
    outputs here, a warning says so and the skops files are loaded instead.

    Examples
    --------
    >>> from sorter.model import load_model
    >>> m = load_model()          # the shipped model
    >>> m.classes
    ('lead_acid', 'li_ion', 'other')
    """
    d = Path(model_dir) if model_dir is not None else default_model_dir()
    mpath = d / MANIFEST
    if not mpath.is_file():
        raise ModelError(f"{d}: no {MANIFEST}; pass the directory written by 'sorter train --out DIR'")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelIntegrityError(
            f"{mpath}: unreadable manifest ({err}); retrain or restore the model directory"
        ) from err
    if not isinstance(manifest, dict) or manifest.get("format") != MODEL_FORMAT:
        raise ModelIntegrityError(
            f"{mpath}: format {manifest.get('format') if isinstance(manifest, dict) else None!r} is not "
            f"{MODEL_FORMAT!r}; this sorter reads {MODEL_FORMAT} models only"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or CLASSIFIER_FILE not in files:
        raise ModelIntegrityError(f"{mpath}: the manifest lists no {CLASSIFIER_FILE}; the directory is incomplete")
    present = {p.name for p in d.iterdir() if p.suffix in (".skops", ".pkl", ".pickle", ".joblib", ".npz", ".npy")}
    unexpected = present - set(files)
    if unexpected:
        raise ModelIntegrityError(
            f"{d}: files not in the manifest: {sorted(unexpected)}; remove them (a model directory holds only "
            "what its manifest lists)"
        )
    fast_bytes = None
    for fname, digest in files.items():
        fpath = d / fname
        if not fpath.is_file():
            raise ModelIntegrityError(f"{fpath}: listed in the manifest but missing; restore the model directory")
        if fname == FAST_FILE:
            # hashed and read from the same bytes: the file cannot change between the check and the load
            fast_bytes = fpath.read_bytes()
            actual = hashlib.sha256(fast_bytes).hexdigest()
        else:
            actual = sha256_file(fpath)
        if actual != digest:
            raise ModelIntegrityError(
                f"{fpath}: sha256 {actual[:16]}… does not match the manifest's {str(digest)[:16]}…; the file was "
                "modified or replaced. Do not use it: restore the model from its release or retrain"
            )
    problems = _versions_compatible(manifest.get("libraries", {}), library_versions())
    if problems:
        raise ModelIntegrityError(
            f"{d}: made with other library versions ({'; '.join(problems)}); install the versions in "
            f"{MANIFEST} or retrain the model with 'sorter train'"
        )
    fast = None
    if not estimators and fast_bytes is not None:
        from .fastmodel import ProbeMismatch, read_fast_file

        try:
            fast = read_fast_file(fast_bytes)
        except ProbeMismatch as err:
            logger.warning(
                "%s: %s; loading the skops files instead (slower start). Regenerate the file with "
                "'sorter model upgrade %s' on this machine",
                d / FAST_FILE,
                err,
                d,
            )
        except (ValueError, KeyError, TypeError, IndexError) as err:
            raise ModelIntegrityError(
                f"{d / FAST_FILE}: not a fast predictor file this sorter can read ({err}); regenerate it with "
                f"'sorter model upgrade {d}'"
            ) from err
        if fast is not None and (
            (fast.damage is None) != (DAMAGE_FILE not in files)
            or (fast.energy is None) != (ENERGY_FILE not in files)
            or (fast.energy_upper is None) != (ENERGY_UPPER_FILE not in files)
        ):
            raise ModelIntegrityError(
                f"{d / FAST_FILE}: its parts do not match the manifest's files; regenerate it with "
                f"'sorter model upgrade {d}'"
            )

    def _load(fname: str) -> Any:
        import skops.io as sio

        fpath = d / fname
        try:
            untrusted = set(sio.get_untrusted_types(file=fpath))
        except Exception as err:  # noqa: BLE001 - any parse failure means: not a valid skops file
            raise ModelIntegrityError(f"{fpath}: not a valid skops file ({err}); retrain or restore it") from err
        bad = untrusted - ALLOWED_TYPES
        if bad:
            raise ModelIntegrityError(
                f"{fpath}: contains types outside the reviewed allow-list: {sorted(bad)}; refusing to load. "
                "If you added an estimator on purpose, review it and extend sorter.model.ALLOWED_TYPES"
            )
        try:
            return sio.load(fpath, trusted=sorted(untrusted))
        except Exception as err:  # noqa: BLE001
            raise ModelIntegrityError(f"{fpath}: failed to load ({err}); retrain or restore it") from err

    cols = manifest.get("raw_columns")
    if cols is not None and list(cols) != list(RAW_COLUMNS):
        missing = sorted(set(RAW_COLUMNS) ^ set(cols))
        raise ModelIntegrityError(
            f"{d}: the model was trained on other measurements than this sorter makes (differing columns: "
            f"{missing[:8]}{'…' if len(missing) > 8 else ''}); retrain it with 'sorter train'"
        )
    version = manifest.get("measurements", 1)
    if version != MEASUREMENTS_VERSION:
        raise ModelIntegrityError(
            f"{d}: the model was trained on measurements of version {version!r}; this sorter makes version "
            f"{MEASUREMENTS_VERSION} (their values differ); retrain it with 'sorter train' on the same logs"
        )
    if fast is None:
        classifier = _load(CLASSIFIER_FILE)
        damage = _load(DAMAGE_FILE) if DAMAGE_FILE in files else None
    else:
        classifier = damage = None
    try:
        thresholds = PolicyThresholds.from_json(manifest.get("policy", {}))
    except (TypeError, ValueError) as err:
        raise ModelIntegrityError(f"{mpath}: invalid policy thresholds ({err})") from err
    classes = tuple(manifest.get("classes", ()))
    if classes != ("lead_acid", "li_ion", "other"):
        raise ModelIntegrityError(f"{mpath}: classes {classes} are not ('lead_acid', 'li_ion', 'other')")
    try:
        novelty = NoveltyModel.from_json(manifest["novelty"]) if "novelty" in manifest else None
        domain = LineDomain.from_json(manifest["line_domain"]) if "line_domain" in manifest else None
        norm = manifest.get("normalisation", {})
        normalisation = {str(k): (float(v[0]), math.nan if v[1] is None else float(v[1])) for k, v in norm.items()}
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise ModelIntegrityError(
            f"{mpath}: invalid applicability domain ({err}); retrain or recalibrate the model"
        ) from err
    unknown = sorted(set(normalisation) - set(RAW_COLUMNS))
    if unknown:
        raise ModelIntegrityError(f"{mpath}: normalisation of unknown columns {unknown}; recalibrate the model")
    energy = None
    if ENERGY_FILE in files:
        try:
            up = ENERGY_UPPER_FILE in files
            reg, upper = (
                (fast.energy, fast.energy_upper) if fast else (_load(ENERGY_FILE), up and _load(ENERGY_UPPER_FILE))
            )
            energy = EnergyModel.from_json(manifest["energy"], reg, upper or None)
        except (KeyError, TypeError, ValueError) as err:
            raise ModelIntegrityError(f"{mpath}: invalid energy model ({err}); retrain the model") from err
    model = SorterModel(classifier, thresholds, classes, damage, manifest, d, novelty, domain, normalisation, energy)
    if fast is not None:
        model._fast = (fast.classifier, fast.damage)
    model.prepare()
    return model
