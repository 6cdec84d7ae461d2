"""``python -m exca_lite``: the command line (see ``cli.py``)."""

from .cli import main

raise SystemExit(main())
