"""Micro-batching: concurrent requests share one encoder + classifier call.

Each ``/v1/route`` request puts its text (with its role and task) on a queue and awaits a future. A collector task
waits until an inference slot is free, takes the requests already waiting (up to ``max_batch``, shared fairly with
the other idle slots), lets the batch fill for ``window_ms`` more when it is not full and the server is busy, and
runs ``router.predict_proba_array`` once for the whole batch in a worker thread. While that call runs, new requests
queue up and form the next batch, so under load the batch size grows with the arrival rate instead of requests
queueing one by one. A lone request on an idle server is dispatched at once (no window).

The model is read once per batch (``get_model()``), so a batch never mixes two models during a reload; each
caller gets the model together with its probability row and makes its decision with that same model.
A batch that fails is retried prompt by prompt, so one poisonous input fails only its own request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

log = logging.getLogger("tierwise.service")

_Item = tuple[str, str | None, str | None, "asyncio.Future[tuple[Any, np.ndarray]]"]  # text, role, task, result
Predict = Callable[[Any, list[str], list[str | None], list[str | None]], np.ndarray]  # model, texts, roles, tasks


def chunk_bounds(texts: Sequence[str], max_items: int, max_chars: int | None = None) -> list[tuple[int, int]]:
    """``(start, end)`` of consecutive chunks of at most ``max_items`` texts and ``max_chars`` characters (a text
    longer than ``max_chars`` makes a chunk of its own)."""
    bounds: list[tuple[int, int]] = []
    start, chars = 0, 0
    for i, text in enumerate(texts):
        n = len(text)
        if i > start and (i - start >= max_items or (max_chars is not None and chars + n > max_chars)):
            bounds.append((start, i))
            start, chars = i, 0
        chars += n
    if start < len(texts):
        bounds.append((start, len(texts)))
    return bounds


class MicroBatcher:
    def __init__(
        self,
        get_model: Callable[[], Any],
        predict: Predict,
        *,
        window_ms: float = 1.0,
        max_batch: int = 64,
        threads: int = 1,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.get_model = get_model
        self.predict = predict
        self.window = max(0.0, window_ms) / 1000.0
        self.max_batch = max(1, max_batch)
        self.threads = max(1, threads)
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Item] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="tierwise-infer")
        self._running: set[asyncio.Task[None]] = set()
        self._idle = self.threads  # inference slots not running a batch

    # --- lifecycle ---------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._slots = asyncio.Semaphore(self.threads)
        self._task = asyncio.create_task(self._collect(), name="tierwise-microbatch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        if self._queue is not None:
            while not self._queue.empty():
                *_, fut = self._queue.get_nowait()
                if not fut.done():
                    fut.set_exception(RuntimeError("service is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- API ---------------------------------------------------------------------------------------------------
    async def submit(self, text: str, role: str | None, task: str | None = None) -> tuple[Any, np.ndarray]:
        """(model, P(acceptable) per tier) for one prompt, computed together with concurrent requests."""
        if self._queue is None:
            raise RuntimeError("micro-batcher not started")
        fut: asyncio.Future[tuple[Any, np.ndarray]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((text, role, task, fut))
        return await fut

    async def run_many(
        self,
        texts: Sequence[str],
        roles: Sequence[str | None],
        tasks: Sequence[str | None] | None = None,
        chunk: int | None = None,
        max_chars: int | None = None,
    ) -> tuple[Any, np.ndarray]:
        """Probabilities for many prompts (the batch and plan endpoints); one model for all chunks.

        The prompts run in chunks of at most ``chunk`` prompts (default ``max_batch``) and ``max_chars`` characters
        (a longer prompt runs alone), each taking one inference slot and giving it back: the slots are handed out
        first come, first served, so a single route that arrives during a big batch waits for one chunk, not for
        the whole batch.
        """
        assert self._slots is not None
        loop = asyncio.get_running_loop()
        model = self.get_model()
        parts = []
        all_tasks: list[str | None] = list(tasks) if tasks is not None else [None] * len(texts)
        for start, end in chunk_bounds(texts, chunk or self.max_batch, max_chars):
            t, r, k = list(texts[start:end]), list(roles[start:end]), all_tasks[start:end]
            await self._slots.acquire()
            self._idle -= 1
            try:
                parts.append(await loop.run_in_executor(self._executor, self.predict, model, t, r, k))
            finally:
                self._release()
            if self.on_batch:
                self.on_batch(len(t))
        return model, np.vstack(parts)

    # --- internals ---------------------------------------------------------------------------------------------
    def _drain(self, batch: list[_Item], limit: int | None = None) -> None:
        assert self._queue is not None
        limit = self.max_batch if limit is None else min(limit, self.max_batch)
        while len(batch) < limit:
            try:
                batch.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                return

    async def _collect(self) -> None:
        assert self._queue is not None and self._slots is not None
        while True:
            first = await self._queue.get()
            batch = [first]
            try:
                await self._slots.acquire()  # requests arriving meanwhile join this batch
            except BaseException:
                self._fail(batch, RuntimeError("service is shutting down"))
                raise
            self._idle -= 1
            try:
                # share what is waiting between this slot and the other idle ones, so they work in parallel
                limit = -(-(1 + self._queue.qsize()) // (1 + self._idle))
                self._drain(batch, limit)
                # wait for company only under load (another batch running or several already waiting): an idle
                # server answers a lone request at once
                busy = self._idle < self.threads - 1 or len(batch) > 1
                if busy and len(batch) < self.max_batch and self.window > 0:
                    await asyncio.sleep(self.window)
                    self._drain(batch, max(limit, -(-(len(batch) + self._queue.qsize()) // (1 + self._idle))))
            except BaseException:
                self._release()
                self._fail(batch, RuntimeError("service is shutting down"))
                raise
            batch = [b for b in batch if not b[3].done()]  # callers that went away
            if not batch:
                self._release()
                continue
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    @staticmethod
    def _fail(batch: list[_Item], exc: BaseException) -> None:
        for *_, fut in batch:
            if not fut.done():
                fut.set_exception(exc)

    async def _run(self, batch: list[_Item]) -> None:
        assert self._slots is not None
        loop = asyncio.get_running_loop()
        try:
            texts = [b[0] for b in batch]
            roles = [b[1] for b in batch]
            tasks = [b[2] for b in batch]
            try:
                model, proba = await loop.run_in_executor(self._executor, self._predict, texts, roles, tasks)
                if self.on_batch:
                    self.on_batch(len(batch))
                for i, (*_, fut) in enumerate(batch):
                    if not fut.done():
                        fut.set_result((model, proba[i]))
                return
            except Exception as exc:  # noqa: BLE001 - isolate the failing prompt below
                if len(batch) == 1:
                    if not batch[0][3].done():
                        batch[0][3].set_exception(exc)
                    return
                log.warning("micro-batch of %d failed (%s); retrying prompt by prompt", len(batch), type(exc).__name__)
            for text, role, task, fut in batch:
                try:
                    model, proba = await loop.run_in_executor(
                        self._executor, self._predict, [text], [role], [task]
                    )
                    if not fut.done():
                        fut.set_result((model, proba[0]))
                except Exception as exc:  # noqa: BLE001
                    if not fut.done():
                        fut.set_exception(exc)
        finally:
            self._release()

    def _release(self) -> None:
        assert self._slots is not None
        self._idle += 1
        self._slots.release()

    def _predict(
        self, texts: list[str], roles: list[str | None], tasks: list[str | None]
    ) -> tuple[Any, np.ndarray]:
        model = self.get_model()
        return model, self.predict(model, texts, roles, tasks)
