"""Progress: a bar on a terminal, plain lines every few seconds otherwise, stages announced."""

from __future__ import annotations

import io

from sorter.progress import Progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    p = Progress("measure", total=10, stream=out, every_s=0.0)
    p.update(4)
    p.stage("fitting the classifier")
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("measure: 4/10 items (40 %)")
    assert lines[1] == "measure: fitting the classifier"


def test_no_line_before_the_interval_and_nothing_when_disabled():
    out = io.StringIO()
    p = Progress("score", total=10, stream=out, every_s=3600.0)
    p.update(5)
    assert out.getvalue() == ""
    q = Progress("score", total=10, stream=out, every_s=0.0, enabled=False)
    q.update(5)
    q.stage("x")
    assert out.getvalue() == ""


def test_a_bar_on_a_terminal():
    out = _Tty()
    with Progress("score", total=10, stream=out) as p:
        p.update(10)
        p.stage("writing")
    text = out.getvalue()
    assert "10/10" in text and "score: writing" in text
