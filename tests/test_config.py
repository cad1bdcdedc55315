"""HOME/p2pblog.toml (`p2pblog.config`): every key parsed and checked once, one clear error
naming the file and the key for anything wrong, command-line options over the file, and a
node that runs with what the file says."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from identity.limits import MENTION_WORK
from p2pblog.config import (
    COMMAND_LINE,
    DEFAULT,
    DEFAULTS,
    ConfigError,
    Settings,
    from_document,
    load,
    overridden,
)
from p2pblog.daemon import LogLimiter
from tests.process import p2pblog


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p2pblog.toml"
    path.write_text(text)
    return path


def test_no_file_is_every_default(tmp_path: Path) -> None:
    settings = load(tmp_path / "p2pblog.toml")
    assert settings == Settings() and settings.mention_work == MENTION_WORK
    assert {source for _, _, source in settings.shown()} == {DEFAULT}


def test_every_key(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        listen = "0.0.0.0:7800"
        advertise = "blog.example.org"
        bootstrap = ["203.0.113.5:7710", "[2001:db8::1]:7710"]
        web = "127.0.0.1:8080"
        mention_work = 20

        [limits]
        log_every = 2.5
        log_budget = 7
        """,
    )
    settings = load(path)
    assert settings.listen == ("0.0.0.0", 7800)
    assert settings.advertise == "blog.example.org"
    assert settings.bootstrap == (("203.0.113.5", 7710), ("2001:db8::1", 7710))
    assert settings.web == ("127.0.0.1", 8080)
    assert (settings.mention_work, settings.log_every, settings.log_budget) == (20, 2.5, 7)
    assert all(source == str(path) for _, _, source in settings.shown())


def test_web_false_turns_the_web_app_off() -> None:
    assert from_document({"web": False}, "f").web is None
    assert from_document({"advertise": "192.0.2.1"}, "f").advertise == "192.0.2.1"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"listne": "x"}, "unknown key listne"),
        ({"limits": {"log_evry": 1}}, "unknown key limits.log_evry"),
        ({"log_budget": 5}, "unknown key log_budget"),  # a limit belongs in [limits]
        ({"limits": 5}, "limits: expected a table"),
        ({"listen": 7710}, "listen: expected a string"),
        ({"listen": "nowhere"}, "listen: expected HOST:PORT"),
        ({"web": True}, "web: expected HOST:PORT or false"),
        ({"web": "127.0.0.1"}, "web: expected HOST:PORT or false"),
        ({"advertise": "192.0.2.1:7710"}, "advertise: '192.0.2.1:7710' is neither"),
        ({"bootstrap": "203.0.113.5:7710"}, "bootstrap: expected a list"),
        ({"bootstrap": ["203.0.113.5"]}, "bootstrap: expected HOST:PORT"),
        ({"mention_work": 33}, "mention_work: expected 0 to 32, got 33"),
        ({"mention_work": "16"}, "mention_work: expected a whole number"),
        ({"mention_work": True}, "mention_work: expected a whole number"),
        ({"limits": {"log_every": 0}}, "limits.log_every: expected more than 0"),
        ({"limits": {"log_every": float("nan")}}, "limits.log_every: expected a number"),
        ({"limits": {"log_budget": 0}}, "limits.log_budget: expected 1 to"),
    ],
)
def test_a_mistake_is_one_error_naming_file_and_key(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_document(doc, "/home/x/p2pblog.toml")
    text = str(caught.value)
    assert text.startswith("/home/x/p2pblog.toml: ") and message in text, text
    assert "\n" not in text


def test_a_file_that_is_not_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"p2pblog.toml: not valid TOML: .*line 1"):
        load(_write(tmp_path, "[limits\nweb = false\n"))
    (tmp_path / "p2pblog.toml").write_bytes(b"web = '\xff'")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(tmp_path / "p2pblog.toml")


def test_the_command_line_overrides_the_file() -> None:
    settings = overridden(from_document({"listen": ":7800", "web": False}, "f"), listen=("127.0.0.1", 1))
    assert settings.listen == ("127.0.0.1", 1) and settings.source("listen") == COMMAND_LINE
    assert settings.web is None and settings.source("web") == "f"
    assert settings.source("bootstrap") == DEFAULT and settings.bootstrap == DEFAULTS.bootstrap


def test_the_log_limits_apply() -> None:
    now = [0.0]
    limiter = LogLimiter(lambda: now[0], every=1.0, budget=2)
    assert [limiter.allow(k) for k in "abc"] == ["", "", None]  # the budget
    now[0] = 1.0
    assert limiter.allow("a") == "" and limiter.allow("c") == " (and 1 more like it)"


# --- the command line ---------------------------------------------------------------------


def test_print_config_says_where_each_value_comes_from(tmp_path: Path) -> None:
    home = tmp_path / "node"
    assert p2pblog(home, "init").returncode == 0
    (home / "p2pblog.toml").write_text('listen = "127.0.0.1:7800"\nweb = false\n[limits]\nlog_budget = 9\n')
    shown = p2pblog(home, "run", "--print-config", "--listen", "127.0.0.1:0", "--mention-work", "3")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert 'listen = "127.0.0.1:0"  # command line' in lines
    assert "mention_work = 3  # command line" in lines
    assert f"web = false  # {home / 'p2pblog.toml'}" in lines
    assert f"limits.log_budget = 9  # {home / 'p2pblog.toml'}" in lines
    assert "bootstrap = []  # default" in lines
    same = p2pblog(home, "config", "show")
    assert same.returncode == 0 and 'listen = "127.0.0.1:7800"' in same.stdout


@pytest.mark.parametrize("command", [("run",), ("config", "show"), ("run", "--print-config")])
def test_a_bad_file_is_one_error_line(tmp_path: Path, command: tuple[str, ...]) -> None:
    home = tmp_path / "node"
    assert p2pblog(home, "init").returncode == 0
    (home / "p2pblog.toml").write_text("mention_work = 99\n")
    result = p2pblog(home, *command)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"Error: {home / 'p2pblog.toml'}: mention_work: expected 0 to 32, got 99"
    )


@pytest.mark.slow
def test_a_node_runs_with_the_file_s_settings(tmp_path: Path) -> None:
    home = tmp_path / "node"
    assert p2pblog(home, "init").returncode == 0
    (home / "p2pblog.toml").write_text('listen = "127.0.0.1:0"\nadvertise = "127.0.0.1"\nweb = false\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PBLOG_")}
    log = (tmp_path / "node.log").open("w")
    node = subprocess.Popen(
        [sys.executable, "-m", "p2pblog", "--home", str(home), "run"],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while not (home / "node.json").exists() and time.monotonic() < deadline:
            assert node.poll() is None, (tmp_path / "node.log").read_text()
            time.sleep(0.1)
        state = json.loads((home / "node.json").read_text())
        assert state["dht"][0] == "127.0.0.1" and state["dht"][1] != 7710  # port 0: a free one
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=30)
        log.close()
    output = (tmp_path / "node.log").read_text()
    assert "web app at" not in output  # web = false
    assert node.returncode == 0, output


def test_a_file_nested_too_deeply_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "p2pblog.toml"
    path.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(path)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('listen = "h:1:2"', "listen"),
        ('listen = "example.org:7710"', "listen"),
        ('bootstrap = ["192.0.2.1:0"]', "bootstrap"),
        ('advertise = "0.0.0.0"', "advertise"),
    ],
)
def test_addresses_that_would_fail_later_are_refused_in_the_file(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "p2pblog.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=key):
        load(path)
