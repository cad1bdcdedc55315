"""``p2pblog service install``: run the node as a systemd service.

`unit_text` writes the unit: ``ExecStart`` runs ``p2pblog --home HOME run``
with absolute paths (the console script next to this interpreter, else this
interpreter with ``-m p2pblog``), so the unit runs the same installation
(a virtualenv included) without a PATH.  The node reads its settings from
HOME/p2pblog.toml, stops cleanly on SIGTERM (status 0), and logs one
timestamped line per event on stderr, which the journal keeps
(``journalctl [--user] -u p2pblog``).  ``Restart=on-failure`` restarts it
after a crash, not after a clean stop.

Hardening: ``NoNewPrivileges`` and ``PrivateTmp`` (unless HOME is in /tmp,
which it would hide) in both kinds of unit.  A
system unit also runs as the owner of HOME (the key file is theirs, 0600),
sees the whole file system read-only but HOME (``ProtectSystem=strict``,
``ProtectHome=read-only``, ``ReadWritePaths=HOME``), and gets the usual
kernel and device protections; a user unit cannot use most of those
(systemd needs privileges to set them up), so it has the two that work
everywhere.  The passphrase of an encrypted key comes from
``HOME/service.env`` (``P2PBLOG_PASSPHRASE=...``, mode 0600), read if present.

Nothing is enabled or started: the command prints the ``systemctl`` lines to
do that.
"""

from __future__ import annotations

import os
import pwd
import re
import sys
import tempfile
from pathlib import Path
from typing import Final

import click

from cli.common import current_home

#: The unit's name unless --name says otherwise.
DEFAULT_NAME: Final = "p2pblog"
SYSTEM_DIR: Final = Path("/etc/systemd/system")
_NAME_RE: Final = re.compile(r"[A-Za-z0-9:_.\\-]{1,200}")


def user_unit_dir() -> Path:
    """Where systemd's user manager looks for units the user wrote."""
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "systemd" / "user"


def command_line() -> list[str]:
    """How this installation of p2pblog is run, by absolute path: the console script beside
    the interpreter if there is one (a virtualenv's bin/), else ``python -m p2pblog``."""
    python = Path(os.path.abspath(sys.executable))  # not resolved: a venv's python is a symlink
    script = python.parent / "p2pblog"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [str(python), "-m", "p2pblog"]


def quoted(word: str) -> str:
    """word as one argument of a systemd command line or path list: specifiers (%) and
    variables ($) escaped, quoted if it has spaces, quotes or backslashes."""
    word = word.replace("%", "%%").replace("$", "$$")
    if re.search(r'[\s"\'\\;]', word):
        return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


#: Characters a path in the unit may not hold: control characters would end a line of the
#: unit (and let a crafted directory name add directives, run as root), and systemd reads
#: whitespace, quotes, backslashes, $ and % in EnvironmentFile= and ReadWritePaths= its own
#: way (a path with a space there is "not absolute").
_UNSAFE_PATH: Final = re.compile(r'[\x00-\x20\x7f"\'\\$%;]')


class UnsafePath(ValueError):
    """A path the unit file cannot name safely; the message says which and why."""


def check_unit_path(path: str, what: str) -> str:
    bad = _UNSAFE_PATH.search(path)
    if bad is not None:
        raise UnsafePath(
            f"{what} {path!r} holds {bad.group(0)!r}, which a systemd unit cannot name safely "
            "(spaces, quotes, backslashes, $, % and control characters): use a home and an "
            "installation path without them (a symbolic link to it works)"
        )
    return path


