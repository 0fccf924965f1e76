"""Line c against line a: the same physics, different numbers (issue 13).

``python -m benchmarks.linec_physics [--items 1200] [--seed 7] [--no-write]``

Simulates the balanced mix on line a and on line c (images in memory, no log written) and,
per product family, reports the medians over items of the mean attenuation A = -ln T of the
item's pixels in each channel, of the dual-energy ratio R = ln T_low / ln T_high (on pixels
where both channels read 0.01 < T < 0.95), of the item's median T_low, and the share of items
whose X-ray is mostly opaque (more than half the item's pixels below T_low = 0.005).
Writes the table into docs/simulator.md.
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from sorter.simulate import SimConfig, simulate_item

from ._report import write_section

U16 = 65535.0


def item_stats(xl: np.ndarray, xh: np.ndarray) -> dict[str, float] | None:
    tl, th = xl.astype(np.float64) / U16, xh.astype(np.float64) / U16
    occ = tl < 0.95
    if occ.sum() < 4:
        return None
    tl_o = np.clip(tl[occ], 1 / U16, 1.0)
    th_o = np.clip(th[occ], 1 / U16, 1.0)
    both = (tl_o > 0.01) & (th_o > 0.01) & (tl_o < 0.95) & (th_o < 0.95)
    r = float(np.median(np.log(tl_o[both]) / np.log(th_o[both]))) if both.sum() >= 4 else float("nan")
    return {
        "a_low": float(np.mean(-np.log(tl_o))),
        "a_high": float(np.mean(-np.log(th_o))),
        "r": r,
        "t_low": float(np.median(tl_o)),
        "opaque": float(np.mean(tl_o < 0.005) > 0.5),
    }


def collect(line: str, items: int, seed: int) -> dict[str, list[dict[str, float]]]:
    cfg = SimConfig(items=items, seed=seed, line=line, faults=0.0)
    out: dict[str, list[dict[str, float]]] = defaultdict(list)
    for i in range(items):
        s = simulate_item(cfg, i)
        if "xray_low" not in s.images or "xray_high" not in s.images:
            continue
        st = item_stats(s.images["xray_low"], s.images["xray_high"])
        if st is not None:
            out[s.record.extra["product_family"]].append(st)
    return out


def _med(rows: list[dict[str, float]], key: str) -> float:
    v = np.array([r[key] for r in rows], float)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else float("nan")


def _fmt(x: float, nd: int = 2) -> str:
    return "–" if not np.isfinite(x) else f"{x:.{nd}f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-write", action="store_true", help="do not update docs/simulator.md")
    args = ap.parse_args(argv)
    a = collect("a", args.items, args.seed)
    c = collect("c", args.items, args.seed)
    fams = sorted(set(a) | set(c))
    load = os.getloadavg()[0]
    lines = [
        "`python -m benchmarks.linec_physics` — balanced mix, "
        f"{args.items} items per line, seed {args.seed}. Medians over the items of a family: A = mean −ln T of "
        "the item's pixels (T clipped at 1/65535), R = ln T_low / ln T_high on pixels with 0.01 < T < 0.95 in both "
        "channels, the item's median T_low; 'opaque' = share of items with more than half their pixels below "
        "T_low = 0.005. Line a declares 53.1 / 96.2 keV, line c 61.6 / 100.8 keV.",
        "",
        "| family | items a / c | A_low a / c | A_high a / c | R a / c | median T_low a / c | opaque a / c |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in fams:
        ra, rc = a.get(f, []), c.get(f, [])

        def pair(key: str, nd: int = 2) -> str:
            return f"{_fmt(_med(ra, key), nd) if ra else '–'} / {_fmt(_med(rc, key), nd) if rc else '–'}"

        lines.append(
            f"| {f} | {len(ra)} / {len(rc)} | {pair('a_low')} | {pair('a_high')} | {pair('r')} | "
            f"{pair('t_low', 4)} | {pair('opaque')} |"
        )
    lines += ["", f"Load average at start: {load:.1f}."]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(
            "linec_physics", "## Physics check: line c against line a\n\n" + text, doc=Path("docs/simulator.md")
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
