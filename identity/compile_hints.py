"""`mypyc_attr`: class hints for the optional mypyc build of the simulator (`simulations.compiled`).

mypyc reads ``@mypyc_attr(allow_interpreted_subclasses=True)`` on a class it
compiles and lets ordinary Python classes subclass it (the simulator's
adversaries subclass `NodeCore` and `StoreFeeds`); without it, defining such
a subclass raises ``TypeError`` in the compiled build.  It lives in
`identity`, the bottom layer, so that `dht` and `gossip` can use it too.  It recognises the
decorator by its name in ``mypy_extensions``, which comes with mypy, a test
dependency; at run time this module's stand-in does nothing, so the node
never needs mypy installed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

T = TypeVar("T")

if TYPE_CHECKING:
    from mypy_extensions import mypyc_attr as mypyc_attr
else:

    def mypyc_attr(*attrs: str, **kwattrs: Any) -> Callable[[T], T]:
        """Compile-time only: return the class unchanged."""
        return lambda cls: cls
