"""Candidate models: evaluated on the operators' labels, promoted through the line's model reload.

The safety table is the one that matters on this line: of the items the operators
labelled, how many of each true class each model would send to each lane.  A model
**fails** when any item labelled ``li_ion`` would go to the ``lead_acid`` lane (a fire),
or when the labels cannot show that (no Li-ion labelled yet, too few items).

Promotion never touches the running controller's memory: it points ``line.model``
(which must be a symbolic link) at a verified copy of the candidate with one atomic
``rename``, then asks the controller to reload (``SIGHUP`` to the pid in a pid file, or a
reload command such as ``systemctl reload sorter-line``).  The controller's own swap
(:meth:`sorter.line.controller.Controller.swap_model`) verifies the model again, warms it
and switches between two items; a model it refuses leaves the old one in charge.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from sorter.errors import ModelError, PromotionError

from .export import export_labels
from .linedata import LineLog
from .store import StationStore

logger = logging.getLogger(__name__)

__all__ = ["PromotionError", "SafetyTable", "evaluate_on_labels", "promote", "reload_controller"]

LANES: Final = ("lead_acid", "li_ion", "hazard", "manual")
CLASSES: Final = ("lead_acid", "li_ion", "other")
MIN_ITEMS: Final = 20


@dataclass
class SafetyTable:
    """One model's lanes for the operator-labelled items."""

    model: str
    model_dir: str
    items: int = 0
    table: dict[str, dict[str, int]] = field(default_factory=dict)  # true label -> lane -> count
    li_ion_in_lead_acid: int = 0
    non_lead_in_lead_acid: int = 0
    lead_acid_to_lead_acid: float | None = None
    manual_rate: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["passed"] = self.passed
        return d


def _table(model: Any, raw: np.ndarray, labels: np.ndarray, model_dir: str) -> SafetyTable:
    from sorter.policy import decide

    proba, p_dmg = model.predict(raw)
    lanes = [
        decide(proba[k], float(p_dmg[k]), raw[k], model.thresholds, model.classes).lane for k in range(len(labels))
    ]
    t = SafetyTable(model.model_id, model_dir, items=len(labels))
    for c in CLASSES:
        t.table[c] = {lane: 0 for lane in LANES}
    for y, lane in zip(labels, lanes):
        t.table[str(y)][lane] = t.table[str(y)].get(lane, 0) + 1
    t.li_ion_in_lead_acid = t.table["li_ion"]["lead_acid"]
    t.non_lead_in_lead_acid = t.table["li_ion"]["lead_acid"] + t.table["other"]["lead_acid"]
    n_lead = sum(t.table["lead_acid"].values())
    t.lead_acid_to_lead_acid = t.table["lead_acid"]["lead_acid"] / n_lead if n_lead else None
    t.manual_rate = sum(r["manual"] for r in t.table.values()) / len(labels) if len(labels) else None
    if t.li_ion_in_lead_acid:
        t.problems.append(f"{t.li_ion_in_lead_acid} Li-ion item(s) would go to the lead_acid lane")
    if sum(t.table["li_ion"].values()) == 0:
        t.problems.append("no item labelled li_ion yet: the table cannot show the model keeps Li-ion out of lead_acid")
    if len(labels) < MIN_ITEMS:
        t.problems.append(f"only {len(labels)} labelled items; at least {MIN_ITEMS} are needed")
    return t


def evaluate_on_labels(
    store: StationStore, log: LineLog, model_dirs: list[str | None], work_dir: str | Path | None = None
) -> list[SafetyTable]:
    """Safety tables of several models on the items the operators labelled (measured once).

    ``None`` in ``model_dirs`` is the shipped model.  A model that cannot be loaded gets a
    table with the reason in ``problems`` (it fails).
    """
    from sorter.batch import measure_logs
    from sorter.model import load_model

    with tempfile.TemporaryDirectory(prefix="station-eval-", dir=work_dir) as tmp:
        export_labels(store, log, Path(tmp) / "labels", link=True)
        m = measure_logs([Path(tmp) / "labels"], workers=0)  # in this process: no pool in a web server
    keep = m.ok & np.array([lab in CLASSES for lab in m.labels], dtype=bool)
    raw = m.raw[keep]
    labels = np.array([m.labels[i] for i in np.flatnonzero(keep)])
    out = []
    for d in model_dirs:
        try:
            model = load_model(d)
        except (ModelError, OSError) as err:
            t = SafetyTable(str(Path(d).name if d else "shipped"), str(d or ""))
            t.problems.append(f"cannot be loaded: {err}")
            out.append(t)
            continue
        out.append(_table(model, raw, labels, str(d or "")))
    return out


