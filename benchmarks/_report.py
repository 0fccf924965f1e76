"""Shared by the benchmarks: describe the machine, and write a result section into docs/performance.md.

Each benchmark owns one section, delimited by HTML comments, and replaces it when rerun,
so docs/performance.md always shows the latest run of every benchmark.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PERF_DOC = Path("docs/performance.md")


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(
            next(
                line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
            ).split()[1]
        )
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    libs = []
    for lib in ("numpy", "scikit-learn", "opencv-python-headless", "pymodbus", "dask", "pyarrow"):
        try:
            libs.append(f"{lib} {version(lib)}")
        except PackageNotFoundError:
            pass
    return (
        f"{cpu}, {os.cpu_count()} cores{mem}; {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}; " + ", ".join(libs) + f"; run {_dt.datetime.now():%Y-%m-%d %H:%M}"
    )


def write_section(key: str, markdown: str, doc: Path = PERF_DOC) -> None:
    """Replace (or append) the section ``key`` of docs/performance.md."""
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{start}\n{markdown.strip()}\n\n_Machine: {machine()}._\n{end}"
    text = (
        doc.read_text()
        if doc.exists()
        else "# Performance\n\nEvery figure here is written by a benchmark in `benchmarks/`; rerun it to refresh its section.\n"
    )
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
