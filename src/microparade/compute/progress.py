"""Waiting on Dask futures with progress logs: the one loop every data stage uses.

:func:`gather_in_order` collects task results (in submission order, whatever the completion
order) and releases each future as soon as its result is in; :func:`wait_for` only waits (for
persisted collections, whose data must stay on the cluster). Both show progress with
:class:`Progress` and cancel the tasks still pending when one fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, nullcontext
from typing import TYPE_CHECKING, Any

from ..console import detail, progress_bar

if TYPE_CHECKING:
    from distributed import Future
    from tqdm import tqdm

#: Seconds between two progress lines.
PROGRESS_EVERY_S = 5.0

#: ``wrap_error(index, exc)``: the exception to raise (from ``exc``) when task ``index`` failed.
WrapError = Callable[[int, Exception], Exception]


class Progress:
    """Counts finished items (and an optional amount, e.g. lines) and shows them: a tqdm bar while
    the ``with`` block runs when :func:`~microparade.console.progress_bars` says so, else a log line
    (``done/total``, a rate, the elapsed time) at most every ``every_s`` seconds; in both cases one
    log line at the end (a :func:`~microparade.console.detail` when the loop took under ``every_s``)."""

    def __init__(
        self,
        what: str,
        total: int,
        log: Callable[[str], None],
        every_s: float = PROGRESS_EVERY_S,
        unit: str | None = None,
        items: str = "tasks",
    ):
        self.what = what
        self.total = total
        self.log = log
        self.every_s = every_s
        self.unit = unit
        self.items = items
        self.done = self.amount = 0
        self.started = self.last = time.monotonic()
        self._stack = ExitStack()
        self.bar: tqdm | None = None

    def __enter__(self) -> Progress:
        self.bar = self._stack.enter_context(progress_bar(self.total, self.what, self.items))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        self.bar = None

    def add(self, amount: int = 0, items: int = 1) -> None:
        self.done += items
        self.amount += amount
        now = time.monotonic()
        if self.bar is not None:
            self.bar.update(items)
        if self.done >= self.total:
            # A loop over within every_s: its one line is a detail (log file, -v).
            with detail() if now - self.started < self.every_s else nullcontext():
                self.log(self.line(now - self.started))
        elif self.bar is None and now - self.last >= self.every_s:
            self.last = now
            self.log(self.line(now - self.started))

    def line(self, elapsed: float) -> str:
        per_s = 1.0 / max(elapsed, 1e-9)
        if self.unit is None:
            rate = f"{self.done * per_s:,.1f} {self.items}/s"
        else:
            rate = f"{self.amount:,} {self.unit}, {self.amount * per_s:,.0f} {self.unit}/s"
        return f"{self.what}: {self.done}/{self.total}, {rate}, {elapsed:.1f}s elapsed"


def _follow(
    futures: Sequence[Future],
    on_done: Callable[[int, Future], int],
    progress: Progress,
    wrap_error: WrapError | None,
) -> None:
    """Call ``on_done(index, future)`` as tasks finish (it returns the amount to count); on any
    error cancel what is still pending and raise the task's exception, wrapped if asked."""
    from distributed import as_completed

    positions: dict[Any, list[int]] = {}
    for i, fut in enumerate(futures):
        positions.setdefault(fut.key, []).append(i)
    finished = False
    try:
        with progress:
            for fut in as_completed(futures):
                i = positions[fut.key].pop(0)
                try:
                    amount = on_done(i, fut)
                except Exception as exc:
                    if wrap_error is None:
                        raise
                    raise wrap_error(i, exc) from exc
                progress.add(amount)
        finished = True
    finally:
        pending = [f for f in futures if not f.done()]
        if not finished and pending:
            pending[0].client.cancel(pending)


def gather_in_order(
    futures: Sequence[Future],
    what: str,
    log: Callable[[str], None],
    *,
    every_s: float = PROGRESS_EVERY_S,
    amount: Callable[[Any], int] | None = None,
    unit: str | None = None,
    wrap_error: WrapError | None = None,
) -> list[Any]:
    """The results of ``futures`` in submission order, logging progress as ``what``.

    ``amount(result)`` and ``unit`` add a running total and its rate to the log (e.g. lines).
    ``wrap_error`` lets the caller raise its own exception for a failed task.
    """
    if not futures:
        return []
    out: list[Any] = [None] * len(futures)

    def on_done(i: int, fut: Future) -> int:
        out[i] = fut.result()
        fut.release()
        return amount(out[i]) if amount is not None else 0

    _follow(futures, on_done, Progress(what, len(futures), log, every_s, unit), wrap_error)
    return out


def wait_for(
    futures: Sequence[Future], what: str, log: Callable[[str], None], *, every_s: float = PROGRESS_EVERY_S
) -> None:
    """Wait until every future is done, logging progress as ``what``; results stay on the cluster
    (e.g. the futures of a persisted collection) and a failed task's exception is raised."""
    if not futures:
        return

    def on_done(i: int, fut: Future) -> int:
        if fut.status != "finished":
            fut.result()  # raises the task's exception (or CancelledError)
        return 0

    _follow(futures, on_done, Progress(what, len(futures), log, every_s), None)
