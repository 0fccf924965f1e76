"""The command line on user error: every command, wrong paths, files where folders are expected
and the reverse, empty and unlabelled logs, outputs that exist or cannot be written. Each ends in
exit status 2 and one line that says what is wrong, never a traceback."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from sorter.cli import build_parser, main
from sorter.simulate import SimConfig, simulate_log


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """A folder with what a user might point a command at."""
    d = tmp_path_factory.mktemp("cli")
    simulate_log(SimConfig(items=12, seed=5), d / "labelled")
    simulate_log(SimConfig(items=8, seed=6, labelled=False), d / "unlabelled")
    (d / "emptylog").mkdir()
    (d / "emptylog" / "items.jsonl").write_bytes(b"")
    (d / "emptydir").mkdir()
    (d / "afile").write_text("not a log\n")
    (d / "stuff").mkdir()
    (d / "stuff" / "notes.txt").write_text("someone's files\n")
    (d / "adir.csv").mkdir()
    (d / "done.csv").write_text("already here\n")
    (d / "report").mkdir()
    (d / "report" / "report.md").write_text("# an earlier report\n")
    (d / "model").mkdir()
    (d / "model" / "manifest.json").write_text("{}\n")
    return d


# (arguments with {d} for the folder above, what the message must say)
CASES = [
    # score
    ("score {d}/nosuch --out {d}/o.csv", "no such log directory"),
    ("score {d}/afile --out {d}/o.csv", "is a file, not a log directory"),
    ("score {d}/emptydir --out {d}/o.csv", "holds no items.jsonl"),
    ("score {d}/labelled {d}/labelled --out {d}/o.csv", "is given twice"),
    ("score {d}/labelled --out {d}/adir.csv", "is a directory"),
    ("score {d}/labelled --out {d}/o.xlsx", ".csv or .parquet"),
    ("score {d}/labelled --out {d}/afile/o.csv", "does not exist"),
    ("score {d}/labelled --out {d}/nosuch/o.csv", "does not exist"),
    ("score {d}/labelled --out {d}/done.csv", "--force"),
    ("score {d}/labelled --out {d}/o.csv --model {d}/nosuch", "manifest.json"),
    ("score {d}/labelled --out {d}/o.csv --model {d}/afile", "manifest.json"),
    # train
    ("train {d}/nosuch --out {d}/m", "no such log directory"),
    ("train {d}/afile --out {d}/m", "is a file, not a log directory"),
    ("train {d}/emptydir --out {d}/m", "holds no items.jsonl"),
    ("train {d}/emptylog --out {d}/m", "labelled"),
    ("train {d}/unlabelled --out {d}/m", "labelled"),
    ("train {d}/labelled --out {d}/afile", "is a file"),
    ("train {d}/labelled --out {d}/stuff", "does not hold a model"),
    ("train {d}/labelled --out {d}/stuff --force", "does not hold a model"),
    ("train {d}/labelled --out {d}/model", "--force"),
    # evaluate
    ("evaluate {d}/nosuch --out {d}/r", "no such log directory"),
    ("evaluate {d}/afile --out {d}/r", "is a file, not a log directory"),
    ("evaluate {d}/emptydir --out {d}/r", "holds no items.jsonl"),
    ("evaluate {d}/emptylog --out {d}/r", "no items"),
    ("evaluate {d}/unlabelled --out {d}/r", "'label'"),
    ("evaluate {d}/labelled --out {d}/afile", "is a file"),
    ("evaluate {d}/labelled --out {d}/afile/r", "check the path"),
    ("evaluate {d}/labelled --out {d}/report", "--force"),
    ("evaluate {d}/labelled --out {d}/stuff", "does not hold a report"),
    ("evaluate {d}/labelled --out {d}/r --model {d}/labelled", "manifest.json"),
    # simulate
    ("simulate --items 3 --out {d}/afile", "is a file"),
    ("simulate --items 3 --out {d}/afile/log", "check the path"),
    ("simulate --items 3 --out {d}/labelled", "--force"),
    ("simulate --items 3 --out {d}/stuff", "does not hold a log"),
    ("simulate --items 3 --out {d}/stuff --force", "does not hold a log"),
    ("simulate --items -1 --out {d}/s", "--items"),
    ("simulate --items 3 --out {d}/s --catalog {d}/nosuch.csv", "nosuch.csv"),
    # run
    ("run", "examples/line.toml"),
    ("run --config {d}/nosuch.toml", "does not exist"),
    ("run --config {d}/emptydir", "cannot be read"),
    ("run --config {d}/afile", "not valid TOML"),
    ("run --set line.log_dir={d}/nosuch --set line.follow=false", "no such log directory"),
    ("run --set line.log_dir={d}/afile --set line.follow=false", "is a file"),
    ("run --set line.log_dir={d}/afile", "is a file"),
    ("run --set line.log_dir={d}/emptydir --set line.follow=false", "holds no items.jsonl"),
    ("run --set line.log_dir={d}/labelled --replay-rate 0", "--replay-rate"),
    ("run --set line.source=simulated --replay-rate 2", "--replay-rate"),
    ("run --set plc.prot=502", "prot"),
    # demo
    ("demo --items 0", "at least one item"),
    ("demo --items 3 --out {d}/afile", "is a file"),
]

ARGPARSE_CASES = [  # refused by the argument parser: usage, then the error, exit 2
    ("score {d}/labelled --out {d}/o.csv --workers 0", "at least 1"),
    ("score {d}/labelled --out {d}/o.csv --workers many", "whole number"),
    ("train {d}/labelled --out {d}/m --workers -2", "at least 1"),
    ("evaluate {d}/labelled --out {d}/r --workers 0", "at least 1"),
    ("simulate --out {d}/s --workers 0", "at least 1"),
    ("score --out {d}/o.csv", "required"),
]


def _run(argv: list[str], capsys) -> tuple[int, str]:
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.err + cap.out


@pytest.mark.parametrize("args, says", CASES, ids=[c[0].replace("{d}/", "") for c in CASES])
def test_user_errors_exit_2_with_one_line_and_no_traceback(place, args, says, capsys):
    argv = args.format(d=place).split()
    rc, text = _run(argv, capsys)
    assert rc == 2, text
    assert "Traceback" not in text
    errors = [ln for ln in text.splitlines() if ln.startswith(f"sorter {argv[0]}: error:")]
    assert len(errors) == 1, text
    assert says in errors[0], errors[0]
    # nothing half-written is left behind
    assert not list(place.glob("*.partial")) and not list(place.glob(".r.*"))
    assert not (place / "m").exists() and not (place / "r").exists() and not (place / "o.csv").exists()


@pytest.mark.parametrize("args, says", ARGPARSE_CASES, ids=[c[0].replace("{d}/", "") for c in ARGPARSE_CASES])
def test_bad_options_are_refused_by_the_parser(place, args, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args.format(d=place).split())
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and says in err.strip().splitlines()[-1]


def test_plc_sim_bad_port_exits_2(capsys):
    rc, text = _run(["plc-sim", "--port", "-1"], capsys)
    assert rc == 2 and "Traceback" not in text and "out of range" in text


def test_every_command_documents_every_option(capsys):
    """No option without help: `sorter CMD --help` explains each one."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.option_strings and action.dest not in ("help", "verbose"):
                assert action.help, f"sorter {name} {action.option_strings[0]} has no help"
    assert "at most 8" in sub.choices["score"].format_help()
    for name in ("score", "train", "evaluate", "simulate", "demo"):
        assert "--force" in sub.choices[name].format_help()


