"""The node's log: one timestamped, levelled line per event (tracebacks: the first line),
and no ``\\r`` progress when stderr is not a terminal."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from p2pblog.daemon import log
from tests.nodes import NodeProcess, start_node
from tests.process import p2pblog

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (info|warn|error) \S")


def test_each_line_is_stamped_and_levelled(capsys: pytest.CaptureFixture[str]) -> None:
    log("connected to abc at 127.0.0.1:1")
    log("warning: none of the 1 bootstrap address(es) answered")
    log("refused input from x: too large")
    log("internal error while handling a datagram input (counted; the node goes on):")
    log("Traceback (most recent call last):\n  File 'x', line 1\nValueError: boom")
    log("something odd", "error")
    lines = capsys.readouterr().err.splitlines()
    levels = [LINE.match(line).group(1) for line in lines if LINE.match(line)]  # type: ignore[union-attr]
    assert levels == ["info", "warn", "warn", "error", "error", "error"]
    assert lines[0].endswith(" info connected to abc at 127.0.0.1:1")  # the message is kept whole
    assert lines[5:7] == ["  File 'x', line 1", "ValueError: boom"]  # a traceback goes on below


@pytest.mark.slow
def test_a_running_nodes_log_lines_are_stamped(tmp_path: Path) -> None:
    nodes: list[NodeProcess] = []
    try:
        a = start_node(tmp_path / "a")
        nodes.append(a)
        b = start_node(tmp_path / "b", "--bootstrap", a.bootstrap)
        nodes.append(b)
    finally:
        for node in nodes:
            node.stop()
    for node in nodes:
        lines = node.output().splitlines()
        assert any("listening on udp" in line for line in lines)
        assert lines and all(LINE.match(line) for line in lines), node.output()


def test_no_carriage_return_progress_off_a_terminal(tmp_path: Path) -> None:
    home = tmp_path / "a"
    assert p2pblog(home, "init").returncode == 0
    for i in range(3):
        assert p2pblog(home, "post", f"post {i}").returncode == 0
    feed = tmp_path / "feed.p2pf"
    handle = p2pblog(home, "id").stdout.strip()
    assert p2pblog(home, "export", handle, str(feed)).returncode == 0
    assert p2pblog(tmp_path / "b", "init").returncode == 0
    result = p2pblog(tmp_path / "b", "import", str(feed))
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
