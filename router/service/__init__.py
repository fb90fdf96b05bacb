"""The routing service: a FastAPI app that recommends a tier per request (``tierwise serve``).

Run it with ``tierwise serve`` or ``uvicorn router.service:create_app --factory`` (``router.service:app`` works too:
the package builds the app on first access). Configuration comes from :class:`router.service.settings.ServiceSettings`
(``TIERWISE_*`` environment variables).

Model lifecycle: at start-up the model is loaded from ``model_uri`` (registry alias, version, run or local
directory). When the registry cannot be reached at start, the service serves the last-good copy and ``/readyz`` says
``degraded: true``; with neither, start-up fails with a one-line message and uvicorn exits non-zero.

One module per job: ``api`` (the app factory and routes; ``app`` would shadow the lazy app below), ``handlers``
(state and request handling), ``model_manager`` (loading, last-good copy), ``auth`` (admin token), ``middleware``
(body guard), ``errors``, ``settings``, ``schemas``, ``microbatch``, ``metrics``, ``decision_log``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from router.decision import ROLES
    from router.service.api import create_app
    from router.service.errors import ApiError, StartupError
    from router.service.handlers import Service
    from router.service.model_manager import ModelManager
    from router.service.settings import STATE_DIR_ENV, ServiceSettings

    app: FastAPI

# Resolved on first use, so importing a light module (router.service.decision_log from training) does not load the
# web stack.
_EXPORTS = {
    "create_app": "router.service.api",
    "ApiError": "router.service.errors",
    "StartupError": "router.service.errors",
    "Service": "router.service.handlers",
    "ModelManager": "router.service.model_manager",
    "ServiceSettings": "router.service.settings",
    "STATE_DIR_ENV": "router.service.settings",
    "ROLES": "router.decision",
}
_app: Any = None


def __getattr__(name: str) -> Any:
    """``router.service:app`` builds the app from the environment on first access (for plain ``uvicorn``)."""
    global _app
    if name == "app":
        if _app is None:
            _app = importlib.import_module("router.service.api").create_app()
        return _app
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ROLES",
    "STATE_DIR_ENV",
    "ApiError",
    "ModelManager",
    "Service",
    "ServiceSettings",
    "StartupError",
    "create_app",
]
