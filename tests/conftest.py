"""Fixtures shared by the test modules (a module's own fixture of the same name takes precedence).

- ``model``: the shipped model, loaded once per session (tests must not mutate it: copy it
  with ``dataclasses.replace`` to change it).
- ``log_with_bad_lines``: one simulated log with every kind of bad input the batch engines
  must carry through in order, laid out as :data:`BAD_LOG` describes.
"""

from __future__ import annotations

import json

import pytest

from sorter.model import load_model
from sorter.simulate import SimConfig, simulate_log

BAD_LOG = {
    "lines": 44,  # 40 simulated items (seed 21, recycler mix, 5 % sensor faults) and 4 inserted lines
    "bad": {11: "invalid JSON", 12: "no t", 13: "duplicate of line 4"},  # unusable lines
    "bad_image": 14,  # item x-bad-image: its rgb file does not exist, its xray_low path leaves the log
    "gone_xray_low": 8,  # a simulated item whose xray_low file was deleted
}


@pytest.fixture(scope="session")
def bad_log_layout() -> dict:
    """Where ``log_with_bad_lines`` has what (:data:`BAD_LOG`)."""
    return BAD_LOG


@pytest.fixture(scope="session")
def model():
    return load_model()


@pytest.fixture(scope="session")
def log_with_bad_lines(tmp_path_factory):
    """A simulated log with bad lines and missing images (see :data:`BAD_LOG`); read-only."""
    d = tmp_path_factory.mktemp("bad-lines") / "log"
    simulate_log(SimConfig(items=40, seed=21, mix="recycler", faults=0.05), d)
    lines = (d / "items.jsonl").read_text().splitlines()
    (d / json.loads(lines[BAD_LOG["gone_xray_low"] - 1])["xray_low"]).unlink()
    bad = [
        "{not json",  # invalid JSON
        json.dumps({"item_id": "x-missing-t"}),  # no t
        lines[3],  # duplicate item id
        json.dumps(
            {**json.loads(lines[5]), "item_id": "x-bad-image", "rgb": "images/nope.png", "xray_low": "../../etc/passwd"}
        ),
    ]
    lines = lines[:10] + bad + lines[10:]
    (d / "items.jsonl").write_text("\n".join(lines) + "\n")
    return d
