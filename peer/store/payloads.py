"""The update payloads of recent rounds, kept on disk so versions can be re-derived.

A version is the merge of its parent and the payloads its round accepted. A peer that
keeps those payloads (and serves them) lets any other peer recompute the version from a
parent it already trusts instead of taking a state on someone's word. Payloads are
stored by round, under their digest, and the rounds older than ``keep_rounds`` are
dropped: history as far back as the swarm's DHT records live is what replay can use.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .errors import StoreError
from .files import atomic_write, io_error, remove_temp_files

PAYLOADS_DIR = "payloads"
# Rounds of merged payloads a peer keeps and serves by default (``join --keep-payloads``).
# Replay can reach back this far, and no further than the DHT's round records live.
# Demo preset, dense: ~0.4 MB an update, ~40 MB for 32 rounds of 3 peers.
HISTORY_ROUNDS = 32


class PayloadHistory:
    """Payloads by round under ``root`` (one directory per round, files named by digest)."""

    def __init__(self, root: Path, keep_rounds: int) -> None:
        if keep_rounds < 1:
            raise StoreError(f"keep_rounds must be >= 1, got {keep_rounds}")
        self._root = root
        self._keep = keep_rounds
        self._where: dict[str, Path] = {}
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise io_error("create directory", root, err) from err
        for round_dir in self._round_dirs():
            remove_temp_files(round_dir)
            for entry in round_dir.iterdir():
                if _is_digest(entry.name):
                    self._where[entry.name] = entry

    def put(self, round_: int, digest_hex: str, payload: bytes) -> None:
        """Keep ``payload`` (already verified against ``digest_hex`` by the caller)."""
        if not _is_digest(digest_hex):
            raise StoreError(f"not a payload digest: {digest_hex!r}")
        if digest_hex in self._where:
            return
        directory = self._root / str(round_)
        try:
            directory.mkdir(exist_ok=True)
        except OSError as err:
            raise io_error("create directory", directory, err) from err
        path = directory / digest_hex
        atomic_write(path, payload)
        self._where[digest_hex] = path

    def get(self, digest_hex: str) -> bytes | None:
        """The payload under ``digest_hex``, or None when it is not kept (any more)."""
        path = self._where.get(digest_hex)
        if path is None:
            return None
        try:
            return path.read_bytes()
        except FileNotFoundError:
            self._where.pop(digest_hex, None)
            return None
        except OSError as err:
            raise io_error("read", path, err) from err

    def digests(self) -> list[str]:
        """Every kept digest, oldest round first."""
        return list(self._where)

    def __contains__(self, digest_hex: str) -> bool:
        return digest_hex in self._where

    def prune(self, current_round: int) -> list[str]:
        """Drop rounds older than ``keep_rounds`` before ``current_round``; the digests dropped."""
        dropped: list[str] = []
        for round_dir in self._round_dirs():
            if int(round_dir.name) >= current_round - self._keep:
                continue
            gone = [d for d, p in self._where.items() if p.parent == round_dir]
            for digest in gone:
                del self._where[digest]
            shutil.rmtree(round_dir, ignore_errors=True)
            dropped.extend(gone)
        return dropped

    def _round_dirs(self) -> list[Path]:
        return sorted((p for p in self._root.iterdir() if p.is_dir() and p.name.isdigit()),
                      key=lambda p: int(p.name))


def _is_digest(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)
