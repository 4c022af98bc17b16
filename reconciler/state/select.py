"""The state backend a config asks for (``state:`` in the config; a local directory by default)."""

from __future__ import annotations

from reconciler.domain.model import Config
from reconciler.state.backend import StateBackend
from reconciler.state.local import LocalBackend, state_dir_for


def backend_for(config: Config) -> StateBackend:
    """The backend of ``config``: Azure Blob storage for ``state: {backend: azurerm, ...}`` (the Azure SDK is
    imported only then), else the state directory (``state: {dir: ...}``, else ``state/`` next to the
    config file)."""
    if config.remote_state is not None:
        from reconciler.state.azurerm import open_azure_backend

        return open_azure_backend(config, config.remote_state)
    return LocalBackend(state_dir_for(config))
