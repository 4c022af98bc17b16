"""``python -m reconciler`` runs the connref CLI."""

from reconciler.cli import main

raise SystemExit(main())
