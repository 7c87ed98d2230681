"""Client commands (run, ps, stop) talking to a running `gpustack serve`."""

from __future__ import annotations

import httpx

from gpustack_cli.config import Settings


def server_answers(settings: Settings) -> bool:
    try:
        return httpx.get(settings.url + "/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def checked(response: httpx.Response) -> httpx.Response:
    """The server's answer, or a RuntimeError with its error message."""
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        raise RuntimeError(f"{message} (HTTP {response.status_code})")
    return response
