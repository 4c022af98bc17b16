"""The state backend a config asks for (``state:`` in the config; a local directory by default)."""

from __future__ import annotations

from reconciler.domain.model import Config
from reconciler.state.backend import StateBackend
from reconciler.state.local import LocalBackend, state_dir_for


def backend_for(config: Config) -> StateBackend:
    """The backend of ``config``: the state directory (``state: {dir: ...}``, else ``state/`` next to the
    config file)."""
    return LocalBackend(state_dir_for(config))
