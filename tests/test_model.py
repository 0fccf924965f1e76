"""Model files: the shipped model loads; tampered, malicious or foreign files are refused."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from sorter.errors import ModelError, ModelIntegrityError
from sorter.features.measure import RAW_COLUMNS
from sorter.model import ALLOWED_TYPES, CLASSIFIER_FILE, MANIFEST, default_model_dir, load_model, sha256_file


@pytest.fixture()
def model_copy(tmp_path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(default_model_dir(), dst)
    return dst


def _rehash(d: Path, fname: str = CLASSIFIER_FILE) -> None:
    """What an attacker who can write the directory does: fix up the manifest's hash."""
    man = json.loads((d / MANIFEST).read_text())
    man["files"][fname] = sha256_file(d / fname)
    (d / MANIFEST).write_text(json.dumps(man))


def test_shipped_model_loads_and_predicts():
    m = load_model()
    assert m.classes == ("lead_acid", "li_ion", "other")
    proba, p_dmg = m.predict(np.full((2, len(RAW_COLUMNS)), np.nan))
    assert proba.shape == (2, 3) and np.allclose(proba.sum(axis=1), 1)
    man = m.manifest
    for key in ("format", "libraries", "feature_names", "classes", "policy", "training", "heldout_metrics", "files"):
        assert key in man
    assert man["training"]["data_sha256"]


def test_a_modified_file_is_refused(model_copy):
    p = model_copy / CLASSIFIER_FILE
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="sha256"):
        load_model(model_copy)


class _Payload:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(_Payload.marker),))


def test_a_pickle_with_a_payload_is_refused_and_never_executed(model_copy, tmp_path):
    marker = tmp_path / "pwned"
    _Payload.marker = str(marker)
    (model_copy / CLASSIFIER_FILE).write_bytes(pickle.dumps(_Payload()))
    _rehash(model_copy)
    with pytest.raises(ModelIntegrityError):
        load_model(model_copy)
    assert not marker.exists()


def test_a_skops_file_with_a_type_outside_the_allow_list_is_refused(model_copy, tmp_path):
    import os

    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    sio.dump(FunctionTransformer(func=os.system), model_copy / CLASSIFIER_FILE)
    _rehash(model_copy)
    with pytest.raises(ModelIntegrityError, match="allow-list"):
        load_model(model_copy)


def test_other_library_versions_are_refused(model_copy):
    man = json.loads((model_copy / MANIFEST).read_text())
    man["libraries"]["scikit-learn"] = "0.24.2"
    (model_copy / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(ModelIntegrityError, match="scikit-learn 0.24.2"):
        load_model(model_copy)


def test_wrong_format_and_missing_manifest_are_refused(model_copy, tmp_path):
    man = json.loads((model_copy / MANIFEST).read_text())
    man["format"] = "sorter-model/0"
    (model_copy / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(ModelIntegrityError, match="format"):
        load_model(model_copy)
    with pytest.raises(ModelError, match="no manifest.json"):
        load_model(tmp_path)


def test_an_unlisted_pickle_beside_the_model_is_refused(model_copy):
    (model_copy / "extra.pkl").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ModelIntegrityError, match="not in the manifest"):
        load_model(model_copy)


def test_allow_list_covers_exactly_what_the_shipped_model_needs():
    import skops.io as sio

    d = default_model_dir()
    needed = set()
    for f in json.loads((d / MANIFEST).read_text())["files"]:
        if f.endswith(".skops"):
            needed |= set(sio.get_untrusted_types(file=d / f))
    assert needed <= ALLOWED_TYPES
    assert not any(t.startswith(("builtins.", "os.", "posix.", "subprocess", "numpy.lib")) for t in ALLOWED_TYPES)


def test_fast_feature_path_equals_the_pipeline():
    from sorter.model import features_fast
    from sorter.simulate import SimConfig, simulate_item
    from sorter.features.measure import measure_item
    from sorter.readings import Item

    m = load_model()
    cfg = SimConfig(items=20, seed=2, faults=0.3)
    rows = []
    for i in range(20):
        s = simulate_item(cfg, i)
        rows.append(
            measure_item(
                Item(s.record, s.images.get("xray_low"), s.images.get("xray_high"), s.images.get("rgb"), cfg.meta()),
                15.0,
            )
        )
    raw = np.array(rows)
    for pipe in (m.classifier, m.damage):
        slow = pipe[:-1].transform(raw)
        np.testing.assert_array_equal(features_fast(pipe, raw), slow)
    np.testing.assert_array_equal(m.predict(raw)[0], m.classifier.predict_proba(raw))


def test_a_model_trained_on_other_measurements_is_refused(model_copy):
    # a model from before a change of the measurements' values must not score today's values
    man = json.loads((model_copy / MANIFEST).read_text())
    man["measurements"] = 1
    (model_copy / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(ModelIntegrityError, match="measurements of version 1.*retrain"):
        load_model(model_copy)
    del man["measurements"]  # manifests from before the version was recorded are version 1
    (model_copy / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(ModelIntegrityError, match="version 1"):
        load_model(model_copy)
