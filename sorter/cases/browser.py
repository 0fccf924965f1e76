"""Render a manifest page in a real headless Chromium: its text, a screenshot, a PDF.

Used by the tests (the page a printer gets holds the items and the totals) and
to regenerate the screenshot in ``docs/``::

    python -m sorter.cases.browser case-ID.html --png docs/images/case-manifest.png

Needs Playwright's Python package and an installed Chromium (Debian: ``apt-get
install chromium``; Playwright's own browser download is not used).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
# A4 at 96 px per inch, the page the manifest's @page rule prints on
A4_VIEWPORT = {"width": 794, "height": 1123}


def find_chromium() -> str | None:
    """The Chromium executable: ``$SORTER_CHROMIUM``, else ``chromium`` on the PATH, else None."""
    env = os.environ.get("SORTER_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


@dataclass(frozen=True)
class Rendered:
    text: str  # the page's visible text (``inner_text`` of the body)
    png: Path | None  # the screenshot, if asked for
    pdf_pages: int | None  # pages of the printed PDF, if asked for


def render(
    html: str | Path,
    *,
    png: str | Path | None = None,
    pdf: str | Path | None = None,
    executable: str | None = None,
    scale: float = 1.0,
) -> Rendered:
    """Open ``html`` (a file) in headless Chromium; return its text, and write a full-page
    screenshot (``png``) and the printed PDF (``pdf``, A4 with the page's print CSS)."""
    from playwright.sync_api import sync_playwright

    exe = executable or find_chromium()
    if exe is None:
        raise FileNotFoundError(
            "no Chromium found: install it (Debian: apt-get install chromium) or set SORTER_CHROMIUM"
        )
    url = Path(html).resolve().as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=list(CHROMIUM_FLAGS))
        try:
            page = browser.new_page(viewport=A4_VIEWPORT, device_scale_factor=scale)
            page.goto(url, wait_until="load")
            text = page.inner_text("body")
            if png is not None:
                page.screenshot(path=str(png), full_page=True)
            pages = None
            if pdf is not None:
                page.emulate_media(media="print")
                data = page.pdf(path=str(pdf), format="A4", print_background=True, prefer_css_page_size=True)
                pages = count_pdf_pages(data)
            return Rendered(text, Path(png) if png else None, pages)
        finally:
            browser.close()


def count_pdf_pages(data: bytes) -> int:
    """Pages in a PDF Chromium printed (its page objects are ``/Type /Page``, uncompressed)."""
    import re

    return len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", data))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sorter.cases.browser", description=__doc__.split("\n\n")[0])
    ap.add_argument("html", help="a manifest page (case-ID.html)")
    ap.add_argument("--png", help="write a full-page screenshot here")
    ap.add_argument("--pdf", help="write the printed page (A4) here")
    ap.add_argument("--scale", type=float, default=1.0, help="device pixels per CSS pixel (default 1)")
    args = ap.parse_args(argv)
    r = render(args.html, png=args.png, pdf=args.pdf, scale=args.scale)
    print(
        f"{len(r.text)} characters of text"
        + (f", screenshot {r.png}" if r.png else "")
        + (f", PDF of {r.pdf_pages} page(s)" if r.pdf_pages is not None else "")
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
