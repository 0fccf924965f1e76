"""Packing the hazard lane into 2.1 kWh cases (issue 15): cases used, fill, cases over the limit.

``python -m benchmarks.cases --scores FILE [FILE ...] [--lanes hazard]``
    Score files with the energy columns (``energy_wh``, ``energy_wh_upper``, from a model that
    estimates each item's energy): the lane's items are packed in belt order with the model's
    bound, and again with the mass bound alone. The truth (rated energy, nominal V x Ah) comes
    from the logs the scores name (the simulator writes ``energy_wh`` in each record).

``python -m benchmarks.cases --logs DIR [DIR ...]`` or ``--simulate 20000 --lines a,b --mix recycler``
    No energy model: every truth Li-ion item of the logs (or of fresh simulated logs; only their
    Li-ion items are rendered, the same items a full log of that seed holds) is packed with the
    *simulator's truth as the bound* (an oracle: the best any estimate can do) and with the mass
    bound alone. Labelled "truth-based" in the results.

The mass bound is the scale's weight x 0.30 Wh/g (no commercial Li-ion cell passes 300 Wh/kg:
the project's reference notes); an item without a weight reading is not packable with it.

Per run and bound: items offered, packed, not packable (a bound alone over the limit, or no
bound), cases used, the fewest cases the packed items' true energy could fill (sum / 2.1 kWh,
rounded up), mean fill (true rated energy / 2.1 kWh) over the cases closed full (the last case,
closed at the end of the input, is left out), cases whose TRUE rated energy exceeds 2.1 kWh
(must be 0), and the bound's coverage (share of items whose true energy is within their bound).
For score files also the estimate's median absolute error, overall and per product family.
Results replace the "cases" section of docs/performance.md (unless ``--no-doc``).

``--line-swap-s S[,S...]`` packs through **the line's code** instead of the plan: the controller's
case station (``sorter.line.casestation.CaseStation``) against the simulated PLC's case-station
program (``sorter.line.plc.casesim``), exchanging the block's registers as the line does, in the
items' belt time (the logs' timestamps, no wall clock): a case opens only when the PLC confirms one
at a position, a full case is swapped by the simulated operator in S seconds, and meanwhile an item
that fits no open case goes to the quarantine buffer (*no case ready*).  One row per ``--positions``
value and swap time, beside the plan's fill (``sorter pack``, a new case always ready); into the
"cases_line" section (score files) or "cases_line_truth" (truth-based).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from sorter.cases import PackItem, StationConfig, StationState
from sorter.cases.plan import read_scores
from sorter.logformat import iter_log

from ._report import write_section

SPECIFIC_WH_PER_G = 0.30


@dataclass(frozen=True)
class Truth:
    item_id: str
    energy_wh: float  # true rated energy of a Li-ion item; 0 for anything else
    li_ion: bool
    weight_g: float  # the scale's reading (NaN when missing)
    product: str
    family: str  # dropin / pack / cyl_cell / pouch_cell / prismatic_cell / module / unknown / not_li_ion
    damaged: bool
    t: float = math.nan  # the time the item passed the bridge (epoch s)


_KINDS: dict[str, str] | None = None


def product_family(product: str, in_catalog: bool) -> str:
    """The Li-ion product family of a catalogue product (the simulator's own grouping)."""
    global _KINDS
    if _KINDS is None:
        from sorter.catalog import load_catalog
        from sorter.simulate.items import _li_kind

        _KINDS = {p.name: _li_kind(p) for p in load_catalog() if p.family == "li_ion"}
    return _KINDS.get(product, "unknown") if in_catalog else "unknown"


def _truth_of(rec) -> Truth:
    e = rec.extra.get("energy_wh")
    li = rec.label == "li_ion" or str(rec.extra.get("chemistry_truth", "")).startswith("li_ion")
    prod = str(rec.extra.get("product", ""))
    return Truth(
        rec.item_id,
        float(e) if li and e is not None else 0.0,
        li,
        math.nan if rec.weight_g is None else float(rec.weight_g),
        prod,
        product_family(prod, bool(rec.extra.get("in_catalog", True))) if li else "not_li_ion",
        bool(rec.extra.get("damaged", False)),
        float(rec.t) if rec.t is not None else math.nan,
    )


def truth_from_log(log_dir: str) -> list[Truth]:
    return [_truth_of(ln.record) for ln in iter_log(log_dir) if ln.record is not None]


def _li_indices(args: tuple) -> list[int]:
    import numpy as np

    from sorter.simulate import SimConfig
    from sorter.simulate.run import _draw_instance

    items, seed, line, mix, lo, hi = args
    cfg = SimConfig(items=items, seed=seed, line=line, mix=mix)
    # the first draw from an item's generator picks the product (sorter.simulate.run.simulate_item)
    return [i for i in range(lo, hi) if _draw_instance(cfg, np.random.default_rng([seed, i])).family == "li_ion"]


def _simulate_records(args: tuple) -> list[Truth]:
    from sorter.simulate import SimConfig, simulate_item

    items, seed, line, mix, idx = args
    cfg = SimConfig(items=items, seed=seed, line=line, mix=mix)
    return [_truth_of(simulate_item(cfg, i).record) for i in idx]


def truth_simulated(items: int, seed: int, line: str, mix: str, workers: int) -> tuple[list[Truth], int]:
    """The Li-ion items of a fresh simulated log (belt order) and how many items the log holds."""
    step = 2000
    with ProcessPoolExecutor(workers) as pool:
        parts = pool.map(
            _li_indices, [(items, seed, line, mix, lo, min(lo + step, items)) for lo in range(0, items, step)]
        )
        li = [i for part in parts for i in part]
        chunks = [li[k : k + 40] for k in range(0, len(li), 40)]
        out = [t for part in pool.map(_simulate_records, [(items, seed, line, mix, c) for c in chunks]) for t in part]
    assert all(t.li_ion for t in out), "the pre-draw and the simulator disagree on an item's family"
    return out, items


# ------------------------------------------------------------------------------ packing


@dataclass
class Result:
    name: str
    offered: int
    packed: int
    not_packable: int
    cases: int
    fewest: int
    fill_mean: float
    fill_min: float
    over_limit: int
    max_case_true_wh: float
    coverage: float
    fills: tuple[float, ...] = ()  # each case closed full: true energy / limit


def pack(name: str, items: Sequence[tuple[Truth, float]], limit_wh: float, positions: int = 1) -> Result:
    """Pack (truth, bound) pairs in order with the packing core; measure against the truth."""
    state = StationState.new(StationConfig(limit_wh=limit_wh, auto_open=True, positions=positions))
    if positions != 1:
        name = f"{name}, {positions} positions"
    closed = []
    packed = refused = 0
    truth = {}
    for k, (t, bound) in enumerate(items):
        key = f"{k}:{t.item_id}"  # ids repeat across logs
        truth[key] = t
        r = state.offer(PackItem(key, bound, weight_g=t.weight_g), now=0.0)
        if r.closed is not None:
            closed.append(r.closed)
        state = r.state
        packed += r.kind == "assigned"
        refused += r.kind != "assigned"
    last = list(state.open_cases)  # open at the end of the input: left out of the fill
    true_wh = [math.fsum(truth[i.item_id].energy_wh for i in c.items) for c in closed + last]
    full = [w / limit_wh for w in true_wh[: len(closed)]]
    covered = [t.energy_wh <= b for t, b in items if math.isfinite(b)]
    total_true = math.fsum(truth[i.item_id].energy_wh for c in closed + last for i in c.items)
    return Result(
        name,
        len(items),
        packed,
        refused,
        len(true_wh),
        math.ceil(total_true / limit_wh - 1e-9),
        statistics.fmean(full) if full else math.nan,
        min(full) if full else math.nan,
        sum(w > limit_wh for w in true_wh),
        max(true_wh, default=0.0),
        sum(covered) / len(covered) if covered else math.nan,
        tuple(full),
    )


@dataclass
class LineResult:
    name: str
    positions: int
    swap_s: float
    refeed_s: float | None
    offered: int
    assigned: int
    not_packable: int
    no_case_ready: int  # times an item went to the buffer for want of a case (an item re-fed may count twice)
    left_in_buffer: int  # items in the buffer for want of a case at the end
    cases: int  # closed full
    fill_mean: float
    fill_min: float
    over_limit: int
    max_case_true_wh: float
    plan_fill: float  # the same items planned with `sorter pack --positions N` (a new case always ready)
    swaps: int
    fills: tuple[float, ...] = ()  # each case closed full: true energy / limit
    plan_fills: tuple[float, ...] = ()


def line_pack(
    name: str,
    items: Sequence[tuple[Truth, float]],
    limit_wh: float,
    positions: int,
    swap_s: float,
    refeed_s: float | None = None,
) -> LineResult:
    """Pack (truth, bound) pairs through the line's case station and the simulated PLC's block, in belt time.

    Per item, at its bridge time: the PLC scans (a swap asked for, a new case confirmed), the PC
    reads the PLC's words (opening or closing cases) and writes its own, the PLC scans again; then
    the item is offered (``CaseStation.offer``), sent to its position or the buffer, reaches the
    chute and is answered, and the registers are exchanged once more (a full case's swap starts).
    With ``refeed_s``, an item that went to the buffer for want of a case is put back on the belt
    ``refeed_s`` seconds later (the procedure of docs/cases.md: offered again once a case is ready)
    and offered again in belt order; not-packable items stay in the buffer.
    """
    import heapq

    from sorter.line.casestation import CaseStation
    from sorter.line.config import CasesSection
    from sorter.line.plc.casesim import CaseStationProgram
    from sorter.line.plc.protocol import CaseBlockMap

    block = CaseBlockMap(positions=positions)
    station = CaseStation(CasesSection(enabled=True, limit_wh=limit_wh, positions=positions), "bench")
    prog = CaseStationProgram(swap_s=swap_s, ready_at_start=True, positions=positions)

    def exchange(now: float) -> None:
        for _ in range(2):
            prog.scan(block.encode_pc(station.pc_words()), now)
            station.on_plc(block.decode_plc(prog.outputs()), now)
        prog.scan(block.encode_pc(station.pc_words()), now)

    truth: dict[str, Truth] = {}
    closed = []
    kinds = {"assigned": 0, "not_packable": 0, "no_case_ready": 0}
    belt: list[tuple[float, int, int]] = []  # (time, order, item index): the belt, re-fed items merged in
    last_t = -math.inf
    for k, (t, _bound) in enumerate(items):
        last_t = max(t.t if math.isfinite(t.t) else float(k), last_t)  # logs of several files: never back
        belt.append((last_t, k, k))
    order = len(items)
    buffered: set[int] = set()
    while belt:
        now, _, k = heapq.heappop(belt)
        t, bound = items[k]
        exchange(now)
        key = f"{k}:{t.item_id}"
        truth[key] = t
        r, _events = station.offer(PackItem(key, bound, weight_g=t.weight_g, t=now), now)
        kinds[r.kind] += 1
        buffered.discard(k)
        if r.closed is not None:
            closed.append(r.closed)
        if r.kind == "assigned":
            p = station.position_of(r.case_id)
            assert p is not None
            prog.accept_into_case(p)
            prog.arrive(k, into_case=p, now=now)
            station.answered(r.case_id)
        else:
            prog.arrive(k, into_case=False, now=now)
            if r.kind == "no_case_ready":
                buffered.add(k)
                if refeed_s is not None:
                    heapq.heappush(belt, (now + refeed_s, order, k))
                    order += 1
        exchange(now)
    assert prog.buffered == 0, "an item decided into a case found none in place"
    true_wh = [math.fsum(truth[i.item_id].energy_wh for i in c.items) for c in closed + list(station.state.open_cases)]
    full = [w / limit_wh for w in true_wh[: len(closed)]]
    plan = pack("plan", items, limit_wh, positions)
    return LineResult(
        name,
        positions,
        swap_s,
        refeed_s,
        len(items),
        kinds["assigned"],
        kinds["not_packable"],
        kinds["no_case_ready"],
        len(buffered),
        len(closed),
        statistics.fmean(full) if full else math.nan,
        min(full) if full else math.nan,
        sum(w > limit_wh for w in true_wh),
        max(true_wh, default=0.0),
        plan.fill_mean,
        prog.swaps,
        tuple(full),
        plan.fills,
    )


def _pool(results: Sequence[LineResult]) -> LineResult:
    """Several runs' cases as one sample (the counts summed, the fill over every case closed full)."""
    fills = [f for r in results for f in r.fills]
    plan = [f for r in results for f in r.plan_fills]
    r0 = results[0]
    return LineResult(
        r0.name,
        r0.positions,
        r0.swap_s,
        r0.refeed_s,
        *(sum(getattr(r, k) for r in results) for k in ("offered", "assigned", "not_packable", "no_case_ready")),
        sum(r.left_in_buffer for r in results),
        sum(r.cases for r in results),
        statistics.fmean(fills) if fills else math.nan,
        min(fills, default=math.nan),
        sum(r.over_limit for r in results),
        max(r.max_case_true_wh for r in results),
        statistics.fmean(plan) if plan else math.nan,
        sum(r.swaps for r in results),
        tuple(fills),
        tuple(plan),
    )


LINE_HEADER = (
    "| run | bound | case positions | swap time | buffer re-fed | items | into a case | not packable | "
    "to the buffer for want of a case (times) | left in the buffer | cases closed full | mean fill (true / limit) | "
    "lowest fill | largest case, true Wh | cases over the limit (true) | plan's mean fill (`sorter pack`) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def _line_row(run: str, r: LineResult) -> str:
    refeed = "no" if r.refeed_s is None else f"after {r.refeed_s:g} s"
    return (
        f"| {run} | {r.name} | {r.positions} | {r.swap_s:g} s | {refeed} | {r.offered} | {r.assigned} | "
        f"{r.not_packable} | {r.no_case_ready} | {r.left_in_buffer} | {r.cases} | {100 * r.fill_mean:.1f} % | "
        f"{100 * r.fill_min:.1f} % | {r.max_case_true_wh:.0f} | **{r.over_limit}** | {100 * r.plan_fill:.1f} % |"
    )


def mass_bound(t: Truth, specific: float) -> float:
    return t.weight_g * specific if math.isfinite(t.weight_g) else math.nan


# ------------------------------------------------------------------------------ report


def _row(run: str, r: Result) -> str:
    return (
        f"| {run} | {r.name} | {r.offered} | {r.packed} | {r.not_packable} | {r.cases} | {r.fewest} | "
        f"{100 * r.fill_mean:.1f} % | {100 * r.fill_min:.1f} % | {r.max_case_true_wh:.0f} | **{r.over_limit}** | "
        f"{100 * r.coverage:.2f} % |"
    )


HEADER = (
    "| run | bound | items | packed | not packable | cases | fewest possible | mean fill (true / limit) | "
    "lowest fill | largest case, true Wh | cases over the limit (true) | bound coverage |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def looseness(name: str, items: Sequence[tuple[Truth, float, float]], limit: float) -> str:
    """Where the fill goes: per product family, the summed bound over the summed true energy of
    the Li-ion items the bound lets into a case (bound within the limit)."""
    fam: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for t, b, _ in items:
        if t.li_ion and math.isfinite(b) and b <= limit:
            f = fam[t.family]
            f[0] += 1
            f[1] += b
            f[2] += t.energy_wh
    tot_b = math.fsum(v[1] for v in fam.values())
    tot_t = math.fsum(v[2] for v in fam.values())
    parts = [
        f"{k} {v[1] / v[2]:.2f} (n={v[0]}, {v[2]:.0f} Wh true)"
        for k, v in sorted(fam.items(), key=lambda kv: -kv[1][2])
        if v[2] > 0
    ]
    return (
        f"{name}: summed bound / summed true energy of the packable Li-ion items {tot_b / tot_t:.2f} "
        f"({tot_b / limit:.1f} cases of bound for {tot_t / limit:.1f} of true energy); per family: " + ", ".join(parts)
    )


def run_scores(
    files: Iterable[str],
    lanes: set[str],
    limit: float,
    specific: float,
    positions: Sequence[int] = (1,),
    line_swaps: Sequence[float] = (),
    refeeds: Sequence[float | None] = (None,),
) -> tuple[list[str], list[str]]:
    rows, notes = [], []
    pooled: dict[tuple[int, float, float | None], list[LineResult]] = defaultdict(list)
    for f in files:
        table = read_scores(f)
        logs: dict[str, dict[str, Truth]] = {}
        items: list[tuple[Truth, float, float]] = []
        missing = 0
        cols = {c: table.column(c).to_pylist() for c in ("log", "item_id", "lane", "energy_wh", "energy_wh_upper")}
        for k, lane in enumerate(cols["lane"]):
            if lane not in lanes or cols["item_id"][k] is None:
                continue
            d = cols["log"][k]
            if d not in logs:
                logs[d] = {t.item_id: t for t in truth_from_log(d)} if (Path(d) / "items.jsonl").is_file() else {}
            t = logs[d].get(cols["item_id"][k])
            if t is None:
                missing += 1
                continue
            up = cols["energy_wh_upper"][k]
            est = cols["energy_wh"][k]
            items.append((t, math.nan if up is None else float(up), math.nan if est is None else float(est)))
        name = Path(f).name
        if line_swaps:  # the line's code, not the plan
            for n in positions:
                for swap in line_swaps:
                    for refeed in refeeds:
                        bounds = [(t, b) for t, b, _ in items]
                        r = line_pack("model (energy_wh_upper)", bounds, limit, n, swap, refeed)
                        rows.append(_line_row(name, r))
                        pooled[(n, swap, refeed)].append(r)
            span = [t.t for t, _, _ in items if math.isfinite(t.t)]
            if span:
                notes.append(
                    f"{name}: {len(items)} items of the lanes over {(max(span) - min(span)) / 3600:.2f} h of belt "
                    f"time (one every {(max(span) - min(span)) / max(1, len(items) - 1):.0f} s on average)"
                )
            continue
        for n in positions:
            rows.append(_row(name, pack("model (energy_wh_upper)", [(t, b) for t, b, _ in items], limit, n)))
        for n in positions:
            mass = [(t, mass_bound(t, specific)) for t, _, _ in items]
            rows.append(_row(name, pack(f"mass x {specific:.2f} Wh/g", mass, limit, n)))
        if any(t.li_ion for t, _, _ in items):
            notes.append(looseness(name, items, limit))
        note = mass_bound_misses(name, [t for t, _, _ in items], specific)
        if note:
            notes.append(note)
        err = defaultdict(list)
        for t, _, e in items:
            if t.li_ion and math.isfinite(e):
                err["all Li-ion"].append(abs(e - t.energy_wh))
                err[t.family].append(abs(e - t.energy_wh))
        notes.append(
            f"{name}: estimate median absolute error "
            + ", ".join(
                f"{k} {statistics.median(v):.1f} Wh (n={len(v)})"
                for k, v in sorted(err.items(), key=lambda kv: -len(kv[1]))
            )
            + (f"; {missing} item(s) without a log record left out" if missing else "")
            + f"; {sum(not t.li_ion for t, _, _ in items)} item(s) in the lanes are not Li-ion (true energy 0)"
        )
    if pooled and len(next(iter(pooled.values()))) > 1:  # several files: their cases together
        for v in pooled.values():
            rows.append(_line_row("all files", _pool(v)))
    return rows, notes


def mass_bound_misses(name: str, items: Iterable[Truth], specific: float) -> str | None:
    """A note naming the items whose true energy exceeds the mass bound (weight read low)."""
    miss = [t for t in items if t.li_ion and math.isfinite(t.weight_g) and t.energy_wh > t.weight_g * specific]
    if not miss:
        return None
    by = defaultdict(list)
    for t in miss:
        by[t.product].append(t.energy_wh / t.weight_g)
    return f"{name}: the mass bound is below the true energy for {len(miss)} item(s): " + "; ".join(
        f"{p} ×{len(v)} (true Wh / weight read up to {max(v):.3f} Wh/g)" for p, v in by.items()
    )


def run_truth(
    named: Iterable[tuple[str, list[Truth], int]],
    limit: float,
    specific: float,
    damaged_only: bool,
    positions: Sequence[int] = (1,),
    line_swaps: Sequence[float] = (),
    refeeds: Sequence[float | None] = (None,),
) -> tuple[list[str], list[str]]:
    rows, notes = [], []
    for name, truths, n_items in named:
        li = [t for t in truths if t.li_ion and (t.damaged or not damaged_only)]
        run = f"{name} ({n_items} items, {len(li)} Li-ion), truth-based"
        if line_swaps:  # the line's code, not the plan
            for n in positions:
                for swap in line_swaps:
                    for refeed in refeeds:
                        oracle = [(t, t.energy_wh) for t in li]
                        r = line_pack("simulator truth (oracle)", oracle, limit, n, swap, refeed)
                        rows.append(_line_row(run, r))
            continue
        for n in positions:
            rows.append(_row(run, pack("simulator truth (oracle)", [(t, t.energy_wh) for t in li], limit, n)))
        for n in positions:
            mass = [(t, mass_bound(t, specific)) for t in li]
            rows.append(_row(run, pack(f"mass x {specific:.2f} Wh/g", mass, limit, n)))
        note = mass_bound_misses(name, li, specific)
        if note:
            notes.append(note)
    return rows, notes


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.cases", description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--scores", nargs="+", help="score files with energy_wh and energy_wh_upper")
    src.add_argument("--logs", nargs="+", help="labelled simulated logs (truth-based run)")
    src.add_argument("--simulate", type=int, help="simulate fresh logs of this many items (truth-based run)")
    ap.add_argument("--lines", default="a,b", help="lines to simulate (default a,b)")
    ap.add_argument("--mix", default="recycler", help="intake mix to simulate (default recycler)")
    ap.add_argument("--seed", type=int, default=15_001, help="seed of the first simulated log (default 15001)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--lanes", default="hazard", help="lanes packed from score files (default hazard)")
    ap.add_argument("--damaged-only", action="store_true", help="truth-based: pack only the damaged Li-ion items")
    ap.add_argument("--limit-wh", type=float, default=2100.0)
    ap.add_argument("--specific-wh-per-g", type=float, default=SPECIFIC_WH_PER_G)
    ap.add_argument(
        "--positions",
        default="1",
        help="case positions at the station, comma-separated: a row per value (default 1; e.g. 1,3)",
    )
    ap.add_argument(
        "--section",
        default=None,
        help="docs/performance.md section to write (default: cases)",
    )
    ap.add_argument(
        "--line-swap-s",
        default="",
        help="pack through the line's case station and the simulated PLC instead of the plan, the operator "
        "swapping a full case in this many seconds (comma-separated: a row per value, e.g. 60,300)",
    )
    ap.add_argument(
        "--line-refeed-s",
        type=float,
        default=None,
        help="with --line-swap-s: also rows where an item buffered for want of a case is put back on the belt "
        "this many seconds later (docs/cases.md: offered again once a case is ready)",
    )
    ap.add_argument("--no-doc", action="store_true", help="print only; leave docs/performance.md alone")
    args = ap.parse_args(argv)
    try:
        swaps = [float(x) for x in args.line_swap_s.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--line-swap-s {args.line_swap_s!r}: expected seconds separated by commas, e.g. 60,300")
    if any(not (math.isfinite(x) and x >= 0) for x in swaps):
        ap.error(f"--line-swap-s {args.line_swap_s!r}: each must be a number of seconds >= 0")
    try:
        positions = [int(x) for x in args.positions.split(",")]
    except ValueError:
        ap.error(f"--positions {args.positions!r}: expected whole numbers separated by commas, e.g. 1,3")
    if args.line_refeed_s is not None and not (swaps and math.isfinite(args.line_refeed_s) and args.line_refeed_s >= 0):
        ap.error("--line-refeed-s needs --line-swap-s and a number of seconds >= 0")
    refeeds: list[float | None] = [None] if args.line_refeed_s is None else [None, args.line_refeed_s]
    top = 8 if swaps else 16  # the line's PLC block has up to 8 positions
    if any(not 1 <= n <= top for n in positions):
        ap.error(f"--positions {args.positions!r}: each must be 1 to {top}" + (" with --line-swap-s" if swaps else ""))
    pos_arg = (
        ("" if positions == [1] else f" --positions {args.positions}")
        + (f" --line-swap-s {args.line_swap_s}" if swaps else "")
        + (f" --line-refeed-s {args.line_refeed_s:g}" if args.line_refeed_s is not None else "")
    )

    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    notes: list[str] = []
    if args.scores:
        rows, notes = run_scores(
            args.scores, set(args.lanes.split(",")), args.limit_wh, args.specific_wh_per_g, positions, swaps, refeeds
        )
        how = (
            f"`python -m benchmarks.cases --scores {' '.join(Path(f).name for f in args.scores)} --lanes {args.lanes}"
            f"{pos_arg}`"
        )
    elif args.logs:
        named = [(Path(d).name, truth_from_log(d), sum(1 for _ in iter_log(d))) for d in args.logs]
        rows, notes = run_truth(
            named, args.limit_wh, args.specific_wh_per_g, args.damaged_only, positions, swaps, refeeds
        )
        how = f"`python -m benchmarks.cases --logs {' '.join(Path(d).name for d in args.logs)}{pos_arg}`"
    else:
        named = []
        for k, line in enumerate(args.lines.split(",")):
            seed = args.seed + k
            truths, n = truth_simulated(args.simulate, seed, line, args.mix, args.workers)
            named.append((f"line {line}, {args.mix}, seed {seed}", truths, n))
        rows, notes = run_truth(
            named, args.limit_wh, args.specific_wh_per_g, args.damaged_only, positions, swaps, refeeds
        )
        how = (
            f"`python -m benchmarks.cases --simulate {args.simulate} --lines {args.lines} --mix {args.mix} "
            f"--seed {args.seed}" + (" --damaged-only" if args.damaged_only else "") + pos_arg + "`"
        )
    secs = time.perf_counter() - t0
    table = "\n".join([LINE_HEADER if swaps else HEADER, *rows])
    print(table)
    for n in notes:
        print(n)
    if swaps and not args.no_doc:
        what = f"the model's energy bound, lanes {args.lanes}" if args.scores else "truth-based (no energy model)"
        default = "cases_line" + ("" if args.lanes == "hazard" else "_" + args.lanes.replace(",", "_"))
        key = args.section or (default if args.scores else "cases_line_truth")
        write_section(key, _line_doc(how, what, args.limit_wh, table, notes, secs, load))
    elif not args.no_doc:
        md = (
            f"## Safe cases: packing the hazard lane (issue 15)\n\n{how} — {args.limit_wh:g} Wh per case. "
            "Items in belt order through the packing core (`sorter.cases.packing`); a case closes when the next "
            "item's bound would take its summed bound over the limit. *Fill* is the case's true rated energy "
            "(nominal V × Ah) over the limit, for the cases closed full (the last case, closed at the end of the "
            "input, is left out); *fewest possible* is the packed items' true energy / limit, rounded up; "
            "*coverage* the share of items whose true energy is within their bound. A *truth-based* run has no "
            "energy model: the simulator's truth is the bound (an oracle, the best any estimate can reach), "
            "beside the mass bound alone (the scale's weight × "
            f"{args.specific_wh_per_g:.2f} Wh/g, the highest specific energy of commercial Li-ion cells). With one "
            "position items stay in belt order (a case is not held open for a later item that would fit), so the fill "
            "stays below what *fewest possible* implies; with *N positions* the station keeps N cases open side by side "
            "(`sorter pack --positions N`; each item into the fullest it fits, the fullest closing when an item fits "
            "none; the line's station has one). An item the bound makes not packable goes to the quarantine buffer "
            "(`docs/cases.md`), so the two bounds pack different items.\n\n"
            f"{table}\n\n"
            + "".join(f"- {n}\n" for n in notes)
            + f"\nRun time {secs:.0f} s; load average {load:.1f} at the start on {os.cpu_count()} cores "
            f"(`uname -m`: {os.uname().machine}), shared with other work."
        )
        write_section(args.section or "cases", md)
    return 0


def _line_doc(how: str, what: str, limit_wh: float, table: str, notes: Sequence[str], secs: float, load: float) -> str:
    return (
        f"## Safe cases on the line: case positions and swaps, {what} (issue 15)\n\n"
        f"{how} — {limit_wh:g} Wh per case. The items of the lane in belt order through **the line's code**: "
        "the controller's case station (`sorter.line.casestation.CaseStation`, the packing core with "
        "`[cases] positions = N`) against the simulated PLC's case-station program (`sorter.line.plc.casesim`, "
        "block version 1 for one position, 2 for several), exchanging the block's registers as the line does, "
        "in the items' belt time (the logs' timestamps; no wall clock, no timing). A case opens only once the PLC "
        "confirms one at a position; each case the PC closes full is swapped by the simulated operator in the "
        "*swap time*, and meanwhile an item that fits no open case goes to the quarantine buffer (*no case "
        "ready*; with several positions, only when no position is free of an open case does the fullest close). "
        "The item whose bound closes a case goes to the buffer too: on the line the next case takes items only "
        "once the PLC confirms it, even with a swap time of 0. *Buffer re-fed*: the documented procedure "
        "(`docs/cases.md`, the safe place) — an item buffered for want of a case is put back on the belt that many "
        "seconds later and offered again in belt order (it may be buffered again; every time counts in *to the "
        "buffer*); *no*: it stays in the buffer (*left in the buffer*). *Fill* is the true rated energy "
        "(nominal V × Ah) of the cases closed full over the limit (the cases still open at the end are left out); "
        "the last column is the same items planned by `sorter pack --positions N` (a new case always ready at once, "
        "no buffer), the figure of the sections above.\n\n"
        f"{table}\n\n"
        + "".join(f"- {n}\n" for n in notes)
        + f"\nRun time {secs:.0f} s; load average {load:.1f} at the start on {os.cpu_count()} cores "
        f"(`uname -m`: {os.uname().machine}), shared with other work."
    )


if __name__ == "__main__":
    raise SystemExit(main())