def list_candidates(candidates_dir: str | Path | None) -> list[Path]:
    """Model directories (with a manifest) directly under ``candidates_dir``."""
    if not candidates_dir:
        return []
    base = Path(candidates_dir)
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.is_dir() and (p / "manifest.json").is_file())


def resolve_candidate(candidates_dir: str | Path | None, name: str) -> Path:
    """The candidate called ``name``: a direct sub-directory of ``candidates_dir``, nothing else."""
    for p in list_candidates(candidates_dir):
        if p.name == name:
            return p
    raise PromotionError(f"no candidate model {name!r} in the candidates directory")


def promote(candidate: Path, target: str | Path) -> Path:
    """Point the line's model link ``target`` at a verified copy of ``candidate``, atomically.

    Returns the directory the link now points to.

    Raises
    ------
    PromotionError
        ``target`` is not a symbolic link (the controller would read a half-copied
        directory otherwise), or the candidate does not load.
    """
    from sorter.model import load_model

    if not target:
        raise PromotionError(
            "line.model is empty: the line runs the shipped model. To promote models, make line.model a symbolic "
            'link to a model directory, e.g. `ln -s model-2026-11 current-model` and line.model = "current-model"'
        )
    target = Path(target)
    if not target.is_symlink():
        raise PromotionError(
            f"line.model {target} is not a symbolic link, so it cannot be switched atomically; make it one: "
            f"`mv {target} {target}.v1 && ln -s {target.name}.v1 {target}` (then restart or reload the line)"
        )
    model = load_model(candidate)
    safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in model.model_id)
    manifest = (candidate / "manifest.json").read_bytes()
    # the manifest (thresholds included) is part of the name: same classifier, other policy = other model
    dest = target.parent / f"{target.name}.{safe_id}-{hashlib.sha256(manifest).hexdigest()[:8]}"
    if dest.exists() and (dest / "manifest.json").read_bytes() != manifest:
        raise PromotionError(f"{dest} exists with another manifest; move it aside")
    if not dest.exists():
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=target.parent))
        try:
            for f in candidate.iterdir():
                if f.is_file() and not f.is_symlink():
                    shutil.copyfile(f, staging / f.name)
            load_model(staging)  # the copy verifies (hashes) before anything points at it
            os.rename(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    load_model(dest)
    link_tmp = target.parent / f".{target.name}.link-{os.getpid()}"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    os.symlink(dest.name, link_tmp)
    os.replace(link_tmp, target)  # atomic: a reader sees the old model or the new one
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    logger.warning("line.model %s now points to %s (%s)", target, dest.name, model.model_id)
    return dest


def reload_controller(pidfile: str | None, command: str | None) -> str:
    """Ask the controller to reload its model (SIGHUP); returns what was done, for the page."""
    if pidfile:
        try:
            pid = int(Path(pidfile).read_text().strip())
        except (OSError, ValueError) as err:
            return f"could not read the controller's pid file {pidfile} ({err}); send SIGHUP to `sorter run` by hand"
        try:
            os.kill(pid, signal.SIGHUP)
        except OSError as err:
            return f"could not signal the controller (pid {pid}): {err}; send SIGHUP to `sorter run` by hand"
        return f"sent SIGHUP to the controller (pid {pid}); it verifies and swaps the model between two items"
    if command:
        try:
            res = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            return f"the reload command failed: {err}"
        if res.returncode != 0:
            return f"the reload command exited with {res.returncode}: {res.stderr.strip()[:300]}"
        return f"ran the reload command ({command})"
    return "no reload configured: send SIGHUP to `sorter run` (or restart it) to put the new model in charge"