def unit_text(home: Path, *, user: bool, command: list[str], owner: str | None = None) -> str:
    """The unit file for the node at home (an absolute path).  ``owner`` is the account a
    system unit runs as (default: the owner of home).  Raises `UnsafePath` for a home or
    command path that a unit cannot hold as it is."""
    home = Path(os.path.abspath(home))
    check_unit_path(str(home), "the home")
    for word in command:
        check_unit_path(word, "the command")
    exec_start = " ".join(quoted(w) for w in [*command, "--home", str(home), "run"])
    lines = [
        "# Written by `p2pblog service install`; docs: README.md, 'Running as a service'.",
        "[Unit]",
        f"Description=p2pblog node ({quoted(str(home))})",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=exec",
        f"ExecStart={exec_start}",
        # A clean stop (SIGTERM) exits 0 and is not restarted; a crash is, after 5 s.
        "Restart=on-failure",
        "RestartSec=5",
        "TimeoutStopSec=30",
        "Environment=PYTHONUNBUFFERED=1",
        f"EnvironmentFile=-{quoted(str(home / 'service.env'))}",
        "UMask=0077",
        "NoNewPrivileges=yes",
    ]
    if not any(home.is_relative_to(tmp) for tmp in ("/tmp", "/var/tmp")):
        lines.append("PrivateTmp=yes")  # (a home in /tmp would be hidden by it)
    if not user:
        if owner is None:
            owner = _owner_of(home)
        lines += [
            f"User={owner}",
            "ProtectSystem=strict",
            "ProtectHome=read-only",
            f"ReadWritePaths={quoted(str(home))}",
            "PrivateDevices=yes",
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "ProtectKernelLogs=yes",
            "ProtectControlGroups=yes",
            "ProtectClock=yes",
            "ProtectHostname=yes",
            "RestrictSUIDSGID=yes",
            "RestrictRealtime=yes",
            "RestrictNamespaces=yes",
            "LockPersonality=yes",
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
            "SystemCallArchitectures=native",
            "CapabilityBoundingSet=",
        ]
    lines += ["", "[Install]", f"WantedBy={'default.target' if user else 'multi-user.target'}", ""]
    return "\n".join(lines)


def _owner_of(home: Path) -> str:
    uid = home.stat().st_uid if home.exists() else os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@click.group()
def service() -> None:
    """Run the node as a systemd service (a unit file; nothing is started)."""


@service.command()
@click.option(
    "--user", "user_unit", is_flag=True, help="A user unit (~/.config/systemd/user), not a system one."
)
@click.option("--print", "print_only", is_flag=True, help="Print the unit instead of writing it.")
@click.option("--name", default=DEFAULT_NAME, show_default=True, help="The unit's name (NAME.service).")
@click.option(
    "--directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the unit into this directory instead of systemd's.",
)
@click.option("--force", is_flag=True, help="Replace an existing unit file of that name.")
def install(user_unit: bool, print_only: bool, name: str, directory: Path | None, force: bool) -> None:
    """Write a systemd unit that runs `p2pblog --home HOME run` (HOME as for every command).

    Without --user: /etc/systemd/system/NAME.service (needs root), running
    as the owner of HOME, with the file system read-only but HOME.  With
    --user: ~/.config/systemd/user/NAME.service, which runs while you are
    logged in (or always, after `loginctl enable-linger`).  Settings come
    from HOME/p2pblog.toml (`p2pblog config show`).  Prints how to enable
    and start it; does neither.
    """
    if not _NAME_RE.fullmatch(name):
        raise click.BadParameter("letters, digits and : _ . - only", param_hint="--name")
    home = current_home()
    if not home.exists():
        home.load_identity()  # the "no identity here: p2pblog init" error
    try:
        text = unit_text(home.path, user=user_unit, command=command_line())
    except UnsafePath as exc:
        raise click.ClickException(str(exc)) from None
    if print_only:
        click.echo(text, nl=False)
        return
    target_dir = directory or (user_unit_dir() if user_unit else SYSTEM_DIR)
    path = target_dir / f"{name}.service"
    if path.exists() and not force and path.read_bytes() != text.encode():
        raise click.ClickException(f"{path} exists and differs: give --force to replace it")
    target_dir.mkdir(parents=True, exist_ok=True)
    # A fresh temporary name (O_EXCL, never a planted symbolic link), then an atomic rename.
    fd, tmp_name = tempfile.mkstemp(dir=target_dir, prefix=f".{name}.", suffix=".service")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    click.echo(f"wrote {path}", err=True)
    systemctl = "systemctl --user" if user_unit else "systemctl"
    sudo = "" if user_unit or os.geteuid() == 0 else "sudo "
    click.echo(f"start it now and at every boot:  {sudo}{systemctl} daemon-reload && ", err=True, nl=False)
    click.echo(f"{sudo}{systemctl} enable --now {name}", err=True)
    journal = "journalctl --user" if user_unit else "journalctl"
    click.echo(f"its log:  {journal} -u {name} -f", err=True)
    if user_unit:
        click.echo(
            "(a user service runs while you are logged in; `loginctl enable-linger` keeps it up)", err=True
        )


#: What `cli.main` adds to the command line when `p2pblog service` is asked for.
COMMANDS = (service,)
