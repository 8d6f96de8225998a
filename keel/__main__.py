"""``python -m keel``: the same as the ``keel`` command."""
from keel.app.cli import main

raise SystemExit(main())
