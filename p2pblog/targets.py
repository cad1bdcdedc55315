"""What a user typed to name somebody: a handle, a petname, ``NAME~FINGERPRINT`` or a NAME.

The command line and the web app both take such a *target* (`parse_target`)
and pick from a name's claimants the same way (`pick_claims`): a petname is
local and wins over everything; ``NAME~FP`` picks the claimants whose
fingerprint starts with FP; a bare NAME matches every claimant, and the front
end shows them all when there is more than one, in the order
`p2pblog.names.claimant_order` gives for the user (relationship, then the age
the network witnessed, then work).  It picks one (`suggested_claim`) only
when `p2pblog.names.suggestion` allows: the only claimant, or the best one
when it is alone in its relationship class and the user knows it; never
between strangers, so never a squatter over a key the user knows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from identity import decode_handle
from identity.handle import FINGERPRINT_CHARS, HANDLE_CHARS, fingerprint
from identity.records import RecordError, check_name
from p2pblog.names import answer_order, relation_of_answer, suggested_index

#: Shortest fingerprint prefix accepted in NAME~FINGERPRINT.
MIN_FINGERPRINT_CHARS: Final = 6


class TargetError(ValueError):
    """Text that names nobody (not a handle, not a name); the message says why."""


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed target: a ``key`` (from a handle), or a ``name`` with an optional
    fingerprint ``prefix`` (from ``NAME~FP``; empty for a bare NAME)."""

    key: bytes | None = None
    name: str = ""
    prefix: str = ""


def looks_like_handle(text: str) -> bool:
    return text.startswith("@") or (len(text) == HANDLE_CHARS - 1 and text.lower().startswith("pb1"))


def parse_target(text: str) -> Target:
    """Raises `TargetError` (or `identity.handle.HandleError` for a handle with a typo)."""
    text = text.strip()
    if looks_like_handle(text):
        return Target(key=decode_handle(text))  # the '@' is optional
    name, tilde, prefix = text.partition("~")
    try:
        name = check_name(name)
    except RecordError as exc:
        if tilde:
            raise TargetError(str(exc)) from None
        raise TargetError(
            f"{text!r} is neither a handle (@pb1..., 62 characters with the '@') nor a name"
        ) from None
    if tilde:
        prefix = prefix.strip().lower()
        if not MIN_FINGERPRINT_CHARS <= len(prefix) <= FINGERPRINT_CHARS:
            raise TargetError(
                f"a fingerprint is {MIN_FINGERPRINT_CHARS}-{FINGERPRINT_CHARS} characters "
                f"(see `p2pblog resolve {name}`)"
            )
    return Target(name=name, prefix=prefix)


def petname_matches(target: Target, key: bytes | None) -> bool:
    """Whether the petname ``target.name`` (bound to key) answers the target."""
    return key is not None and fingerprint(key).startswith(target.prefix)


def pick_claims(target: Target, claims: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The claimants (the node's ``resolve`` answers) the target may mean, best first."""
    return sorted((c for c in claims if str(c["fingerprint"]).startswith(target.prefix)), key=answer_order)


def suggested_claim(claims: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The one of ``claims`` (`pick_claims`' answer) a bare NAME may pick without asking."""
    ranked = sorted(claims, key=answer_order)
    index = suggested_index([relation_of_answer(c) for c in ranked])
    return None if index is None else ranked[index]
