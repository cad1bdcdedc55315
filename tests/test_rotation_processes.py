"""Rotating and recovering an identity's root key, with real processes (issue 15).

R posts; C follows R's handle.  ``identity rotate`` commits R to a recovery
key (shown once as a phrase), then, given that phrase, makes it the root:
C shows the next post under R's handle with nothing to do.  Then a thief
copies R's home and posts; the owner runs ``identity recover`` with the new
recovery phrase: C learns of it through the DHT (its lookups of followed
identities' rotations, shortened here with the hidden ``--keyevent-poll``)
and refuses the thief's later posts, while the owner's arrive.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from tests.nodes import NodeProcess, cli_json, init_home, run, start_node, wait_for
from tests.process import p2pblog


def texts(home: Path) -> dict[str, dict[str, Any]]:
    docs = cli_json(home, "timeline", "--limit", "200")
    assert isinstance(docs, list)
    return {d["text"]: d for d in docs}


def recovery_phrase(stderr: str) -> str:
    found = re.search(r"RECOVERY PHRASE.*?\n\n\s+((?:[a-z]+ ){23}[a-z]+)\n", stderr, re.S)
    assert found, stderr
    return found.group(1)


def test_rotate_then_recover_after_a_theft(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    handle = init_home(tmp_path / "r")
    r = start_node(tmp_path / "r")
    nodes.append(r)
    c = start_node(tmp_path / "c", "--bootstrap", r.bootstrap, "--keyevent-poll", "2")
    nodes.append(c)
    run(c.home, "follow", handle)
    run(r.home, "post", "one")
    assert wait_for(lambda: "one" in texts(c.home), timeout=30), c.output()

    # Rotate: first the commitment, then the rotation to the committed key.
    assert r.stop() == 0
    first = p2pblog(r.home, "identity", "rotate")
    assert first.returncode == 0 and first.stdout.strip().splitlines()[-1] == handle, first.stderr
    second = p2pblog(r.home, "identity", "rotate", input=recovery_phrase(first.stderr))
    assert second.returncode == 0, second.stderr
    later_phrase = recovery_phrase(second.stderr)
    assert list((tmp_path / "r").glob("identity.key.retired-*"))
    r = start_node(tmp_path / "r", "--bootstrap", c.bootstrap)
    nodes.append(r)
    assert run(r.home, "id") == handle
    run(r.home, "post", "two")
    assert wait_for(lambda: "two" in texts(c.home), timeout=60), c.output() + r.output()
    assert texts(c.home)["two"]["author"] == handle != texts(c.home)["two"]["device"]

    # A thief copies the home (key and store) and posts; the owner's machine is off.
    assert r.stop() == 0
    shutil.copytree(tmp_path / "r", tmp_path / "t")
    (tmp_path / "t" / "node.json").unlink(missing_ok=True)
    t = start_node(tmp_path / "t", "--bootstrap", c.bootstrap)
    nodes.append(t)
    run(t.home, "post", "thief one")
    assert wait_for(lambda: "thief one" in texts(c.home), timeout=60), c.output()
    cut_before_theft = texts(c.home)["two"]["seq"]

    # The owner takes the identity back with the recovery phrase, cutting after "two".
    recovered = p2pblog(r.home, "identity", "recover", "--cut", str(cut_before_theft), input=later_phrase)
    assert recovered.returncode == 0, recovered.stderr
    r = start_node(tmp_path / "r", "--bootstrap", c.bootstrap)
    nodes.append(r)
    run(r.home, "post", "the owner is back")
    assert wait_for(lambda: "the owner is back" in texts(c.home), timeout=60), c.output() + r.output()
    run(t.home, "post", "thief two")
    run(r.home, "post", "the owner again")
    assert wait_for(lambda: "the owner again" in texts(c.home), timeout=60), c.output()
    shown = texts(c.home)
    assert "thief two" not in shown and "thief one" not in shown  # cut after "two"
    assert {"one", "two", "the owner is back"} <= set(shown)
    assert all(d["author"] == handle for d in shown.values() if d["text"] != "")
    for node in (t, r, c):
        assert node.stop() == 0, node.output()