def test_run_print_config_without_a_config_shows_the_defaults(capsys):
    assert main(["run", "--print-config"]) == 0
    cap = capsys.readouterr()
    assert 'log_dir = ""  # default' in cap.out and "port = 5020  # default" in cap.out
    assert "line.log_dir" in cap.err  # and says what is missing to run it


def test_the_example_line_toml_is_valid_and_documented(capsys):
    from sorter.line.config import load_config

    example = Path(__file__).resolve().parents[1] / "examples" / "line.toml"
    cfg = load_config(example, env={})
    assert Path(cfg.line.log_dir).resolve() == (example.parent.parent / "data" / "sample-log").resolve()
    assert cfg.line.source == "log" and cfg.plc.host == "127.0.0.1" and cfg.plc.port == 5020
    text = example.read_text()
    assert "docs/configuration.md" in text and "sorter plc-sim" in text
    assert main(["run", "--print-config", "--config", str(example)]) == 0
    assert f"{example} [line] log_dir" in capsys.readouterr().out


def test_summaries_print_rounded_figures_and_clean_paths(place, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["evaluate", str(place / "labelled"), "--out", f"{out}/", "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}/report.md" in text and "//" not in text
    for word in text.split():
        if "=" in word:
            value = word.split("=", 1)[1]
            assert len(value.split(".", 1)[-1]) <= 4 or "/" in value, word
    assert json.loads((out / "metrics.json").read_text())["items"] == 12


def test_force_replaces_an_earlier_output(place, tmp_path, capsys):
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "report.md").write_text("old")
    assert main(["evaluate", str(place / "labelled"), "--out", str(rep), "--workers", "1", "--force"]) == 0
    assert (rep / "report.md").read_text() != "old"
    out = tmp_path / "o.csv"
    out.write_text("old")
    assert main(["score", str(place / "labelled"), "--out", str(out), "--workers", "1", "--force"]) == 0
    assert out.read_text().startswith('"log"')
    log = tmp_path / "log"
    assert main(["simulate", "--items", "3", "--out", str(log), "--workers", "1"]) == 0
    assert main(["simulate", "--items", "4", "--seed", "2", "--out", str(log), "--workers", "1", "--force"]) == 0
    assert len((log / "items.jsonl").read_text().splitlines()) == 4


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_an_unwritable_output_folder_is_a_message(place, tmp_path, capsys, monkeypatch):
    import os

    # root ignores permission bits: ask the question the code asks, and answer "no"
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if mode == os.W_OK else real_access(p, mode, **kw))
    rc, text = _run(["score", str(place / "labelled"), "--out", str(tmp_path / "o.csv")], capsys)
    assert rc == 2 and "not writable" in text and "Traceback" not in text


