"""Operator station: page times with 10,000 queued items, and the next item's latency in a browser.

    python -m benchmarks.station [--items 10000] [--requests 200] [--verdicts 100]

1. A sample line (``sorter.station.sample``): a simulated log of ``--items`` lines (100
   simulated items cycled with fresh ids) and its audit log, every item in the review
   queue (spot check 1.0), so the queue holds ``--items`` items.
2. The station served by uvicorn on loopback; each page requested ``--requests`` times
   over HTTP (items and images vary); the server's own time per request is read from the
   ``Server-Timing`` header the station sets (p50 / p95 / max).
3. Headless Chromium (the OS's, via Playwright) logs in and gives ``--verdicts`` verdicts by
   keyboard; for each, the time from the key press to the next item on screen with its
   images decoded (p50 / p95 / max).

Writes its section of docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks._report import write_section


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def _server_ms(resp) -> float:
    for part in resp.headers.get("server-timing", "").split(","):
        if part.strip().startswith("app;dur="):
            return float(part.strip()[8:])
    raise RuntimeError("no Server-Timing header")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--verdicts", type=int, default=100, help="verdicts by keyboard at each of two paces")
    ap.add_argument(
        "--think-ms",
        type=float,
        default=500.0,
        help="an operator's time to look at an item before the key (dozens a minute is 1-3 s)",
    )
    ap.add_argument("--no-write", action="store_true", help="print only; do not update docs/performance.md")
    args = ap.parse_args(argv)

    from sorter.station.app import create_app
    from sorter.station.auth import hash_password
    from sorter.station.cli import settings_from_config
    from sorter.station.sample import make_sample_line
    from tests.station.browserkit import browser, browser_login, serve, verdict_by_key

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="station-bench-") as tmp:
        t0 = time.perf_counter()
        line = make_sample_line(Path(tmp) / "line", items=args.items, base_items=100, seed=5)
        t_make = time.perf_counter() - t0
        settings = settings_from_config(str(line.config), [], None, spot_check=1.0)
        app = create_app(settings, watch=True)
        st = app.state.station
        st.store.set_user("bench", "operator", hash_password("benchmark password"))
        t0 = time.perf_counter()
        st.watcher.refresh()  # the first sync: index the log, queue every item
        t_first_sync = time.perf_counter() - t0
        queued = st.store.queue_counts()["open"]
        refresh = []
        for _ in range(20):
            t0 = time.perf_counter()
            st.watcher.refresh()
            refresh.append((time.perf_counter() - t0) * 1000)

        with serve(app) as base:
            import httpx

            with httpx.Client(base_url=base) as c:
                import re

                page = c.get("/login").text
                tok = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
                c.post("/login", data={"user": "bench", "password": "benchmark password", "csrf": tok})
                ids = [
                    q.item_id
                    for q in (
                        st.store.next_open(order="belt", after=k)
                        for k in range(0, args.items, max(1, args.items // args.requests))
                    )
                    if q is not None
                ]
                pages: dict[str, list[float]] = {}

                def hit(name: str, url: str) -> None:
                    r = c.get(url)
                    if r.status_code not in (200, 204):
                        raise RuntimeError(f"{url}: HTTP {r.status_code}")
                    pages.setdefault(name, []).append(_server_ms(r))

                for k in range(args.requests):
                    item = ids[k % len(ids)]
                    hit("review (queue page)", "/review")
                    hit("review/next (prefetch fragment)", f"/review/next?cursor={args.items - k}")
                    hit("review/item (one item, measured)", f"/review/item/{item}")
                    hit("image material, first request", f"/image/{item}/material.png")
                    hit("image material, cached", f"/image/{item}/material.png")
                    hit("status.json (polled)", "/status.json")
                    hit("status", "/status")
                for _ in range(max(5, args.requests // 20)):
                    hit("models", "/models")

            paced: list[float] = []
            rushed: list[float] = []
            with browser() as b:
                pg = b.new_page(viewport={"width": 1280, "height": 900})
                browser_login(pg, base, "bench", "benchmark password")
                pg.wait_for_selector("#current article.item")
                for think, out in ((args.think_ms, paced), (0.0, rushed)):
                    for k in range(args.verdicts):
                        time.sleep(think / 1000)
                        _, _, ms = verdict_by_key(pg, "lio"[k % 3])
                        if ms is not None:
                            out.append(ms)
            for _ in range(200):
                if st.store.verdict_count() >= 2 * args.verdicts:
                    break
                time.sleep(0.05)
            recorded = st.store.verdict_count()
    load_after = os.getloadavg()

    rows = ["| page | requests | p50 ms | p95 ms | max ms |", "|---|---:|---:|---:|---:|"]
    for name, xs in pages.items():
        rows.append(f"| {name} | {len(xs)} | {statistics.median(xs):.1f} | {_pct(xs, 95):.1f} | {max(xs):.1f} |")
    md = f"""## Operator station (issue 16)

`python -m benchmarks.station --items {args.items} --requests {args.requests} --verdicts {args.verdicts} --think-ms {args.think_ms:.0f}`:
the station on a sample line whose review queue holds **{queued:,} items** (a simulated log of
{args.items:,} lines, every item queued), served by uvicorn on loopback; server time per request from
the station's `Server-Timing` header.

{chr(10).join(rows)}

- Next item in the browser (headless Chromium on the same machine; key press -> next item on screen with
  its images decoded; target 100 ms), verdicts by keyboard:
  - at an operator's pace ({args.think_ms:.0f} ms look before each key), {len(paced)} verdicts: p50
    **{statistics.median(paced):.1f} ms**, p95 **{_pct(paced, 95):.1f} ms**, max {max(paced):.1f} ms;
  - back to back (the key pressed as soon as the item is shown, so the next item's prefetch may not be
    done), {len(rushed)} verdicts: p50 {statistics.median(rushed):.1f} ms, p95 {_pct(rushed, 95):.1f} ms,
    max {max(rushed):.1f} ms;
  - {recorded} verdicts recorded (all of them).
- Watcher (reads new audit rows, syncs the queue, indexes the log; off the request path): first sync of
  {args.items:,} rows {t_first_sync * 1000:.0f} ms, then per refresh p50 {statistics.median(refresh):.1f} ms.
- Building the sample line took {t_make:.0f} s (not part of the figures).
- Machine: {os.cpu_count()} cores, `uname -m` {platform.machine()}, load average {load_before[0]:.2f} before and
  {load_after[0]:.2f} after the run (the machine is shared with other jobs).
"""
    print(md)
    if not args.no_write:
        write_section("station", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
