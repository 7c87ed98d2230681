"""Work outside the batch loop runs on a thread that ends with it (engines/ggml_threads.py)."""

from __future__ import annotations

import threading

import pytest

from engines.ggml_threads import on_own_thread


def test_work_runs_on_a_thread_that_ends_and_hands_back_its_result_or_error() -> None:
    ran_on: list[threading.Thread] = []

    def work() -> int:
        ran_on.append(threading.current_thread())
        return 42

    assert on_own_thread(work) == 42
    assert ran_on[0] is not threading.current_thread() and not ran_on[0].is_alive()

    def broken() -> None:
        raise ValueError("no pooling type")

    with pytest.raises(ValueError, match="no pooling type"):
        on_own_thread(broken)
