"""The node's configuration file, ``HOME/p2pblog.toml``, and the settings of ``p2pblog run``.

A node run as a service is configured in its home instead of on a command
line: `load` reads the file (stdlib `tomllib`), checks every key once, here at
the boundary, and returns typed `Settings`; the command line then overrides
what it names (`cli.main.run` asks click where each value came from).  Every
key is optional; the defaults are `DEFAULTS`.  An unknown key, a value of the
wrong type or out of range, or a file that is not TOML is one `ConfigError`
that names the file and the key (``p2pblog.toml: web: expected HOST:PORT or
false, got 'x'``).

Keys (docs/config.md has them with examples)::

    listen = "0.0.0.0:7710"           # UDP (DHT) and TCP (gossip) HOST:PORT
    advertise = "blog.example.org"    # the host other nodes dial (no port)
    bootstrap = ["203.0.113.5:7710"]  # nodes to join through
    web = "127.0.0.1:7711"            # the web app's HOST:PORT, or false for none
    mention_work = 16                 # proof-of-work bits asked of strangers' mentions

    [limits]
    log_every = 10.0                  # seconds between two log lines about one source's refused input
    log_budget = 50                   # such lines in all per log_every seconds

The protocol's limits (post length, frame and datagram sizes, per-peer
bounds) are not settings: every node must agree on them (`identity.limits`).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from identity.limits import MENTION_WORK
from identity.netaddr import parse_hostport
from p2pblog.errors import P2PBlogError
from p2pblog.home import DEFAULT_PORT, DEFAULT_WEB_PORT

#: The file's name in the home directory.
CONFIG_FILE: Final = "p2pblog.toml"
#: Bounds of the settings that are numbers.
MAX_MENTION_WORK: Final = 32
MAX_BOOTSTRAP: Final = 64
MAX_LOG_EVERY: Final = 86_400.0
MAX_LOG_BUDGET: Final = 100_000
#: Where a setting's value came from.
DEFAULT: Final = "default"
COMMAND_LINE: Final = "command line"


class ConfigError(P2PBlogError):
    """The configuration file cannot be used; the message names the file and the key."""


Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Settings:
    """What ``p2pblog run`` runs with.  ``sources`` says, per key, where its value came from:
    `DEFAULT`, the file's path, or `COMMAND_LINE`."""

    listen: Address = ("0.0.0.0", DEFAULT_PORT)
    advertise: str | None = None
    bootstrap: tuple[Address, ...] = ()
    web: Address | None = ("127.0.0.1", DEFAULT_WEB_PORT)
    mention_work: int = MENTION_WORK
    log_every: float = 10.0
    log_budget: int = 50
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    def source(self, key: str) -> str:
        return self.sources.get(key, DEFAULT)

    def shown(self) -> list[tuple[str, str, str]]:
        """(key, value as TOML, where it came from) for every setting, in the file's order."""
        rows = []
        for key in KEYS:
            value = getattr(self, key)
            if key == "web" and value is None:
                shown = "false"
            elif key == "advertise" and value is None:
                shown = "(not set: the listen address, or the one towards the bootstrap nodes)"
            else:
                shown = _as_toml(value)
            rows.append((_toml_key(key), shown, self.source(key)))
        return rows


DEFAULTS: Final = Settings()


# --- value parsers: raise ValueError with what was expected -------------------------------


def parse_listen(value: object) -> Address:
    """An address of this machine to bind: an IP address (or localhost) and a port (0: any)."""
    host, port = parse_hostport(_text(value, "HOST:PORT"), default_host="0.0.0.0")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(
                f"listen takes an IP address of this machine (or localhost), not {host!r}"
            ) from None
    return host, port


def parse_web(value: object) -> Address | None:
    if value is False:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected HOST:PORT or false, got {value!r}")
    try:
        return parse_hostport(value, default_host="127.0.0.1")
    except ValueError:
        raise ValueError(f"expected HOST:PORT or false, got {value!r}") from None


def parse_advertise(value: object) -> str:
    """An IP address (no IPv6 zone) or a DNS name other nodes can connect to, without a port
    (the node advertises the ports it listens on): the rule of a signed record's hosts
    (`identity.records.check_host`)."""
    from identity.records import RecordError, check_host

    text = _text(value, "a host name or IP address")
    host = text.strip().removeprefix("[").removesuffix("]")
    try:
        address = ipaddress.ip_address(check_host(host))
    except (ValueError, RecordError):
        pass
    else:
        if address.is_unspecified or address.is_multicast:
            raise ValueError(f"{text!r} is no address other nodes can connect to")
        return str(address)
    try:
        if not host.replace(".", "").isdigit():
            return check_host(host)
    except RecordError:
        pass
    raise ValueError(
        f"{text!r} is neither an IP address nor a host name (give the host only: the node "
        "advertises the ports it listens on)"
    )


