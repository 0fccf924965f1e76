"""Run the notebooks and save them with their outputs, so a code host shows the plots.

    python notebooks/refresh.py            # from the repository root, sorter importable

The committed outputs must come from one run of the whole notebook, top to bottom
(tests/test_notebooks.py checks that every code cell has its outputs, in order); CI
runs them again and compares their outputs (tests/test_notebooks.py).  Machine-specific metadata is dropped.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def refresh(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    root = str(HERE.parent)
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = root + (os.pathsep + env_path if env_path else "")
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    for cell in nb.cells:
        cell.get("metadata", {}).pop("execution", None)
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                # progress bars and warnings carry this machine's paths and timings
                out["text"] = ""
        cell["outputs"] = [o for o in cell.get("outputs", []) if not (o.get("output_type") == "stream"
                                                                        and not o.get("text"))]
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, path)
    print(f"refreshed {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    for p in sys.argv[1:] or sorted(HERE.glob("*.ipynb")):
        refresh(Path(p).resolve())
