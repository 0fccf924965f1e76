"""Start-up of ``sorter score`` and of model loading, and where the time goes (issue 14, section 3).

``python -m benchmarks.startup [--repeats 5] [--items 20] [--no-write]``

1. **``sorter score`` launch to first row**: ``python -m sorter score LOG --out X.csv --workers 1`` on
   a 20-item simulated log, from ``Popen`` to the process's exit (the output is written when the
   last row is scored, so this bounds launch to first row from above), median and worst of
   ``--repeats`` runs, in wall seconds and in CPU seconds (the process and its worker, from the
   kernel's accounting of reaped children: less sensitive to the other load of a shared
   machine).  Twice: with the shipped model as it is (``predictor.npz``: no scikit-learn), and
   with a copy of it without that file (what every model loaded before: skops and
   scikit-learn), so that before and after are measured in the same minutes.
2. **Where the time goes**, each in a fresh interpreter, wall and CPU seconds: importing the CLI
   (and building its parser), importing ``sorter.score`` (the batch engine, pyarrow, OpenCV),
   ``load_model(estimators=False)`` through ``predictor.npz`` (hashing, reading, the self-check)
   and through the skops files (importing skops, which imports all of scikit-learn; skops's type
   scan and load; the fast predictor's self-check against scikit-learn).
3. **Import-time breakdown**: ``python -X importtime`` of what ``sorter score``'s main process
   imports, the modules with the largest cumulative import time.

The machine is shared: the load average is printed and written with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ._report import write_section

_PHASES = r"""
import json, sys, time
def clock():
    return time.perf_counter(), time.process_time()
out = {}
def lap(name, t):
    w, c = clock()
    out[name] = [w - t[0], c - t[1]]
    return clock()
mode = sys.argv[1]
t = clock()
import sorter.cli
sorter.cli.build_parser()
t = lap("import the CLI, build its parser", t)
import sorter.score
t = lap("import sorter.score (batch engine, pyarrow, OpenCV)", t)
import sorter.model as sm
d = sm.default_model_dir() if mode == "npz" else sys.argv[2]
files = json.loads(open(f"{d}/manifest.json").read())["files"]
t = clock()
for f in files:
    sm.sha256_file(sm.Path(d) / f)
t = lap("sha256 of the model's files", t)
if mode == "npz":
    import sorter.fastmodel
    t = lap("import the fast predictor (numpy, scipy.special)", t)
    data = open(f"{d}/predictor.npz", "rb").read()
    t = clock()
    fm = sorter.fastmodel.read_fast_file(data)
    t = lap("read predictor.npz and run its self-check", t)
    m = sm.load_model(d, estimators=False)
    t = lap("load_model(estimators=False), imports done", t)
    assert m.classifier is None
else:
    import skops.io as sio
    t = lap("import skops (all of scikit-learn, scipy)", t)
    scan = [0.0, 0.0]
    load = [0.0, 0.0]
    for f in [f for f in files if f.endswith(".skops")]:
        a = clock(); u = sio.get_untrusted_types(file=f"{d}/{f}"); b = clock()
        sio.load(f"{d}/{f}", trusted=sorted(u)); c = clock()
        scan = [scan[0] + b[0] - a[0], scan[1] + b[1] - a[1]]
        load = [load[0] + c[0] - b[0], load[1] + c[1] - b[1]]
    out["skops type scan"] = scan
    out["skops load (objects rebuilt)"] = load
    t = clock()
    m = sm.load_model(d, estimators=False)
    t = lap("load_model through skops, imports done", t)
    m._fast = None
    m.prepare()
    t = lap("the fast predictor's self-check against scikit-learn", t)
print(json.dumps(out))
"""


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of a command (the CPU of the process and every child it reaped)."""
    c0 = _children_cpu()
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - t0, _children_cpu() - c0


def make_log(path: Path, items: int) -> None:
    from sorter.simulate import SimConfig, simulate_log

    simulate_log(SimConfig(items=items, seed=14, mix="recycler"), path, workers=1)


def score_startup(
    log: Path, tmp: Path, model: str | None, repeats: int, env: dict[str, str]
) -> list[tuple[float, float]]:
    out = []
    for k in range(repeats):
        cmd = [
            sys.executable,
            "-m",
            "sorter",
            "score",
            str(log),
            "--out",
            str(tmp / f"scores-{k}.csv"),
            "--workers",
            "1",
            "--force",
        ]
        if model:
            cmd += ["--model", model]
        out.append(_run(cmd, env))
    return out


