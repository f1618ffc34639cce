"""Work done ahead of the engine: a bounded, ordered map over a thread pool.

The local backends decode and resize each request's images (`iadr1.infer.base.request_images`, then training's
size rule), and the runner checks each image (`build_request`), in a pool of threads while the engine works on
earlier requests. Pillow releases the GIL while it decodes, converts and resizes, so threads scale over cores
(benchmarks/bench_pipeline.py measures threads against processes) and hand the images over without copying.

`prefetch(items, fn, workers, ahead)` yields `(item, future)` in the order of `items`; `future.result()` is
`fn(item)`, or raises what `fn` raised, exactly where and as an inline call would, so a backend's error handling
is unchanged. At most `ahead` items are taken from `items` and not yet yielded (bounded memory: an item's result
lives from its submission until the consumer drops it). `workers=0` computes inline, at `result()`, as before
this module existed.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """min(8, the cores this process may run on): a GPU host's share for one engine; 8 threads decode and resize
    1024 px PNGs faster than one engine prefills them (docs/infer.md, "Throughput")."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WORKERS, cores))


def resolve_workers(workers: int | None) -> int:
    """The worker count to use: `workers` as given (0: inline), None for `default_workers()`."""
    if workers is None:
        return default_workers()
    if workers < 0:
        raise ValueError(f"workers must be 0 (inline) or more, got {workers}")
    return int(workers)


class _Inline(Generic[R]):
    """A future computed when asked for: the inline path (workers=0) runs `fn` where the consumer needs it."""

    def __init__(self, fn: Callable[[], R]):
        self._fn = fn

    def result(self, timeout: float | None = None) -> R:
        return self._fn()

    def done(self) -> bool:
        return False


def prefetch(
    items: Iterable[T], fn: Callable[[T], R], workers: int, ahead: int | None = None
) -> Iterator[tuple[T, Future[R] | _Inline[R]]]:
    """`(item, future of fn(item))` in the order of `items`, with `fn` running in `workers` threads on at most
    `ahead` items (default 2 x workers) beyond those yielded. `workers=0`: no threads; `fn` runs at `result()`.

    The pool lives as long as the iteration: closing the generator (or an exception in the consumer) cancels the
    work not yet started and waits for the threads.
    """
    it = iter(items)
    if workers <= 0:
        for item in it:
            yield item, _Inline(lambda item=item: fn(item))
        return
    ahead = max(1, ahead if ahead is not None else 2 * workers)
    queue: deque[tuple[T, Future[R]]] = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="iadr1-prefetch")
    exhausted = False
    try:
        while True:
            # Keep `ahead` items in the pool: the upstream is pulled in the consumer's thread (so an upstream that
            # writes, like the runner's request builder, needs no lock), and a consumer that takes a batch at a
            # time (the transformers backend) finds the next batch decoded while it runs the current one.
            for item in islice(it, ahead - len(queue)):
                queue.append((item, pool.submit(fn, item)))
            if not queue:
                exhausted = True
                return
            yield queue.popleft()
    finally:
        # At the end of the items, futures already handed out may not have run yet (a batching consumer takes
        # several before asking for their results): they must finish. Closed early: cancel what has not started.
        pool.shutdown(wait=not exhausted, cancel_futures=not exhausted)


__all__ = ["default_workers", "prefetch", "resolve_workers"]
