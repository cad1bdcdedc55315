"""The usage errors a newcomer hits first (issue 16), each one `Error:` line that says what to do:
unquoted post text, a reply to an id not held here, a fingerprint given for a handle, the
"start it with" hint keeping the user's --home, and "not running" said only when it is true."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from identity import decode_handle
from identity.handle import fingerprint
from tests.nodes import wait_for
from tests.process import p2pblog


def _init(home: Path) -> str:
    result = p2pblog(home, "init")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _one_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _texts(home: Path) -> list[str]:
    result = p2pblog(home, "log", "--json")
    return [e["text"] for e in json.loads(result.stdout) if e["kind"] == "post"]


def test_post_joins_unquoted_words(tmp_path: Path) -> None:
    home = tmp_path / "a"
    _init(home)
    assert p2pblog(home, "post", "hello", "world").returncode == 0
    assert p2pblog(home, "post", "kept  as", "given").returncode == 0
    assert _texts(home) == ["kept  as given", "hello world"]
    result = p2pblog(home, "post")
    assert result.returncode == 2 and "Missing argument" in result.stderr


def test_a_reply_to_an_id_not_held_is_refused_unless_forced(tmp_path: Path) -> None:
    home = tmp_path / "a"
    _init(home)
    unknown = "ab" * 32
    _one_error(p2pblog(home, "post", "a reply", "--reply-to", unknown), "is held here", "--force")
    assert _texts(home) == []
    assert p2pblog(home, "post", "a reply", "--reply-to", unknown, "--force").returncode == 0
    assert _texts(home) == ["a reply"]
    held = p2pblog(home, "log", "--json")
    parent = json.loads(held.stdout)[0]["id"]
    assert p2pblog(home, "post", "held", "--reply-to", parent).returncode == 0


def test_a_fingerprint_is_not_a_handle(tmp_path: Path) -> None:
    home, other = tmp_path / "a", tmp_path / "b"
    _init(home)
    stranger = fingerprint(decode_handle(_init(other)))
    line = _one_error(p2pblog(home, "follow", stranger), "is a fingerprint, not a handle")
    assert "p2pblog resolve NAME" in line and f"NAME~{stranger}" in line
    # A feed held here with that fingerprint: the message names its handle.
    handle = p2pblog(other, "id").stdout.strip()
    assert p2pblog(home, "follow", handle).returncode == 0
    assert p2pblog(other, "post", "hi").returncode == 0
    feed = tmp_path / "b.feed"
    assert p2pblog(other, "export", handle, str(feed)).returncode == 0
    assert p2pblog(home, "import", str(feed)).returncode == 0
    _one_error(p2pblog(home, "unfollow", stranger), "is a fingerprint, not a handle", handle)


def test_the_start_hint_keeps_the_home_the_user_gave(tmp_path: Path) -> None:
    home = tmp_path / "my node"
    _init(home)
    _one_error(p2pblog(home, "status"), f"start it with: p2pblog --home '{home}' run")
    from_env = p2pblog(None, "status", env={"P2PBLOG_HOME": str(home)})
    _one_error(from_env, "start it with: p2pblog run")


def test_a_stale_node_json_is_not_running(tmp_path: Path) -> None:
    home = tmp_path / "a"
    _init(home)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    (home / "node.json").write_text(json.dumps({"pid": pid, "control": ["127.0.0.1", 9], "token": "x"}))
    _one_error(p2pblog(home, "status"), "node not running", "stale")


def _in_new_netns() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _in_new_netns(), reason="needs `unshare -n` (root or user namespaces)")
def test_a_node_in_another_network_namespace_is_not_called_not_running(tmp_path: Path) -> None:
    home = tmp_path / "a"
    _init(home)
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PBLOG_")}
    script = (
        "ip link set lo up; exec "
        + " ".join([sys.executable, "-m", "p2pblog", "--home", str(home)])
        + " run --no-web --listen 127.0.0.1:0"
    )
    node = subprocess.Popen(
        ["unshare", "-n", "sh", "-c", script],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        assert wait_for(lambda: (home / "node.json").exists(), 30)
        line = _one_error(p2pblog(home, "status"), "another network namespace")
        assert "not running" not in line
    finally:
        node.terminate()
        node.wait(timeout=30)


def test_node_json_naming_this_very_process_is_stale(tmp_path: Path) -> None:
    """A container whose entrypoint is `p2pblog run` is PID 1 at every start: the node.json
    its killed predecessor left names the new process itself, which is not a running node."""
    import json
    import os

    from p2pblog import control

    home = tmp_path / "n"
    home.mkdir()
    (home / "node.json").write_text(
        json.dumps({"pid": os.getpid(), "control": ["127.0.0.1", 9], "token": "x", "handle": "@x"})
    )
    with pytest.raises(control.NodeNotRunning):
        control.call(home, "status", timeout=5)
