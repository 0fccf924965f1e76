"""The fast predictor file (predictor.npz): the same answers as the skops files, the same
refusals, an upgrade path for old model directories, and a start-up without scikit-learn."""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from sorter.cli import main
from sorter.errors import ModelIntegrityError
from sorter.fastmodel import FAST_FILE, PROBE_ATOL, write_fast_file
from sorter.model import MANIFEST, default_model_dir, load_model, sha256_file

# Optional or heavy modules that scoring does not use: a line PC that imports them starts seconds later.
# (The station's command definitions, sorter.station.cli, are argparse only and part of every CLI start.)
ALLOWED = ("sorter.station", "sorter.station.cli")
HEAVY = (
    "sklearn",
    "skops",
    "dask",
    "distributed",
    "matplotlib",
    "pandas",
    "pydantic",
    "sorter.station",
    "starlette",
    "jinja2",
    "sorter.report",
    "sorter.train",
    "sorter.simulate",
)


@pytest.fixture()
def model_copy(tmp_path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(default_model_dir(), dst)
    return dst


@pytest.fixture(scope="module")
def raw_rows():
    from sorter.features.measure import measure_item
    from sorter.readings import Item
    from sorter.simulate import SimConfig, simulate_item

    cfg = SimConfig(items=60, seed=5, faults=0.3, mix="recycler")
    rows = []
    for i in range(60):
        s = simulate_item(cfg, i)
        rows.append(
            measure_item(
                Item(s.record, s.images.get("xray_low"), s.images.get("xray_high"), s.images.get("rgb"), cfg.meta()),
                15.0,
            )
        )
    return np.array(rows)


def _arrays(d: Path) -> dict[str, np.ndarray]:
    with np.load(d / FAST_FILE, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _rewrite(d: Path, arrays: dict[str, np.ndarray] | bytes) -> None:
    """What someone who can write the directory does: replace the file and fix up its hash."""
    (d / FAST_FILE).write_bytes(arrays if isinstance(arrays, bytes) else write_fast_file(arrays))
    man = json.loads((d / MANIFEST).read_text())
    man["files"][FAST_FILE] = sha256_file(d / FAST_FILE)
    (d / MANIFEST).write_text(json.dumps(man))


def test_the_shipped_model_has_the_file_and_gives_the_skops_files_answers(model, raw_rows):
    fast = load_model(estimators=False)
    assert FAST_FILE in fast.manifest["files"]
    assert fast.classifier is None and fast.damage is None and fast.has_damage
    assert fast.model_id == model.model_id
    for n in (1, 7, 60):  # one row (the line), and beyond the fast path's row limit (batch)
        p, d = fast.predict(raw_rows[:n])
        q, e = model.predict(raw_rows[:n])
        np.testing.assert_array_equal(p, q)
        np.testing.assert_array_equal(d, e)
    np.testing.assert_array_equal(fast.predict(raw_rows)[0], model.classifier.predict_proba(raw_rows))
    nov = model.novelty_scores(raw_rows)[:, 1]
    for a, b in zip(fast.energy_wh(raw_rows, nov), model.energy_wh(raw_rows, nov)):
        np.testing.assert_array_equal(a, b)


def test_a_modified_file_is_refused(model_copy):
    p = model_copy / FAST_FILE
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match=r"predictor\.npz: sha256 .* does not match"):
        load_model(model_copy, estimators=False)


def test_changed_trees_fail_the_self_check_and_the_skops_files_load_instead(model_copy, raw_rows, model, caplog):
    arrays = _arrays(model_copy)
    arrays["classifier.value"] = arrays["classifier.value"] * 1.001  # hashed anew: only the self-check can tell
    _rewrite(model_copy, arrays)
    with caplog.at_level(logging.WARNING, logger="sorter.model"):
        m = load_model(model_copy, estimators=False)
    assert "probe rows differ" in caplog.text and "sorter model upgrade" in caplog.text
    assert m.classifier is not None  # loaded through skops: the answers are the model's
    np.testing.assert_array_equal(m.predict(raw_rows[:3])[0], model.predict(raw_rows[:3])[0])


class _Payload:
    marker = ""

    def __reduce__(self):
        return (Path.touch, (Path(_Payload.marker),))


def test_a_file_with_objects_or_unknown_feature_steps_is_refused_and_never_run(model_copy, tmp_path):
    _Payload.marker = str(tmp_path / "pwned")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:  # an object array: only pickle could read it
        member = io.BytesIO()
        np.lib.format.write_array(member, np.array([_Payload()], dtype=object), allow_pickle=True)
        zf.writestr("format.npy", member.getvalue())
    _rewrite(model_copy, buf.getvalue())
    with pytest.raises(ModelIntegrityError, match="sorter model upgrade"):
        load_model(model_copy, estimators=False)
    assert not (tmp_path / "pwned").exists()

    arrays = _arrays(default_model_dir())
    arrays["classifier.steps"] = np.array(["os.system"] + list(arrays["classifier.steps"][1:]))
    _rewrite(model_copy, arrays)
    with pytest.raises(ModelIntegrityError, match="unknown feature steps"):
        load_model(model_copy, estimators=False)

    arrays = _arrays(default_model_dir())
    arrays["damage.left"] = arrays["damage.left"] + 10**9  # out of range: no out-of-bounds walk
    _rewrite(model_copy, arrays)
    with pytest.raises(ModelIntegrityError, match="out of range"):
        load_model(model_copy, estimators=False)

    arrays = _arrays(default_model_dir())
    arrays["classifier.sizes"] = arrays["classifier.sizes"] + np.array([0, 0, 5])  # trees read other features
    _rewrite(model_copy, arrays)
    with pytest.raises(ModelIntegrityError, match="the trees read"):
        load_model(model_copy, estimators=False)


def test_the_version_guard_and_the_unlisted_file_rule_hold_on_the_fast_path(model_copy):
    man = json.loads((model_copy / MANIFEST).read_text())
    man["libraries"]["scikit-learn"] = "0.24.2"
    (model_copy / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(ModelIntegrityError, match="scikit-learn 0.24.2"):
        load_model(model_copy, estimators=False)
    man["libraries"] = json.loads((default_model_dir() / MANIFEST).read_text())["libraries"]
    del man["files"][FAST_FILE]
    (model_copy / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(ModelIntegrityError, match="not in the manifest"):
        load_model(model_copy, estimators=False)


def test_an_old_directory_loads_through_skops_and_upgrades_without_retraining(model_copy, raw_rows, model, capsys):
    (model_copy / FAST_FILE).unlink()
    man = json.loads((model_copy / MANIFEST).read_text())
    del man["files"][FAST_FILE]
    (model_copy / MANIFEST).write_text(json.dumps(man))
    skops_files = {f: sha256_file(model_copy / f) for f in man["files"]}

    old = load_model(model_copy, estimators=False)  # no file: the skops files, as before
    assert old.classifier is not None

    assert main(["model", "upgrade", str(model_copy)]) == 0
    assert "wrote" in capsys.readouterr().out
    new_man = json.loads((model_copy / MANIFEST).read_text())
    assert {k: v for k, v in new_man["files"].items() if k != FAST_FILE} == skops_files
    assert {k: v for k, v in new_man.items() if k != "files"} == {k: v for k, v in man.items() if k != "files"}
    # the same arrays as the shipped file: the upgrade is deterministic (the probe rows, drawn
    # through exp and log, and scikit-learn's outputs on them to within the last bits another
    # CPU's vector arithmetic may differ by)
    made, shipped = _arrays(model_copy), _arrays(default_model_dir())
    assert made.keys() == shipped.keys()
    for k, v in shipped.items():
        if ".probe_" in k:
            np.testing.assert_allclose(made[k], v, rtol=1e-12, atol=PROBE_ATOL)
        else:
            np.testing.assert_array_equal(made[k], v)
    fast = load_model(model_copy, estimators=False)
    assert fast.classifier is None and fast.model_id == old.model_id
    np.testing.assert_array_equal(fast.predict(raw_rows[:5])[0], model.predict(raw_rows[:5])[0])

    assert main(["model", "upgrade", str(model_copy)]) == 0
    assert "up to date" in capsys.readouterr().out


def test_upgrade_refuses_a_tampered_model_with_exit_2(model_copy, capsys):
    p = model_copy / "classifier.skops"
    data = bytearray(p.read_bytes())
    data[100] ^= 0xFF
    p.write_bytes(bytes(data))
    assert main(["model", "upgrade", str(model_copy)]) == 2
    assert "sha256" in capsys.readouterr().err


def test_scoring_imports_no_heavy_optional_module(tmp_path, log_with_bad_lines):
    """The line PC starts fast: the CLI, the scoring path, a scoring worker's start and a whole
    ``sorter score`` run import none of scikit-learn, skops, dask, matplotlib, pandas, the
    station, the trainer or the simulator (and the CLI alone not even numpy's users)."""
    code = textwrap.dedent(f"""
        import sys
        HEAVY, ALLOWED = {HEAVY!r}, {ALLOWED!r}
        def loaded():
            return sorted(m for m in sys.modules if m not in ALLOWED
                          and any(m == h or m.startswith(h + ".") for h in HEAVY))
        import sorter.cli
        sorter.cli.build_parser()
        assert not loaded(), ("cli", loaded())
        assert "pyarrow" not in sys.modules and "cv2" not in sys.modules, "cli"
        import sorter.scoring
        from sorter.line.workers import init_scoring_worker, _worker_warm
        init_scoring_worker(None)
        print(_worker_warm())
        assert not loaded(), ("worker", loaded())
        rc = sorter.cli.main(["score", {str(log_with_bad_lines)!r}, "--out", {str(tmp_path / "s.csv")!r},
                              "--workers", "1"])
        assert rc == 0, rc
        assert not loaded(), ("score", loaded())
        print("OK")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("OK"), res.stderr[-3000:]
    assert (tmp_path / "s.csv").read_text().count("\n") == 45  # header + every line of the log
