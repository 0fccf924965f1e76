"""A small simulated, scored log whose hazard items carry energy columns.

The energy columns come from the simulator's truth (each record's ``energy_wh``),
with a made-up bound of truth x 1.3, so these tests do not depend on an energy model.
Every truth Li-ion item the model did not send to lead_acid is put in the hazard lane.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sorter.logformat import iter_log
from sorter.score import score_logs
from sorter.simulate import SimConfig, simulate_log

BOUND_FACTOR = 1.3


@pytest.fixture(scope="session")
def hazard_scores(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("cases")
    log = base / "log"
    simulate_log(SimConfig(items=120, seed=11, mix="balanced"), str(log), workers=1)
    raw = base / "raw.parquet"
    score_logs([str(log)], raw, workers=1)
    truth = {ln.record.item_id: ln.record for ln in iter_log(log) if ln.record is not None}
    t = pq.read_table(raw)
    lanes, e, u, w = [], [], [], []
    for item_id, lane in zip(t.column("item_id").to_pylist(), t.column("lane").to_pylist()):
        rec = truth.get(item_id)
        li = rec is not None and rec.label == "li_ion" and rec.extra.get("energy_wh") is not None
        if li and lane != "lead_acid":
            lane = "hazard"
        elif lane == "hazard":  # a hazard item that is not Li-ion: out of these tests' way
            lane = "manual"
        lanes.append(lane)
        e.append(rec.extra["energy_wh"] if li and lane == "hazard" else math.nan)
        u.append(rec.extra["energy_wh"] * BOUND_FACTOR if li and lane == "hazard" else math.nan)
        w.append(rec.weight_g if rec is not None and rec.weight_g is not None else math.nan)
    hazard = [i for i, lane in zip(t.column("item_id").to_pylist(), lanes) if lane == "hazard"]
    assert len(hazard) >= 20, "the fixture needs enough hazard items for several cases"
    # One hazard item has no bound (a missing sensor the model could not cover); one lost its X-ray.
    no_bound = hazard[3]
    u[t.column("item_id").to_pylist().index(no_bound)] = math.nan
    small = [i for i in hazard if truth[i].extra["energy_wh"] * BOUND_FACTOR < 2100]
    no_image = small[1]
    Path(log / truth[no_image].xray_low).unlink()
    # sorter score writes these columns itself (from the model's energy estimate): replaced here by
    # the truth-based ones, so these tests do not depend on the model's figures
    for name, values in (
        ("lane", pa.array(lanes)),
        ("weight_g", pa.array(w, pa.float64())),
        ("energy_wh", pa.array(e, pa.float64())),
        ("energy_wh_upper", pa.array(u, pa.float64())),
    ):
        k = t.schema.get_field_index(name)
        t = t.set_column(k, name, values) if k >= 0 else t.append_column(name, values)
    scores = base / "scores.parquet"
    pq.write_table(t, scores)
    return {
        "log": log,
        "scores": scores,
        "hazard": hazard,
        "truth": truth,
        "no_bound": no_bound,
        "no_image": no_image,
        "table": t,
        "base": base,
    }
