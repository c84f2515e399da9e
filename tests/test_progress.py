"""radlint.flows.progress: a bar on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import io

from radlint.flows.progress import Progress


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    p = Progress(100, 10, 3, stream=out, interval=3600, tty=False)
    p.update(4, 4)
    p.update(4, 3)
    p.update(2, 2)
    lines = out.getvalue().splitlines()
    # the first update prints, the next is within the interval, the last always prints
    assert len(lines) == 2
    assert lines[-1].startswith("radlint: listed 100  shards 3/3  objects 10/10")
    assert "\r" not in out.getvalue()


def test_bar_on_a_terminal():
    out = io.StringIO()
    p = Progress(50, 20, 2, stream=out, tty=True)
    p.update(10)
    assert out.getvalue().startswith("\r[###############---------------]")
    p.update(10)
    assert out.getvalue().endswith("\n") and "shards 2/2" in out.getvalue()
    assert p.eta_seconds() == 0