@pytest.mark.parametrize("command", [["evaluate", "{log}", "--out", "{out}"], ["calibrate", "{log}", "--out", "{out}"]])
def test_reports_without_matplotlib_say_how_to_install_it(command, tmp_path, capsys, monkeypatch):
    """matplotlib is the report extra: without it, evaluate and calibrate stop before any work
    with exit 2 and the install command, and write nothing."""
    log, out = tmp_path / "log", tmp_path / "out"
    simulate_log(SimConfig(items=5, seed=3), log)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    assert main([a.format(log=log, out=out) for a in command]) == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and "pip install 'sorter[report]'" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.e2e
def test_the_demo_runs_without_matplotlib(tmp_path):
    """The README's demo installs plain `.` (no report extra): `sorter demo` must not need
    matplotlib, in its own process or its workers' (a stand-in package that refuses to import
    comes first on the path of both)."""
    import os
    import subprocess

    blocker = tmp_path / "blocked" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text('raise ImportError("matplotlib is not installed")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker.parent), *sys.path])}
    blocked = subprocess.run([sys.executable, "-c", "import matplotlib"], env=env, capture_output=True, text=True)
    assert "matplotlib is not installed" in blocked.stderr  # the stand-in works
    run = subprocess.run(
        [sys.executable, "-m", "sorter", "demo", "--items", "30", "--pool", "10", "--workers", "1", "--no-status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "result         OK" in run.stdout
