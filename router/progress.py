"""Progress bars on stderr (tqdm, imported only when a bar is shown): the one helper of ``tierwise route-log``,
``tierwise featurize``, ``tierwise batch``, the encoders and the embedding cache."""

from __future__ import annotations

from typing import Any


class NoBar:
    """What :func:`progress_bar` returns when no bar is shown: a bar's methods, doing nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress_bar(
    enabled: bool, total: int | None, desc: str, unit: str = "it", *, unit_scale: bool = False, leave: bool = True
) -> Any:
    """A tqdm bar of ``total`` ``unit`` (None: unknown) that ``update(n)`` advances; use it in a ``with`` block or
    ``close()`` it. A :class:`NoBar` when not ``enabled`` or when there is nothing to count (``total`` 0).
    ``unit_scale`` (1.2M rows) and ``leave`` (keep the bar when done) are tqdm's."""
    if not enabled or total == 0:
        return NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, leave=leave)
