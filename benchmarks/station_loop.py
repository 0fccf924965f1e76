"""The station's loop on the simulator: verdicts on a shifted line -> export -> retrain -> safety table.

    python -m benchmarks.station_loop [--items 1200] [--spot-check 0.25] [--test-items 600] [--seed 11]

1. A line whose sensors differ from the shipped model's training line (simulator preset
   ``b``): ``--items`` simulated items scored by the shipped model, with their audit log
   (``sorter.station.sample``).
2. The station's queue: every item that went to manual, and a ``--spot-check`` sample of
   the rest; a simulated operator gives every queued item its true verdict (label,
   damaged) through the station's store.
3. ``export_labels`` -> a labelled log; ``sorter train`` on it -> the candidate.
4. The shipped model and the candidate on a fresh line-``b`` log (``--test-items``, another
   seed, never seen by either): the safety table of each.

Writes its section of docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from benchmarks._report import write_section


def _fmt(t) -> str:
    rows = ["| labelled \\ lane | lead_acid | li_ion | hazard | manual |", "|---|---:|---:|---:|---:|"]
    for c, r in t.table.items():
        rows.append(
            f"| {c} | " + " | ".join(str(r[lane]) for lane in ("lead_acid", "li_ion", "hazard", "manual")) + " |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1200)
    ap.add_argument("--spot-check", type=float, default=0.25)
    ap.add_argument("--test-items", type=int, default=600)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)

    import numpy as np

    from sorter.batch import measure_logs
    from sorter.model import load_model
    from sorter.simulate import SimConfig, simulate_log
    from sorter.station.export import export_labels
    from sorter.station.linedata import AuditReader, LineLog, LineWatcher
    from sorter.station.promotion import CLASSES, _table
    from sorter.station.sample import make_sample_line
    from sorter.station.store import StationStore
    from sorter.train import TrainConfig, train_and_save

    load_before = os.getloadavg()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="station-loop-") as tmp:
        tmp = Path(tmp)
        line = make_sample_line(tmp / "line", items=args.items, base_items=args.items, seed=args.seed, line="b")
        store = StationStore(tmp / "station.sqlite")
        log = LineLog(line.log_dir, store)
        watcher = LineWatcher(AuditReader(line.audit), log, store, spot_check=args.spot_check)
        watcher.refresh()
        counts = store.queue_counts()
        n = 0
        while (q := store.next_open(order="belt")) is not None:
            rec = log.record(q.item_id)
            store.add_verdict(q.item_id, rec.label, damaged=bool(rec.extra.get("damaged")), note="", user="sim")
            n += 1
        export = export_labels(store, log, tmp / "labels", link=True)
        t0 = time.perf_counter()
        cand, report = train_and_save(
            [str(tmp / "labels")],
            str(tmp / "candidate"),
            TrainConfig(seed=args.seed, workers=args.workers),
            name="line-b",
        )
        t_train = time.perf_counter() - t0
        simulate_log(
            SimConfig(items=args.test_items, seed=args.seed + 1000, mix="recycler", line="b"),
            tmp / "test",
            workers=args.workers,
        )
        m = measure_logs([tmp / "test"], workers=args.workers)
        keep = m.ok & np.array([lab in CLASSES for lab in m.labels], dtype=bool)
        raw, labels = m.raw[keep], np.array([m.labels[i] for i in np.flatnonzero(keep)])
        shipped = _table(load_model(None), raw, labels, "")
        candidate = _table(load_model(tmp / "candidate"), raw, labels, "")
    load_after = os.getloadavg()

    def line_of(t) -> str:
        verdict = "passes" if t.passed else "fails: " + "; ".join(t.problems)
        return (
            f"Li-ion in lead_acid **{t.li_ion_in_lead_acid}**, non-lead in lead_acid {t.non_lead_in_lead_acid}, "
            f"lead-acid recovered {t.lead_acid_to_lead_acid:.3f}, manual {t.manual_rate:.3f} — {verdict}"
        )

    md = f"""## Operator station: the loop on a shifted line (issue 16)

`python -m benchmarks.station_loop --items {args.items} --spot-check {args.spot_check} --test-items {args.test_items} --seed {args.seed}`:
{args.items} simulated items on line preset `b` (other sensors than the shipped model was trained on),
scored by the shipped model; the station queued {counts["manual"]} items that went to manual and
{counts["spot"]} spot checks ({args.spot_check:.0%} of the rest); a simulated operator gave **{n} verdicts**
(the truth); `sorter labels export` wrote {export.items} labelled items ({", ".join(f"{k} {v}" for k, v in sorted(export.labels.items()))});
`sorter train` on the export alone took {t_train:.0f} s (held-out: {report["heldout_metrics"]}).
Both models on a fresh line-`b` log of {int(keep.sum())} items neither has seen:

Shipped model ({shipped.model}): {line_of(shipped)}

{_fmt(shipped)}

Candidate from the operators' labels ({candidate.model}): {line_of(candidate)}

{_fmt(candidate)}

- The candidate, trained on the station's labels alone ({export.labels.get("li_ion", 0)} of them Li-ion),
  recovers {"more" if candidate.lead_acid_to_lead_acid > shipped.lead_acid_to_lead_acid else "less"} lead-acid than the shipped model
  ({candidate.lead_acid_to_lead_acid:.3f} against {shipped.lead_acid_to_lead_acid:.3f}) with
  {"more" if candidate.manual_rate > shipped.manual_rate else "less"} manual work: retrain with the station's labels *and* the
  original training logs (`sorter train ORIGINAL... LABELS`), and promote only what beats the model in charge.
- Whole loop {time.perf_counter() - t_start:.0f} s. Machine: {os.cpu_count()} cores, `uname -m` {platform.machine()},
  load average {load_before[0]:.2f} before and {load_after[0]:.2f} after (shared with other jobs).
"""
    print(md)
    if not args.no_write:
        write_section("station_loop", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
