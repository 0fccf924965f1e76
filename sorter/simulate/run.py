"""Draw an intake mix, simulate each item through the sensor bridge, write a log.

Every item gets its own random generator seeded from ``(seed, index)``, so a log is the
same for a seed whatever the number of worker processes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from ..catalog import Product, load_catalog
from ..errors import SimulationError
from ..readings import ItemRecord, LogMeta
from .intake import MAX_REDRAWS, MIXES, Mix, SimItem, hard_cases  # noqa: F401 - importable from here too
from .items import (
    CONTAMINANTS,
    PRODUCT_FAMILIES,
    Instance,
    _li_kind,
    build,
    build_contaminant,
    contaminant_family,
    product_family,
    unknown_product,
)
from .sensors import (
    LINES,
    apply_overrides,
    areal_density,
    outline,
    read_profiler,
    read_scale,
    read_thermal,
    render_rgb,
    render_xray,
)

logger = logging.getLogger(__name__)

SENSORS = ("scale", "profiler", "xray", "camera", "thermal")
# Line presets: "a" and "b" share one renderer (sensors.py); "c" has its own (linec.py).
ALL_LINES = ("a", "b", "c")


@dataclass(frozen=True)
class SimConfig:
    """What to simulate."""

    items: int = 1000
    seed: int = 0
    mix: str = "balanced"
    line: str = "a"
    faults: float = 0.002  # probability that each sensor drops out for an item (about 1 in 500)
    labelled: bool = True
    t0: float = 1_790_000_000.0
    rate_hz: float = 2.0  # mean items per second on the belt (sets timestamps)
    extra_catalogs: tuple[str, ...] = ()
    line_overrides: Mapping[str, Any] | tuple[tuple[str, Any], ...] = ()
    """Values replacing the line preset's (keys: the fields of ``LineProfile`` for lines a/b,
    of ``linec.LineCProfile`` for line c); numbers, tuples, or text like ``"1.05,0.97"``."""
    line_name: str | None = None  # the line name declared in meta.json (default sim-<line>[+key=value...])
    exclude_families: tuple[str, ...] = ()  # product families never drawn (leave-family-out)
    only_families: tuple[str, ...] = ()  # if set, only these product families are drawn
    # Share of Li-ion items damaged (swollen, dented, hot); None: the mix's own (5 % recycler, 8 %
    # balanced).  A calibration log for the hazard lane's energy bound wants many (sorter.energy).
    damaged_rate: float | None = None

    def __post_init__(self) -> None:
        if self.items < 0:
            raise SimulationError(f"--items must be >= 0, got {self.items}")
        if self.mix not in MIXES:
            raise SimulationError(f"unknown --mix {self.mix!r}; choose one of {sorted(MIXES)}")
        if self.line not in ALL_LINES:
            raise SimulationError(f"unknown --line {self.line!r}; choose one of {list(ALL_LINES)}")
        if not 0 <= self.faults <= 1:
            raise SimulationError(f"--faults is a probability in [0, 1], got {self.faults}")
        if self.damaged_rate is not None and not 0 <= self.damaged_rate <= 1:
            raise SimulationError(f"--damaged-rate is a share in [0, 1], got {self.damaged_rate}")
        ov = self.line_overrides
        items = sorted(ov.items()) if isinstance(ov, Mapping) else sorted(tuple(kv) for kv in ov)
        object.__setattr__(
            self, "line_overrides", tuple((str(k), v if not isinstance(v, list) else tuple(v)) for k, v in items)
        )
        for opt, fams in (("--exclude-family", self.exclude_families), ("--only-family", self.only_families)):
            if isinstance(fams, str):
                fams = (fams,)
            object.__setattr__(self, "exclude_families" if opt[2] == "e" else "only_families", tuple(fams))
            bad = [f for f in fams if f not in PRODUCT_FAMILIES]
            if bad:
                raise SimulationError(
                    f"{opt}: unknown product family {bad[0]!r}; valid families: " + ", ".join(PRODUCT_FAMILIES)
                )
        if self.line_name is not None and not str(self.line_name).strip():
            raise SimulationError("--line-name must not be empty")
        self.profile()  # refuse bad overrides now, not in a worker

    def profile(self):
        """The line's sensor profile with ``line_overrides`` applied."""
        if self.line == "c":
            from .linec import LINE_C

            return apply_overrides(LINE_C, dict(self.line_overrides))
        return apply_overrides(LINES[self.line], dict(self.line_overrides))

    def declared_line(self) -> str:
        """The line name written to meta.json."""
        if self.line_name:
            return str(self.line_name)
        return f"sim-{self.profile().name}"

    def damaged_li_rate(self) -> float:
        """The share of Li-ion items damaged: ``damaged_rate``, or the mix's own."""
        return MIXES[self.mix].damaged_li_rate if self.damaged_rate is None else float(self.damaged_rate)

    def family_allowed(self, family: str) -> bool:
        if self.only_families and family not in self.only_families:
            return False
        return family not in self.exclude_families

    def meta(self) -> LogMeta:
        line = self.profile()
        ch = line.channels().mean_energy()
        sim: dict[str, Any] = {"seed": self.seed, "mix": self.mix, "line": self.line, "faults": self.faults}
        if self.line_overrides:
            sim["line_overrides"] = {
                k: (list(getattr(line, k)) if isinstance(getattr(line, k), tuple) else getattr(line, k))
                for k, _ in self.line_overrides
            }
        if self.exclude_families:
            sim["exclude_families"] = list(self.exclude_families)
        if self.only_families:
            sim["only_families"] = list(self.only_families)
        if self.damaged_rate is not None:
            sim["damaged_rate"] = self.damaged_rate
        return LogMeta(
            line=self.declared_line(),
            xray_mm_per_px=float(line.xray_mm_per_px),
            xray_energies_kev=(round(ch[0], 1), round(ch[1], 1)),
            camera_mm_per_px=float(line.camera_mm_per_px),
            extra={"simulator": sim},
        )


