"""tierwise inference side: the Router library and the HTTP service.

    from router import Router, Decision

    router = Router.load("models:/tierwise@champion")
    decision: Decision = router.route("Summarise this contract in three bullet points.")

The names load on first use, so ``import router.service`` or ``import router.catalog`` does not pull in the
classifier and its dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from router.core import Decision, Router

__all__ = ["Decision", "Router"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from router import core

        return getattr(core, name)
    raise AttributeError(f"module 'router' has no attribute {name!r}")
