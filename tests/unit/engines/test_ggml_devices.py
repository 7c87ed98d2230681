"""The RPC servers' addresses as users write them, and the bounded reachability check."""

from __future__ import annotations

import socket

import pytest

from engines.ggml_devices import check_reachable, endpoint_parts, rpc_endpoints


def test_endpoints_are_host_port_in_order_without_repeats() -> None:
    assert rpc_endpoints("10.0.0.2:50052, 10.0.0.3:50052,10.0.0.2:50052") == ["10.0.0.2:50052", "10.0.0.3:50052"]
    assert rpc_endpoints(["a:1,b:2", "c:3"]) == ["a:1", "b:2", "c:3"]
    assert rpc_endpoints("") == []
    assert endpoint_parts("[::1]:50052") == ("::1", 50052)


@pytest.mark.parametrize("bad", ["host", "host:", ":50052", "host:port", "host:0", "host:70000"])
def test_what_is_not_host_port_is_refused_with_its_form(bad: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        rpc_endpoints(bad)


def test_at_most_llama_cpps_sixteen_servers() -> None:
    with pytest.raises(ValueError, match="at most 16"):
        rpc_endpoints(",".join(f"h:{p}" for p in range(1, 18)))


def test_reachability_says_why_an_endpoint_does_not_answer() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert check_reachable(f"127.0.0.1:{port}", timeout=2) is None
    why = check_reachable(f"127.0.0.1:{port}", timeout=2)
    assert why is not None and "refused" in why.lower()
