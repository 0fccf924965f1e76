"""sorter labels export: operator verdicts -> a labelled sorter-log/1 log that sorter train reads as is."""

from __future__ import annotations

import json
import time

import pytest

from sorter.cli import main
from sorter.logformat import iter_log, load_item, read_meta
from sorter.station.export import export_labels, parse_since

from .conftest import make_station


def _play_operator(app, user="ana", limit=None):
    """Verdicts from the simulator's truth, as a careful operator would give them."""
    st = app.state.station
    st.watcher.refresh()
    n = 0
    while (q := st.store.next_open(order="belt")) is not None and (limit is None or n < limit):
        rec = st.log.record(q.item_id)
        st.store.add_verdict(q.item_id, rec.label, damaged=bool(rec.extra.get("damaged")), note="", user=user)
        n += 1
    return n


def test_export_writes_a_labelled_log_with_the_current_verdicts(line, tmp_path, capsys):
    app = make_station(line, spot_check=0.3)
    n = _play_operator(app)
    st = app.state.station
    some = st.store.labelled()[0][0].item_id
    st.store.add_verdict(some, "other", damaged=False, note="correction", user="eng")
    out = tmp_path / "labels"
    assert main(["labels", "export", "--config", str(line.config), "--out", str(out)]) == 0
    assert f"exported {n} labelled items" in capsys.readouterr().out
    lines = list(iter_log(out))
    assert len(lines) == n and all(ln.record is not None for ln in lines)
    by_id = {ln.record.item_id: ln.record for ln in lines}
    assert by_id[some].label == "other" and by_id[some].extra["verdict"]["corrections"] == 1
    meta = read_meta(out)
    for rec in by_id.values():
        assert rec.label in ("lead_acid", "li_ion", "other")
        assert isinstance(rec.extra["damaged"], bool)
        item = load_item(rec, out, meta)
        assert not item.problems, item.problems
        for name in ("xray_low", "xray_high", "rgb"):
            rel = getattr(rec, name)
            if rel:
                assert (out / rel).resolve().is_relative_to(out.resolve())
    # a second export into the same directory is refused, nothing half-written is left behind
    assert main(["labels", "export", "--config", str(line.config), "--out", str(out)]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".labels.partial")]


def test_export_since_only_takes_recent_verdicts(line, tmp_path):
    app = make_station(line, spot_check=0.3)
    st = app.state.station
    _play_operator(app, limit=3)
    cut = time.time()
    time.sleep(0.01)
    n_new = _play_operator(app, limit=4)
    summary = export_labels(st.store, st.log, tmp_path / "recent", since=cut)
    assert summary.items == n_new == 4
    assert parse_since("2026-01-01T00:00:00Z") == 1767225600.0
    assert parse_since("1h", now=7200.0) == 3600.0


def test_export_refuses_bad_input_with_a_message(line, tmp_path, capsys):
    make_station(line)
    assert (
        main(
            ["labels", "export", "--config", str(line.config), "--out", str(tmp_path / "x"), "--since", "yesterday-ish"]
        )
        == 2
    )
    assert "--since 'yesterday-ish' is not a time" in capsys.readouterr().err
    assert main(["labels", "export", "--config", str(line.config), "--out", str(tmp_path / "y")]) == 2
    assert "no verdicts to export" in capsys.readouterr().err


@pytest.mark.slow
def test_train_reads_the_export_as_is(line, tmp_path, capsys):
    app = make_station(line, spot_check=1.0)
    assert _play_operator(app) == line.items
    out = tmp_path / "labels"
    export_labels(app.state.station.store, app.state.station.log, out, link=True)
    model_dir = tmp_path / "model"
    assert main(["train", str(out), "--out", str(model_dir), "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "held-out:" in printed
    from sorter.model import load_model

    model = load_model(model_dir)
    assert model.manifest["training"]["logs"] == ["labels"]
    assert model.manifest["training"]["usable"] == line.items
    counts = model.manifest["training"]["class_counts"]
    truth = [json.loads(x)["label"] for x in (line.log_dir / "items.jsonl").read_text().splitlines()]
    assert counts == {c: truth.count(c) for c in ("lead_acid", "li_ion", "other")}


def test_hard_links_fall_back_to_copies(line, tmp_path, monkeypatch):
    app = make_station(line, spot_check=0.3)
    _play_operator(app, limit=2)

    def no_link(*a, **k):
        raise OSError("cross-device link")

    monkeypatch.setattr("os.link", no_link)
    s = export_labels(app.state.station.store, app.state.station.log, tmp_path / "e", link=True)
    assert s.items == 2 and s.images > 0


@pytest.mark.parametrize("bad", ["../outside.png", "/etc/hostname"])
def test_export_drops_images_that_leave_the_log(line, tmp_path, bad):
    path = line.log_dir / "items.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    for r in rows:
        r["rgb"] = bad
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (line.root / "outside.png").write_bytes(b"not to be copied")
    app = make_station(line, spot_check=0.3)
    st = app.state.station
    st.watcher.refresh()
    q = st.store.next_open(order="belt")
    st.store.add_verdict(q.item_id, "li_ion", damaged=False, note="", user="ana")
    s = export_labels(st.store, st.log, tmp_path / "e")
    assert s.items == 1 and len(s.images_refused) == 1
    rec = next(iter_log(tmp_path / "e")).record
    assert rec.rgb is None and rec.xray_low is not None
    assert not any(p.read_bytes() == b"not to be copied" for p in (tmp_path / "e" / "images").iterdir())
