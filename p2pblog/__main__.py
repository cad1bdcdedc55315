"""``python -m p2pblog``: the same as the ``p2pblog`` command.

The one place where p2pblog refers to cli: an entry-point shim that no module
imports (docs/design.md).
"""

from __future__ import annotations

from cli.entry import main

if __name__ == "__main__":
    main(prog_name="p2pblog")
