"""A full disk, for real: each scenario runs in a private mount namespace (``unshare
--mount``) where the node's home is a small tmpfs, filled until the kernel answers ENOSPC.

Needs root (or user namespaces) and util-linux; where it cannot run it skips, except
under CI (``CI`` set), where it fails: the feature must be tested there.

Run as ``python -m tests.test_disk_full SCENARIO DIR`` inside the namespace, a scenario
asserts and exits 0; the pytest functions start it and check its exit status.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

#: The tmpfs a home lives on: room for a store and a few entries, filled by `fill`.
TMPFS_SIZE = "8m"
#: Bytes written at a time while filling the disk.
FILL_CHUNK = 64 * 1024
#: Seconds a scenario may take.
SCENARIO_TIMEOUT = 120


def _namespaces_work() -> str | None:
    """Why a private tmpfs cannot be mounted here, or None if it can."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "unshare/mount not installed"
    probe = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "size=64k",
            "tmpfs",
            "/mnt",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return (
        None
        if probe.returncode == 0
        else f"cannot mount a tmpfs in a mount namespace: {probe.stderr.strip()}"
    )


def _run_scenario(name: str, tmp_path: Path) -> None:
    why = _namespaces_work()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the disk-full tests must run in CI: {why}")
        pytest.skip(why)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            sys.executable,
            "-m",
            "tests.test_disk_full",
            name,
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=SCENARIO_TIMEOUT + 30,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"


def test_the_store_refuses_whole_writes_on_a_full_disk_and_resumes(tmp_path: Path) -> None:
    _run_scenario("store", tmp_path)


def test_offline_post_and_run_on_a_full_disk_are_one_line(tmp_path: Path) -> None:
    _run_scenario("offline", tmp_path)


def test_a_running_node_on_a_full_disk_stays_up_and_says_so(tmp_path: Path) -> None:
    _run_scenario("online", tmp_path)


# -- inside the namespace ----------------------------------------------------------------


def mount_tmpfs(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(path)], check=True
    )


def fill(directory: Path) -> Path:
    """Write a file in directory until the file system is full (to the last byte); return it."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        size = FILL_CHUNK
        for _ in range(100_000):  # bounded: chunks until full, then ever smaller ones
            try:
                os.write(fd, b"\0" * size)
            except OSError:
                if size == 1:
                    break
                size //= 2
    finally:
        os.close(fd)
    return filler


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: the disk is full: "), result.stderr
    return lines[0]


def public_handle(home: Path) -> str:
    from tests.process import p2pblog

    return p2pblog(home, "id").stdout.strip()


def scenario_offline(root: Path) -> None:
    from tests.process import p2pblog

    home = root / "full"
    mount_tmpfs(home)
    assert p2pblog(home, "init").returncode == 0
    assert p2pblog(home, "post", "before").returncode == 0
    filler = fill(home)
    one_error_line(p2pblog(home, "post", "while full"))
    one_error_line(p2pblog(home / "another", "init"))  # a key file cannot be written either
    one_error_line(p2pblog(home, "export", public_handle(home), str(home / "feed.out")))
    log = p2pblog(home, "log")  # reading still works
    assert log.returncode == 0 and "before" in log.stdout and "while full" not in log.stdout
    run = subprocess.run(
        [sys.executable, "-m", "p2pblog", "--home", str(home), "run", "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    one_error_line(run)  # it cannot write node.json: nobody could reach it
    filler.unlink()
    assert p2pblog(home, "post", "after").returncode == 0
    assert p2pblog(home, "verify").returncode == 0


def scenario_online(root: Path) -> None:
    from tests.nodes import run, start_node, wait_for
    from tests.process import p2pblog

    author_home = root / "author"
    home = root / "follower"
    mount_tmpfs(home)
    author = start_node(author_home)
    follower = start_node(home, "--bootstrap", author.bootstrap)
    try:
        run(home, "follow", author.handle)
        run(author_home, "post", "one")
        assert wait_for(lambda: "one" in run(home, "log", author.handle), 30)
        filler = fill(home)
        # Posting on the full node: one line, the node stays up.
        one_error_line(p2pblog(home, "post", "while full"))
        for i in range(5):
            run(author_home, "post", f"new {i}")

        def refused() -> bool:
            status = json.loads(run(home, "status", "--json"))
            storage = status["storage"]
            return bool(storage["full"] and storage["refused_writes"] >= 2)

        assert wait_for(refused, 30), run(home, "status", "--json")
        assert follower.process.poll() is None
        assert "Storage: FULL".lower() in run(home, "status").lower()
        filler.unlink()
        time.sleep(0.5)
        assert run(home, "post", "after").strip()
        status = json.loads(run(home, "status", "--json"))
        assert not status["storage"]["full"] and status["internal_errors"] == {}
        # The catch-up resumes once there is space again.
        assert wait_for(lambda: "new 4" in run(home, "log", author.handle), 60)
    finally:
        follower.stop()
        author.stop()
    assert follower.process.returncode == 0, follower.output()


def _is_full(store: Any) -> bool:
    return bool(store.full)  # (read again: mypy would keep the value it narrowed before)


def scenario_store(root: Path) -> None:
    from identity import Identity
    from p2pblog import actions
    from p2pblog.errors import StorageFull
    from p2pblog.store import Store

    home = root / "full"
    mount_tmpfs(home)
    author = Identity(bytes([9]) * 32)
    with Store(home / "store.sqlite3") as store:
        actions.post(store, author, "first", 1_000)
        filler = fill(home)
        posted = 0
        try:
            for i in range(10_000):  # the WAL may have room for a few: until refused
                actions.post(store, author, f"{i} " + "x" * 400, 2_000 + i)
                posted += 1
            raise AssertionError("never refused")
        except StorageFull as exc:
            assert str(exc).startswith("the disk is full: "), exc
        assert store.full and store.refused_writes == 1
        head = store.feed_state(author.public_key)
        assert head.latest_seq == posted + 1  # nothing half-written
        assert store.verify().ok
        # The tables that only cache what the network can say again skip the write.
        assert store.save_peer(bytes(32), "127.0.0.1", 1, 1.0) is False
        assert store.save_contacts([(bytes(20), "127.0.0.1", 1, 1.0)]) is False
        assert [i.entry.text for i in store.feed(author.public_key, limit=1)] != []  # reads work
        filler.unlink()
        actions.post(store, author, "after", 20_000)
        assert not _is_full(store) and store.feed_state(author.public_key).latest_seq == posted + 2
        assert store.save_peer(bytes(32), "127.0.0.1", 1, 1.0) is True
        assert store.verify().ok


if __name__ == "__main__":
    scenarios = {"offline": scenario_offline, "online": scenario_online, "store": scenario_store}
    scenarios[sys.argv[1]](Path(sys.argv[2]))
