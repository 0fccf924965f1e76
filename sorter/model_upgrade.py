"""``sorter model upgrade``: add or regenerate a model directory's fast predictor file.

Kept apart from :mod:`sorter.model` (which loads and saves models) because it rewrites a model
directory in place: the fast predictor's arrays are derived from the verified skops estimators,
and the file and the manifest's hash of it are replaced atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import SorterError
from .model import FAST_FILE, MANIFEST, _fast_arrays, _replace_bytes, load_model, sha256_file

__all__ = ["upgrade_model"]


def upgrade_model(model_dir: str | os.PathLike) -> bool:
    """Add (or regenerate) ``predictor.npz`` in a model directory, without retraining.

    The model is loaded and verified through its skops files (hashes, versions, allow-list),
    the fast predictor's arrays are derived from its estimators and checked against them
    (:func:`sorter.fastmodel.fast_arrays`), and the file and the manifest (its hash; nothing
    else changes, so the model's id stays) are replaced atomically, the file first.  Returns
    False, changing nothing, when the directory already holds the same file.  Raises
    :class:`~sorter.errors.SorterError` for a model whose kind has no fast predictor.
    """
    from .fastmodel import write_fast_file

    d = Path(model_dir)
    model = load_model(d, estimators=True)
    arrays = _fast_arrays(model)
    if arrays is None:
        raise SorterError(
            f"{d}: this model's estimators have no exact fast predictor (see the log); it keeps "
            "loading through its skops files"
        )
    data = write_fast_file(arrays)
    digest = hashlib.sha256(data).hexdigest()
    manifest = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
    if (
        manifest["files"].get(FAST_FILE) == digest
        and (d / FAST_FILE).is_file()
        and sha256_file(d / FAST_FILE) == digest
    ):
        return False
    _replace_bytes(d / FAST_FILE, data)
    manifest["files"][FAST_FILE] = digest
    _replace_bytes(d / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return True
