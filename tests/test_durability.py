"""Durability: SIGKILL a process that appends posts in a loop; nothing acknowledged is lost.

The child prints each entry id after `Store.append` returned (the commit is
done); the parent kills it at a random moment, several times over the same
store, then checks that every acknowledged id is stored and that
``p2pblog verify`` finds the chain intact.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from p2pblog.home import Home
from p2pblog.store import Store
from tests.process import p2pblog

CHILD = """
import sys, time
from p2pblog.entry import POST, post_body
from p2pblog.home import Home
home = Home(__import__("pathlib").Path(sys.argv[1]))
identity = home.load_identity()
with home.open_store() as store:
    for i in range(1_000_000):
        entry = store.append(identity, POST, post_body(f"loop {i}"), time.time_ns() // 1_000_000)
        sys.stdout.write(entry.id.hex() + "\\n")
        sys.stdout.flush()
"""


def test_sigkill_loses_no_acknowledged_post(tmp_path: Path) -> None:
    home = tmp_path / "node"
    assert p2pblog(home, "init").returncode == 0
    seed = int(os.environ.get("P2PBLOG_TEST_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    acknowledged: list[str] = []
    for _round in range(4):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(home)], stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        target = rng.randrange(20, 120)
        deadline = time.monotonic() + 30
        while len(acknowledged) < target * (_round + 1) and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            acknowledged.append(line.strip())
        # Kill mid-loop, very likely inside a transaction.
        time.sleep(rng.random() * 0.01)
        child.send_signal(signal.SIGKILL)
        # Lines written before the kill were acknowledged too.
        acknowledged.extend(line.strip() for line in child.stdout if line.strip())
        child.wait(timeout=10)
        assert child.returncode == -signal.SIGKILL, f"seed {seed}"
    assert len(acknowledged) >= 80, f"seed {seed}: child produced too little"

    with Store(Home(home).store_file) as store:
        for entry_id in acknowledged:
            assert store.get(bytes.fromhex(entry_id)) is not None, f"seed {seed}: lost {entry_id}"
    result = p2pblog(home, "verify")
    assert result.returncode == 0, f"seed {seed}: {result.stdout}{result.stderr}"
    assert "ok" in result.stdout


def test_verify_command_reports_damage(tmp_path: Path) -> None:
    home = tmp_path / "node"
    p2pblog(home, "init")
    for i in range(3):
        assert p2pblog(home, "post", f"post {i}").returncode == 0
    db = sqlite3.connect(Home(home).store_file)
    db.execute("UPDATE entries SET raw = substr(raw, 1, length(raw) - 1) || x'21' WHERE seq = 2")
    db.commit()
    db.close()
    result = p2pblog(home, "verify")
    assert result.returncode == 1
    assert "seq 2" in result.stderr
