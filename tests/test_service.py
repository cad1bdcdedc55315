"""`p2pblog service install`: the systemd unit's text, where it is written, and (where
`systemd-analyze` exists) that systemd accepts it.  Nothing is enabled or started."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from cli.service import UnsafePath, command_line, quoted, unit_text
from tests.process import p2pblog


def _settings(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    return dict(pairs)


def test_a_system_unit_runs_this_installation_as_the_home_s_owner(tmp_path: Path) -> None:
    home = Path("/srv/p2pblog/home")
    unit = _settings(unit_text(home, user=False, command=["/opt/venv/bin/p2pblog"], owner="blog"))
    assert unit["ExecStart"] == "/opt/venv/bin/p2pblog --home /srv/p2pblog/home run"
    assert unit["User"] == "blog"
    assert unit["Restart"] == "on-failure"
    assert unit["NoNewPrivileges"] == "yes" and unit["PrivateTmp"] == "yes"
    assert unit["ProtectSystem"] == "strict" and unit["ReadWritePaths"] == "/srv/p2pblog/home"
    assert unit["WantedBy"] == "multi-user.target"


@pytest.mark.parametrize(
    "home",
    [
        '/srv/a\nExecStartPre=+/bin/sh -c "id>/tmp/pwn"\n#',  # a crafted name: a directive, as root
        "/srv/p2pblog home",  # systemd takes EnvironmentFile= with a space for a relative path
        "/srv/ab$c",
        "/srv/a\\b",
        "/srv/a\tb",
    ],
)
def test_a_home_a_unit_cannot_name_safely_is_refused(home: str) -> None:
    with pytest.raises(UnsafePath, match="cannot name safely"):
        unit_text(Path(home), user=False, command=["/opt/venv/bin/p2pblog"], owner="blog")
    with pytest.raises(UnsafePath):
        unit_text(Path("/srv/ok"), user=True, command=[f"{home}/bin/p2pblog"])


def test_a_user_unit(tmp_path: Path) -> None:
    unit = _settings(
        unit_text(Path("/home/ann/.local/share/p2pblog"), user=True, command=["/usr/bin/p2pblog"])
    )
    assert unit["ExecStart"] == "/usr/bin/p2pblog --home /home/ann/.local/share/p2pblog run"
    assert unit["NoNewPrivileges"] == "yes" and unit["PrivateTmp"] == "yes"
    assert "User" not in unit and "ProtectSystem" not in unit
    assert unit["WantedBy"] == "default.target"


def test_systemd_specifiers_and_quotes_are_escaped() -> None:
    assert quoted("/a%b$c") == "/a%%b$$c"
    assert quoted('/x y/"q"') == '"/x y/\\"q\\""'


def test_the_command_is_this_interpreter_s_by_absolute_path() -> None:
    command = command_line()
    assert Path(command[0]).is_absolute() and os.access(command[0], os.X_OK)


def test_install_writes_the_unit_and_never_replaces_another(tmp_path: Path) -> None:
    home = tmp_path / "node"
    assert p2pblog(home, "init").returncode == 0
    units = tmp_path / "units"
    result = p2pblog(home, "service", "install", "--user", "--directory", str(units))
    assert result.returncode == 0, result.stderr
    written = (units / "p2pblog.service").read_text()
    assert f"--home {home} run" in written and "systemctl --user" in result.stderr
    printed = p2pblog(home, "service", "install", "--user", "--print")
    assert printed.stdout == written
    assert p2pblog(home, "service", "install", "--user", "--directory", str(units)).returncode == 0
    (units / "p2pblog.service").write_text("[Unit]\n")
    again = p2pblog(home, "service", "install", "--user", "--directory", str(units))
    assert again.returncode == 1 and "--force" in again.stderr
    forced = p2pblog(home, "service", "install", "--user", "--directory", str(units), "--force")
    assert forced.returncode == 0 and (units / "p2pblog.service").read_text() == written


def test_the_unit_s_command_line_runs(tmp_path: Path) -> None:
    home = tmp_path / "node"
    assert p2pblog(home, "init").returncode == 0
    unit = _settings(p2pblog(home, "service", "install", "--print").stdout)
    words = shlex.split(unit["ExecStart"])
    assert words[-3:] == ["--home", str(home), "run"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PBLOG_")}
    shown = subprocess.run([*words, "--print-config"], capture_output=True, text=True, env=env)
    assert shown.returncode == 0 and "listen = " in shown.stdout, shown.stderr


def test_without_an_identity_it_says_how_to_start(tmp_path: Path) -> None:
    result = p2pblog(tmp_path / "none", "service", "install", "--print")
    assert result.returncode == 1 and "p2pblog init" in result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("user", [False, True])
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path, user: bool) -> None:
    home = tmp_path / "node"
    assert p2pblog(home, "init").returncode == 0
    args = ["service", "install", "--print", *(["--user"] if user else [])]
    unit = tmp_path / "p2pblog.service"
    unit.write_text(p2pblog(home, *args).stdout)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}  # the user manager needs one
    command = ["systemd-analyze", *(["--user"] if user else []), "verify", str(unit)]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "p2pblog.service" not in result.stderr, result.stderr  # no warning about our unit
