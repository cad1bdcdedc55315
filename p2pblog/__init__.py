"""p2pblog: the node.

Entry format and validation (`p2pblog.entry`), the SQLite store
(`p2pblog.store`), feed files (`p2pblog.feedfile`), the home directory
layout (`p2pblog.home`), the sans-IO `NodeCore` (`p2pblog.node`), and the
trio runtime (`p2pblog.runtime`, `p2pblog.daemon`, `p2pblog.control`).
Protocol limits are in `identity.limits`, the bottom layer.
"""

from __future__ import annotations

__version__ = "0.1.0"
