"""cli: the ``p2pblog`` command line (click).  Nothing imports this package."""