class _Catalog:
    def __init__(self, products: list[Product]):
        self.lead = [p for p in products if p.family == "lead_acid"]
        self.other = [p for p in products if p.family == "other"]
        li = [p for p in products if p.family == "li_ion"]
        self.li: dict[str, list[Product]] = {}
        for p in li:
            k = _li_kind(p)
            k = {"cyl_cell": "cell", "pouch_cell": "cell", "prismatic_cell": "cell"}.get(k, k)
            self.li.setdefault(k, []).append(p)


_CATALOG_CACHE: dict[tuple[str, ...], _Catalog] = {}


def _catalog(extra: tuple[str, ...]) -> _Catalog:
    if extra not in _CATALOG_CACHE:
        _CATALOG_CACHE[extra] = _Catalog(load_catalog(extra))
    return _CATALOG_CACHE[extra]


def _choice(rng: np.random.Generator, shares: dict[str, float]) -> str:
    keys = list(shares)
    p = np.array([shares[k] for k in keys], float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _draw_product(cfg: SimConfig, rng: np.random.Generator) -> tuple[str, Any, bool]:
    """One draw from the intake, before anything is built: ``("product", Product, in_catalog)`` or
    ``("contaminant", kind, False)``, so a family filter can refuse it cheaply.  The generator is
    used in the same order as before the filter existed: logs without a filter are unchanged."""
    mix = MIXES[cfg.mix]
    cat = _catalog(cfg.extra_catalogs)
    fam = _choice(rng, mix.family)
    if fam == "lead_acid":
        if rng.random() < mix.unknown_rate:
            return "product", unknown_product("lead_acid", rng), False
        return "product", cat.lead[int(rng.integers(len(cat.lead)))], True
    if fam == "li_ion":
        kind = _choice(rng, mix.li_kinds)
        if kind == "unknown" or kind not in cat.li:
            return "product", unknown_product("li_ion", rng), False
        prods = cat.li[kind]
        return "product", prods[int(rng.integers(len(prods)))], True
    if _choice(rng, mix.other_kinds) == "battery" and cat.other:
        return "product", cat.other[int(rng.integers(len(cat.other)))], True
    return "contaminant", CONTAMINANTS[int(rng.integers(len(CONTAMINANTS)))], False


def _draw_instance(cfg: SimConfig, rng: np.random.Generator) -> Instance:
    for _ in range(MAX_REDRAWS):
        what, obj, in_cat = _draw_product(cfg, rng)
        family = product_family(obj) if what == "product" else contaminant_family(obj)
        if cfg.family_allowed(family):
            break
    else:
        raise SimulationError(
            f"no product family left to draw after {MAX_REDRAWS} tries: --only-family {list(cfg.only_families)} "
            f"--exclude-family {list(cfg.exclude_families)} leave nothing of mix {cfg.mix!r}; widen the filter"
        )
    if what == "contaminant":
        inst = build_contaminant(obj, rng)
    else:
        inst = build(obj, rng, in_catalog=in_cat)
        if inst.family == "li_ion" and rng.random() < cfg.damaged_li_rate():
            _damage(inst, rng)
    inst.extra["product_family"] = family
    return inst


def _damage(inst: Instance, rng: np.random.Generator) -> None:
    kind = str(rng.choice(["swollen", "dented", "hot"], p=[0.4, 0.35, 0.25]))
    inst.damage = kind
    if kind == "hot":
        inst.heat_c = float(rng.uniform(8, 60))
    elif kind == "swollen":
        inst.heat_c = float(rng.uniform(0, 6))
        L, W, H = inst.size_mm
        inst.size_mm = (L, W, H * float(rng.uniform(1.10, 1.35)))
    else:
        inst.heat_c = float(rng.uniform(0, 10))


def _pose(inst: Instance, rng: np.random.Generator) -> str:
    if inst.appearance.shape == "cylinder":
        return "end" if rng.random() < 0.12 else "upright"
    p = {"lead_acid": (0.75, 0.22, 0.03)}.get(inst.family, (0.6, 0.35, 0.05))
    return str(rng.choice(["upright", "side", "end"], p=p))


def _ambient(cfg: SimConfig, t: float) -> float:
    # slow daily swing plus a drift that depends on the seed (another day, another hall)
    base = 12.0 + (cfg.seed * 7919 % 13)
    return base + 4.0 * math.sin(2 * math.pi * (t - cfg.t0) / 86400.0) + 1.5 * math.sin((t - cfg.t0) / 1800.0)


def simulate_item(cfg: SimConfig, index: int) -> SimItem:
    """Simulate item ``index`` of a log (deterministic for ``(cfg.seed, index)``)."""
    if cfg.line == "c":
        from .linec import simulate_item_c

        return simulate_item_c(cfg, index)
    rng = np.random.default_rng([cfg.seed, index])
    line = cfg.profile()
    inst = _draw_instance(cfg, rng)
    pose = _pose(inst, rng)
    inst.pose = pose
    angle = float(rng.normal(0, 8)) if rng.random() < 0.5 else float(rng.uniform(-90, 90))
    size = inst.posed_size(pose)
    mass_g = inst.mass_g
    t = cfg.t0 + index / cfg.rate_hz + float(rng.uniform(0, 0.5 / cfg.rate_hz))
    ambient = _ambient(cfg, t)
    dropped = [s for s in SENSORS if rng.random() < cfg.faults]
    poly = outline(inst, size, rng)
    images: dict[str, np.ndarray] = {}
    xl = xh = None
    if "xray" not in dropped:
        sigma, mats = areal_density(inst, pose, angle, line.xray_mm_per_px, rng)
        xl, xh = render_xray(sigma, mats, line, rng)
        # one channel alone can fail too (a detector board)
        gone = rng.random()
        if gone >= cfg.faults / 4:
            images["xray_low"] = xl
        if gone >= cfg.faults / 4 or gone < cfg.faults / 8:
            images["xray_high"] = xh
    if "camera" not in dropped:
        images["rgb"] = render_rgb(inst, pose, size, angle, poly, line, rng)
    weight = read_scale(mass_g, line, rng) if "scale" not in dropped else None
    dims = read_profiler(poly, size[2], angle, line, rng) if "profiler" not in dropped else (None, None, None)
    temp = read_thermal(inst, ambient, line, rng) if "thermal" not in dropped else None
    extra: dict[str, Any] = {
        "product": inst.product,
        "chemistry_truth": inst.chemistry,
        "in_catalog": inst.in_catalog,
        "pose": pose,
        "angle_deg": round(angle, 1),
        "damaged": inst.damage is not None,
        "damage": inst.damage,
        "true_mass_g": round(mass_g, 1),
        "energy_wh": None if inst.energy_wh is None else round(inst.energy_wh, 1),
        "product_family": inst.extra["product_family"],
        "ambient_c": round(ambient, 2),
        "hard_cases": hard_cases(inst, xl, dropped, 20 * line.electronic_noise * 65535),
    }
    rec = ItemRecord(
        item_id=f"{index + 1:08d}",
        t=round(t, 3),
        weight_g=weight,
        length_mm=dims[0],
        width_mm=dims[1],
        height_mm=dims[2],
        surface_temp_c=temp,
        label=inst.family if cfg.labelled else None,
        extra=extra,
    )
    return SimItem(rec, images)


def _write_item(cfg: SimConfig, index: int, png_level: int, out_dir: str) -> tuple[ItemRecord, int]:
    """Simulate item ``index``, write its PNGs under ``out_dir/images``; return the record
    (image paths set) and the images' size in bytes.  Runs in the worker processes, so
    the images never travel between processes."""
    from ..logformat import encode_png

    item = simulate_item(cfg, index)
    paths: dict[str, str] = {}
    nbytes = 0
    for key, img in item.images.items():
        data = encode_png(img, png_level)
        rel = f"images/{item.record.item_id}_{key}.png"
        with open(os.path.join(out_dir, rel), "wb") as fh:
            fh.write(data)
        paths[key] = rel
        nbytes += len(data)
    return replace(item.record, **paths), nbytes


def _write_chunk(cfg: SimConfig, start: int, stop: int, png_level: int, out_dir: str) -> list[tuple[ItemRecord, int]]:
    from ..threads import single_threaded

    single_threaded()  # the processes are the parallelism: one OpenCV and one BLAS thread each
    return [_write_item(cfg, i, png_level, out_dir) for i in range(start, stop)]


def iter_written(
    cfg: SimConfig, out_dir: str, workers: int = 1, png_level: int = 1, chunk: int = 32
) -> Iterator[tuple[ItemRecord, int]]:
    """Simulate the items and write their images, in order, over ``workers`` processes;
    yield each record (image paths set) and its image bytes.  The caller appends the
    records to ``items.jsonl``: a line is written only after its images exist."""
    if workers <= 1:
        from threadpoolctl import threadpool_limits

        # one BLAS thread, as in the worker processes: a multi-threaded matrix product may sum
        # in another order, and a log must be the same whatever the number of workers
        with threadpool_limits(1):
            for i in range(cfg.items):
                yield _write_item(cfg, i, png_level, out_dir)
        return
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        starts = range(0, cfg.items, chunk)
        pending: list = []
        it = iter(starts)
        # keep a bounded number of chunks in flight so memory stays flat
        for s in it:
            pending.append(pool.submit(_write_chunk, cfg, s, min(s + chunk, cfg.items), png_level, out_dir))
            if len(pending) >= 2 * workers:
                break
        while pending:
            fut = pending.pop(0)
            yield from fut.result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(_write_chunk, cfg, nxt, min(nxt + chunk, cfg.items), png_level, out_dir))


