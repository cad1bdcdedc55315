"""p2pblog: the node.

Entry format and validation (`p2pblog.entry`), protocol limits
(`p2pblog.limits`), the SQLite store (`p2pblog.store`), feed files
(`p2pblog.feedfile`) and the home directory layout (`p2pblog.home`).
"""

from __future__ import annotations

__version__ = "0.1.0"
