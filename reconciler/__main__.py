"""``python -m reconciler`` runs the connref CLI."""

from .cli import main

raise SystemExit(main())