@dataclass
class SimSummary:
    items: int = 0
    labels: Counter = field(default_factory=Counter)
    hard_cases: Counter = field(default_factory=Counter)
    poses: Counter = field(default_factory=Counter)
    products: Counter = field(default_factory=Counter)
    families: Counter = field(default_factory=Counter)
    bytes_written: int = 0
    seconds: float = 0.0

    def add(self, rec: ItemRecord, nbytes: int) -> None:
        self.items += 1
        self.labels[rec.extra.get("label_truth", rec.label) or "?"] += 1
        for tag in rec.extra.get("hard_cases", []):
            self.hard_cases[tag] += 1
        self.poses[rec.extra.get("pose", "?")] += 1
        self.products[rec.extra.get("product", "?")] += 1
        self.families[rec.extra.get("product_family", "?")] += 1
        self.bytes_written += nbytes

    def format(self) -> str:
        rate = self.items / self.seconds if self.seconds > 0 else float("nan")
        lines = [
            f"items: {self.items}  ({rate:.0f} items/s, {self.seconds:.1f} s)",
            "labels: " + ", ".join(f"{k}={v}" for k, v in sorted(self.labels.items())),
            "poses: " + ", ".join(f"{k}={v}" for k, v in sorted(self.poses.items())),
            f"distinct products: {len(self.products)}",
            "product families: " + ", ".join(f"{k}={v}" for k, v in sorted(self.families.items())),
            "hard cases: " + (", ".join(f"{k}={v}" for k, v in sorted(self.hard_cases.items())) or "none"),
            f"mean size per item: {self.bytes_written / max(1, self.items) / 1000:.1f} kB",
        ]
        return "\n".join(lines)


