"""A recorded line for trying the station without a line: a simulated log and its audit log.

:func:`make_sample_line` simulates ``base_items`` items (the simulator, with images),
scores them with a model (the shipped one by default) through the same feature and
policy code as the line, and writes

- ``log/``: a ``sorter-log/1`` log of ``items`` lines, cycling the simulated items with
  fresh ids (image files are shared between the copies, as the format allows);
- ``audit.sqlite``: the controller's audit log, one row per line, written with
  :class:`sorter.line.audit.AuditLog` (the controller's own writer), the lane the
  policy chose, every ``late_every``-th delivery ``late`` (so it went to manual);
- ``line.toml``: a line configuration pointing at both.

Used by the station's tests and benchmark; the simulator's truth (``label``,
``damaged``) stays in the log, so a test can play the operator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SampleLine", "make_sample_line"]


@dataclass(frozen=True)
class SampleLine:
    root: Path
    log_dir: Path
    audit: Path
    config: Path
    items: int


def make_sample_line(
    root: str | Path,
    *,
    items: int = 200,
    base_items: int = 100,
    seed: int = 0,
    line: str = "a",
    mix: str = "recycler",
    model_dir: str | None = None,
    t0: float | None = None,
    rate_hz: float = 20.0,
    late_every: int = 97,
    audit_rows: int | None = None,
) -> SampleLine:
    """Write a sample line under ``root`` (see the module docstring).

    ``audit_rows``: how many of the lines are already decided in the audit (default all),
    so a test can add the rest while the station watches.
    """
    import time

    from sorter.batch import measure_logs
    from sorter.line.audit import AuditLog
    from sorter.model import load_model
    from sorter.policy import decide
    from sorter.simulate import SimConfig, simulate_log

    root = Path(root)
    base = root / "base"
    simulate_log(SimConfig(items=base_items, seed=seed, mix=mix, line=line), base, workers=1)
    model = load_model(model_dir)
    m = measure_logs([base], workers=0)
    proba, p_dmg = model.predict(m.raw)
    decisions = []
    for k in range(len(m.labels)):
        v = decide(proba[k], float(p_dmg[k]), m.raw[k], model.thresholds, model.classes)
        decisions.append((v.lane, v.reason, v.chemistry, *(float(x) for x in proba[k])))
    base_lines = (base / "items.jsonl").read_text(encoding="utf-8").splitlines()
    log_dir = root / "log"
    log_dir.mkdir(parents=True)
    (log_dir / "meta.json").write_bytes((base / "meta.json").read_bytes())
    # images: hard links into the log (the log format wants paths inside the log directory)
    (log_dir / "images").mkdir()
    for f in (base / "images").iterdir():
        (log_dir / "images" / f.name).hardlink_to(f)
    t0 = time.time() - items / rate_hz - 5 if t0 is None else t0
    n_audit = items if audit_rows is None else audit_rows
    with open(log_dir / "items.jsonl", "w", encoding="utf-8") as fh:
        for i in range(items):
            obj = json.loads(base_lines[i % len(base_lines)])
            obj["item_id"] = f"{i + 1:08d}"
            obj["t"] = t0 + i / rate_hz
            fh.write(json.dumps(obj, separators=(",", ":")) + "\n")
    audit = root / "audit.sqlite"
    with AuditLog(audit) as log:
        add_audit_rows(log, decisions, model.model_id, t0, rate_hz, range(n_audit), late_every)
    config = root / "line.toml"
    config.write_text(
        '[line]\nname = "sample"\nsource = "log"\nlog_dir = "log"\n\n[audit]\npath = "audit.sqlite"\n', encoding="utf-8"
    )
    return SampleLine(root, log_dir, audit, config, items)


def add_audit_rows(log, decisions, model_id: str, t0: float, rate_hz: float, indices, late_every: int = 97) -> None:
    """Record decisions for line indices (0-based) as the controller would."""
    from sorter.line.audit import AuditRecord

    recs = []
    for i in indices:
        lane, reason, chemistry, *p = decisions[i % len(decisions)]
        t = t0 + i / rate_hz
        late = late_every > 0 and (i + 1) % late_every == 0
        recs.append(
            AuditRecord(
                item_id=f"{i + 1:08d}",
                source_line=i + 1,
                t_item=t,
                t_available=t + 0.002,
                t_decided=t + 0.006,
                chemistry=chemistry,
                p_lead_acid=p[0],
                p_li_ion=p[1],
                p_other=p[2],
                lane=lane,
                reason=reason,
                model_id=model_id,
                latency_ms=4.0,
                deadline_ms=90.0,
                delivery="late" if late else "acked",
                plc_seq=i,
                plc_status="late" if late else "accepted",
                t_acked=None if late else t + 0.015,
            )
        )
    for k in range(0, len(recs), 1000):
        log.record_decisions(recs[k : k + 1000])