def phases(mode: str, model: str, env: dict[str, str]) -> dict[str, list[float]]:
    res = subprocess.run(
        [sys.executable, "-c", _PHASES, mode, model], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def import_breakdown(env: dict[str, str], top: int = 12) -> tuple[float, list[tuple[float, str]]]:
    """Cumulative import time of what ``sorter score``'s main process imports: the total, and the
    largest top-level imports (seconds, module)."""
    code = (
        "import sorter.cli; sorter.cli.build_parser(); import sorter.score; "
        "from sorter.model import load_model; load_model(estimators=False)"
    )
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True, env=env
    )
    rows = []
    for line in res.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if m:
            rows.append((int(m.group(2)) / 1e6, len(m.group(3)), m.group(4)))
    first = [(c, n) for c, depth, n in rows if depth == 0]
    return sum(c for c, _ in first), sorted(first, reverse=True)[:top]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="runs of sorter score per model (default %(default)s)")
    ap.add_argument("--items", type=int, default=20, help="items in the scored log (default %(default)s)")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    args = ap.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    load0 = os.getloadavg()
    from sorter.model import FAST_FILE, MANIFEST, default_model_dir

    with tempfile.TemporaryDirectory(prefix="sorter-startup-") as d:
        tmp = Path(d)
        make_log(tmp / "log", args.items)
        old = tmp / "model-without-npz"  # the shipped model as it was before predictor.npz
        shutil.copytree(default_model_dir(), old)
        (old / FAST_FILE).unlink()
        man = json.loads((old / MANIFEST).read_text())
        del man["files"][FAST_FILE]
        (old / MANIFEST).write_text(json.dumps(man, indent=2))
        # alternate the two, so that a change of the machine's load hits both alike
        fast, slow = [], []
        for _ in range(args.repeats):
            fast += score_startup(tmp / "log", tmp, None, 1, env)
            slow += score_startup(tmp / "log", tmp, str(old), 1, env)
        ph_fast = phases("npz", str(default_model_dir()), env)
        ph_slow = phases("skops", str(old), env)
        total_imp, top = import_breakdown(env)
    load1 = os.getloadavg()

    def stats(runs: list[tuple[float, float]]) -> str:
        w = [r[0] for r in runs]
        c = [r[1] for r in runs]
        return (
            f"{statistics.median(w):.2f} s (worst {max(w):.2f}) | {statistics.median(c):.2f} CPU-s (worst {max(c):.2f})"
        )

    med_fast = statistics.median(r[0] for r in fast)
    print(f"sorter score, predictor.npz: {stats(fast)}")
    print(f"sorter score, skops only:    {stats(slow)}")
    print(json.dumps({"npz": ph_fast, "skops": ph_slow}, indent=1))

    def table(ph: dict[str, list[float]]) -> str:
        return "\n".join(f"| {k} | {v[0]:.3f} | {v[1]:.3f} |" for k, v in ph.items())

    imports = "\n".join(f"| `{n}` | {c:.3f} |" for c, n in top)
    md = f"""## Start-up: `sorter score` and model loading (issue 14)

`python -m benchmarks.startup` ({args.repeats} runs each, alternated; niceness {os.nice(0)}, on a shared machine).
`sorter score` on a {args.items}-item simulated log with one worker, launch to exit (the CSV is written
when the last row is scored: this bounds launch to first row from above). Wall seconds, and CPU seconds
of the process and its worker (less sensitive to the machine's other load):

| model directory | launch to output, median (worst) | CPU, median (worst) |
|---|---|---|
| shipped, with `predictor.npz` (loads without scikit-learn) | {stats(fast)} |
| the same model without `predictor.npz` (skops + scikit-learn, as before) | {stats(slow)} |

**`sorter score` launch to first row: median {med_fast:.2f} s** (target 1 s: {"met" if med_fast <= 1 else "NOT met"}).

What changed: every `sorter score` and every line worker used to load the skops files, and importing
skops imports all of scikit-learn and scipy (the largest step of the second table below), then skops
rebuilds the estimators. They now read `predictor.npz` (`models/README.md`: the same hashes, version
guard and a bit-identity self-check on stored probe rows) and import neither. The CLI also builds its
parser without importing the simulator, and the line controller no longer imports it at all.

Where the time goes, each step in a fresh interpreter after the ones above it (wall s, CPU s).
With `predictor.npz` (`load_model(estimators=False)`: the line's workers and `sorter score`):

| step | wall s | CPU s |
|---|---|---|
{table(ph_fast)}

Through the skops files (what `sorter evaluate`, `train`, `calibrate` and every load did before):

| step | wall s | CPU s |
|---|---|---|
{table(ph_slow)}

`python -X importtime` of what `sorter score`'s main process imports (CLI, `sorter.score`, the model
through `predictor.npz`): {total_imp:.2f} s of imports in all; the largest top-level ones:

| module (cumulative, with what it imports) | s |
|---|---|
{imports}

Load average (1, 5, 15 min; 2 cores shared with other work): {load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f} at the
start, {load1[0]:.1f} {load1[1]:.1f} {load1[2]:.1f} at the end; `uname -m` {platform.machine()}."""
    print(md)
    if not args.no_write:
        write_section("startup", md)
        print("written to docs/performance.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
