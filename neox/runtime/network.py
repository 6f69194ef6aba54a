"""Network reachability, checked before a library that would retry for minutes against an unreachable host (the
Hugging Face hub for datasets and lm-eval's standard tasks), so the error comes in seconds and says what to do."""

from __future__ import annotations

import socket
import urllib.parse


def reachable(endpoint: str, timeout_s: float = 5.0) -> bool:
    """Whether a TCP connection to the endpoint URL's host and port (443 by default) opens within the timeout."""
    parsed = urllib.parse.urlparse(endpoint)
    try:
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False