def simulate_log(
    cfg: SimConfig,
    out_dir: str | os.PathLike,
    *,
    workers: int = 1,
    png_level: int = 1,
    progress: bool = False,
    rotate_items: int | None = None,
) -> SimSummary:
    """Write a simulated ``sorter-log/1`` log to ``out_dir`` and return its summary.

    Examples
    --------
    >>> import tempfile
    >>> from sorter.simulate import SimConfig, simulate_log
    >>> with tempfile.TemporaryDirectory() as d:
    ...     s = simulate_log(SimConfig(items=5, seed=1), d)
    >>> s.items
    5
    """
    from ..logformat import INCOMPLETE_FILE, ITEMS_FILE, LogWriter, incomplete_note, layout

    out = Path(out_dir)
    single = (out / ITEMS_FILE).exists() and (out / ITEMS_FILE).stat().st_size > 0
    if single or layout(out) == "rotated":
        if incomplete_note(out) is not None:
            raise SimulationError(
                f"{out} holds an incomplete log (an earlier simulation was interrupted); "
                "delete it or pass --force to replace it, or choose another --out directory"
            )
        raise SimulationError(
            f"{out} already holds a log; pass --force to replace it, or choose an empty --out directory"
        )
    (out / "images").mkdir(parents=True, exist_ok=True)
    # Marks the log as unfinished until the last item is written: an interrupted run
    # leaves a log whose lines are all valid, and readers must be able to tell it ends early.
    (out / INCOMPLETE_FILE).write_text(
        f"sorter simulate was interrupted before writing all {cfg.items} items (seed {cfg.seed}); "
        "simulate again with --force to replace it\n",
        encoding="utf-8",
    )
    summary = SimSummary()
    t_start = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.items, unit="item", desc="simulate")
    with LogWriter(out, cfg.meta(), rotate_items=rotate_items) as writer:
        for rec, nbytes in iter_written(cfg, str(out), workers, png_level):
            written = writer.append(rec)
            nbytes += len(json.dumps(written.to_json(), separators=(",", ":"))) + 1
            summary.add(written, nbytes)
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    (out / INCOMPLETE_FILE).unlink()
    summary.seconds = time.perf_counter() - t_start
    return summary