def parse_bootstrap(value: object) -> tuple[Address, ...]:
    if not isinstance(value, list):
        raise ValueError(f'expected a list of "HOST:PORT" strings, got {value!r}')
    if len(value) > MAX_BOOTSTRAP:
        raise ValueError(f"at most {MAX_BOOTSTRAP} addresses")
    out = tuple(parse_hostport(_text(v, "HOST:PORT")) for v in value)
    for host, port in out:
        if port == 0:
            raise ValueError(f"{host}:0: a node to join through listens on a port 1..65535")
    return out


def parse_mention_work(value: object) -> int:
    return _integer(value, 0, MAX_MENTION_WORK)


def parse_log_every(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"expected a number of seconds, got {value!r}")
    if not 0 < value <= MAX_LOG_EVERY:
        raise ValueError(f"expected more than 0 and at most {MAX_LOG_EVERY:g} seconds, got {value!r}")
    return float(value)


def parse_log_budget(value: object) -> int:
    return _integer(value, 1, MAX_LOG_BUDGET)


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string ({what}), got {value!r}")
    return value


def _integer(value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"expected {low} to {high}, got {value}")
    return value


#: Every key: its parser.  A key of the ``[limits]`` table is written ``limits.KEY``.
KEYS: Final[dict[str, Callable[[object], Any]]] = {
    "listen": parse_listen,
    "advertise": parse_advertise,
    "bootstrap": parse_bootstrap,
    "web": parse_web,
    "mention_work": parse_mention_work,
    "log_every": parse_log_every,
    "log_budget": parse_log_budget,
}
#: The keys that live in the ``[limits]`` table.
LIMIT_KEYS: Final = frozenset({"log_every", "log_budget"})
assert set(KEYS) == {f.name for f in fields(Settings)} - {"sources"}


def _toml_key(key: str) -> str:
    return f"limits.{key}" if key in LIMIT_KEYS else key


def config_path(home: Path) -> Path:
    return home / CONFIG_FILE


def load(path: Path) -> Settings:
    """The settings in the file at path (the defaults for what it leaves out, and all of them
    if there is no such file).  Raises `ConfigError`."""
    import tomllib

    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return DEFAULTS
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    try:
        doc = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML (nested too deeply)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return from_document(doc, str(path))


def from_document(doc: dict[str, Any], where: str) -> Settings:
    """Settings from a parsed TOML document; ``where`` names it in errors and sources."""
    flat: dict[str, object] = {}
    for key, value in doc.items():
        if key == "limits":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: limits: expected a table ([limits]), got {value!r}")
            for sub, sub_value in value.items():
                if sub not in LIMIT_KEYS:
                    raise ConfigError(f"{where}: unknown key limits.{sub} (known: {_known(LIMIT_KEYS)})")
                flat[sub] = sub_value
        elif key in KEYS and key not in LIMIT_KEYS:
            flat[key] = value
        else:
            known = _known(k for k in KEYS if k not in LIMIT_KEYS) + ", [limits]"
            raise ConfigError(f"{where}: unknown key {key} (known: {known})")
    values: dict[str, Any] = {}
    for key, value in flat.items():
        try:
            values[key] = KEYS[key](value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {_toml_key(key)}: {exc}") from None
    return Settings(**values, sources=dict.fromkeys(values, where))


def _known(keys: Any) -> str:
    return ", ".join(sorted(keys))


def overridden(settings: Settings, **given: Any) -> Settings:
    """settings with the values the command line gave (keys of `KEYS`) in their place."""
    values = {f.name: getattr(settings, f.name) for f in fields(Settings) if f.name != "sources"}
    values.update(given)
    sources = dict(settings.sources)
    sources.update(dict.fromkeys(given, COMMAND_LINE))
    return Settings(**values, sources=sources)


def _as_toml(value: object) -> str:
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[1], int)
        and isinstance(value[0], str)
    ):
        return f'"{_hostport(value)}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(f'"{_hostport(v)}"' for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _hostport(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
