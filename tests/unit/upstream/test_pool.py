"""A remote model's pool picks the upstream with the fewest requests in flight (no model)."""

from __future__ import annotations

from gpustack_cli.upstream.pool import RemoteEngine, Upstream


def test_the_least_loaded_upstream_comes_first_and_the_rotation_breaks_ties() -> None:
    a, b, c = Upstream("http://a"), Upstream("http://b"), Upstream("http://c")
    pool = RemoteEngine([a, b, c])
    assert [u.url for u in pool.order()] == ["http://a", "http://b", "http://c"]
    assert [u.url for u in pool.order()] == ["http://b", "http://c", "http://a"]  # round robin among equals
    with pool.serving(b), pool.serving(b), pool.serving(c):
        assert [u.in_flight for u in (a, b, c)] == [0, 2, 1]
        for _ in range(3):  # whatever the rotation, the idle one first and the busiest last
            assert [u.url for u in pool.order()] == ["http://a", "http://c", "http://b"]
        pool.failed(a)
        assert [u.url for u in pool.order()][-1] == "http://a"  # cooling down: tried last
    assert [u.in_flight for u in (a, b, c)] == [0, 0, 0]


def test_a_request_that_fails_is_still_counted_out() -> None:
    a = Upstream("http://a")
    pool = RemoteEngine([a])
    try:
        with pool.serving(a):
            raise ConnectionResetError
    except ConnectionResetError:
        pass
    assert a.in_flight == 0
