"""The few most recent blobs of one kind that a peer keeps serving.

Updates stay served for a few rounds (a slow checker or a lagging peer may still fetch
them), states for the last couple of versions (peers that resync or catch up fetch
them); older ones are withdrawn so the blob store does not grow with the history.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Server(Protocol):
    def serve(self, kind: str, digest_hex: str, data: bytes) -> None: ...

    def serve_provider(self, kind: str, digest_hex: str, provider: Callable[[], bytes]) -> None: ...

    def unserve(self, kind: str, digest_hex: str) -> bool: ...


class ServedRing:
    """Serve blobs of ``kind``, keeping only the ``keep`` most recently added."""

    def __init__(self, server: Server, kind: str, keep: int) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self._server = server
        self.kind = kind
        self.keep = keep
        self._keys: list[str] = []

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def add(self, key: str, data: bytes | Callable[[], bytes]) -> None:
        """Serve ``data`` (bytes, or a provider called per request) under ``key``."""
        if key in self._keys:
            return
        if callable(data):
            self._server.serve_provider(self.kind, key, data)
        else:
            self._server.serve(self.kind, key, data)
        self._keys.append(key)
        while len(self._keys) > self.keep:
            self._server.unserve(self.kind, self._keys.pop(0))
