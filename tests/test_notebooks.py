"""The committed notebooks carry the outputs of one whole run, so a code host shows them.

This checks what is committed: every code cell has outputs from a single top-to-bottom run,
the plots are there as images, no error or machine-specific path was saved, and a fresh run
(the default test run executes each notebook) shows the same outputs cell by cell.  Refresh
them with ``python notebooks/refresh.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # each notebook runs in a Jupyter kernel (a Python subprocess)

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_has_the_outputs_of_one_whole_run(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code
    # executed in order, once each, with nothing skipped: counts 1, 2, 3, ...
    assert [c.get("execution_count") for c in code] == list(range(1, len(code) + 1)), (
        f"{path.name}: run it whole with `python notebooks/refresh.py`"
    )
    for k, c in enumerate(code, 1):
        assert c["outputs"], f"{path.name} code cell {k} has no output; refresh the notebook"
        kinds = {o["output_type"] for o in c["outputs"]}
        assert "error" not in kinds, f"{path.name} code cell {k} saved an error"
        src = "".join(c["source"])
        if "plt.subplots" in src or "Image(" in src:
            assert any("image/png" in o.get("data", {}) for o in c["outputs"]), (
                f"{path.name} code cell {k} draws a plot but holds no image"
            )
    text = path.read_text(encoding="utf-8")
    for machine in (str(path.parents[1]), "/tmp/", "/home/", "/root/"):  # the checkout, temp and home folders
        assert machine not in text, f"{path.name} holds a path of the machine that ran it"


def _structure(nb: dict) -> list[list[tuple[str, tuple[str, ...]]]]:
    """Per code cell, what it shows: each rich output's type and MIME types (streams left out:
    warnings and progress lines come and go with the machine)."""
    out = []
    for c in nb["cells"]:
        if c["cell_type"] != "code":
            continue
        out.append(
            [
                (o["output_type"], tuple(sorted(o.get("data", {}))))
                for o in c["outputs"]
                if o["output_type"] in ("display_data", "execute_result", "error")
            ]
        )
    return out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_outputs_are_those_a_fresh_run_gives(path, tmp_path):
    """Run the notebook again (as notebooks/refresh.py does) and compare what each cell shows
    with what is committed: a stale notebook (a plot gone, a table added, an error) fails."""
    import os

    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    fresh = nbformat.from_dict(json.loads(json.dumps(nb)))
    root = str(path.parents[1])
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = root + (os.pathsep + env_path if env_path else "")
    try:
        NotebookClient(
            fresh, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        ).execute()
    finally:
        os.environ["PYTHONPATH"] = env_path
        if not env_path:
            del os.environ["PYTHONPATH"]
    assert _structure(fresh) == _structure(json.loads(path.read_text(encoding="utf-8"))), (
        f"{path.name}: its committed outputs are stale; refresh it with `python notebooks/refresh.py`"
    )
