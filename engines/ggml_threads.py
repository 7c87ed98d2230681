"""Where llama.cpp computes: ggml's CPU backend runs each graph on an OpenMP team of threads, and
libgomp keeps one team for each thread that computes, for as long as that thread lives. With more
team threads than cores, libgomp spins less in every team, and a small model's decoding (the batch
loop's) stays up to twice as slow after a single embedding call or projector warm-up made from a
long-lived worker thread. Work outside the batch loop therefore runs on a thread that ends with it,
which frees its team.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def on_own_thread(work: Callable[[], T]) -> T:
    """`work()` on a thread that ends with it (see the module's docstring); its result, or its error."""
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="llama-compute")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]
