"""Driving the station in a real headless Chromium (the OS's, through Playwright's Python package).

Shared by the browser test and ``benchmarks/station.py``.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str | None:
    """Debian's Chromium (``apt-get install chromium``), or $SORTER_CHROMIUM."""
    for cand in (
        os.environ.get("SORTER_CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if cand and Path(cand).is_file():
            return cand
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(app):
    """Serve an ASGI app with uvicorn on a free loopback port, in a thread; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    if not server.started:
        raise RuntimeError("the station did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def browser():
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    if path is None:
        raise RuntimeError("no Chromium: apt-get install chromium chromium-driver")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()


def browser_login(page, base: str, user: str, password: str) -> None:
    page.goto(base + "/review")
    page.fill("input[name=user]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/review")


def verdict_by_key(page, key: str, timeout_ms: int = 10_000) -> tuple[str, str | None, float]:
    """Press a verdict key; wait for the next item; returns (decided id, next id, ms from key to next item ready)."""
    old = page.get_attribute("#current article.item", "data-item-id")
    page.evaluate("delete document.body.dataset.readyAt")
    page.keyboard.press(key)
    page.wait_for_function(
        "old => { const a = document.querySelector('#current article.item');"
        " return (a ? a.dataset.itemId : null) !== old && (!a || document.body.dataset.readyAt); }",
        arg=old,
        timeout=timeout_ms,
    )
    new = (
        page.get_attribute("#current article.item", "data-item-id")
        if page.query_selector("#current article.item")
        else None
    )
    ms = page.evaluate(
        "document.body.dataset.readyAt ? Number(document.body.dataset.readyAt)"
        " - Number(document.body.dataset.verdictAt) : null"
    )
    return old, new, ms
