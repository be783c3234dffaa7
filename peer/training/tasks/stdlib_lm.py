"""Task ``stdlib-lm``: a byte-level GPT trained on the running Python's standard library.

The corpus is on every machine that runs a peer, so the demo needs no download. Files are
split into training and held-out sets by a hash of their relative path (about 1 in 20
held out), which every peer computes the same way without coordination; peers on
different Python versions simply have slightly different corpora, which is harmless
because each peer only ever compares losses on its own held-out batches.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from swarmtrain.peer.config import SwarmConfig

from .base import Batch, Task, TaskError
from .model import build_byte_gpt
from .rng import make_generator

# Directory names anywhere in a relative path that exclude a file: third-party code is not
# the standard library, and test suites are huge, repetitive and vary between builds.
EXCLUDED_DIRS: frozenset[str] = frozenset({
    "site-packages", "dist-packages", "__pycache__",
    "test", "tests", "idle_test",
})
HELDOUT_MODULUS = 20  # 1 file in 20 (~5%) is held out


def is_heldout(relpath: str) -> bool:
    """Whether a file (path relative to the stdlib root, '/'-separated) is held out."""
    digest = hashlib.blake2b(relpath.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % HELDOUT_MODULUS == 0


def stdlib_root() -> Path:
    """The running interpreter's standard library directory."""
    return Path(sysconfig.get_paths()["stdlib"])


def list_source_files(root: Path) -> list[str]:
    """Relative '/'-separated paths of the .py files under ``root``, sorted, tests excluded."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Prune in place so os.walk never descends into excluded trees.
        dirnames[:] = [d for d in dirnames if d not in EXCLUDED_DIRS]
        rel_dir = Path(dirpath).relative_to(root)
        found.extend((rel_dir / name).as_posix() for name in filenames if name.endswith(".py"))
    return sorted(found)


@dataclass(frozen=True, eq=False)
class Corpus:
    """Training and held-out bytes (uint8 tensors) and the files each came from."""

    train: torch.Tensor
    heldout: torch.Tensor
    train_files: tuple[str, ...]
    heldout_files: tuple[str, ...]
    digest: str  # BLAKE2b-256 of file names and bytes: tells peers' corpora apart in logs


def _read_all(root: Path, files: list[str], hasher: Any) -> torch.Tensor:
    """Concatenate the files' bytes (in the given order) into one uint8 tensor."""
    chunks: list[bytes] = []
    for rel in files:
        data = (root / rel).read_bytes()
        hasher.update(rel.encode("utf-8") + b"\0" + len(data).to_bytes(8, "little"))
        hasher.update(data)
        chunks.append(data)
    if not chunks:
        return torch.empty(0, dtype=torch.uint8)
    # bytearray: torch.frombuffer needs a writable buffer to hand out a writable tensor.
    return torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8)


def load_corpus(root: Path | None = None) -> Corpus:
    """The corpus under ``root`` (default: this interpreter's stdlib), read once per process."""
    return _load_corpus(stdlib_root() if root is None else Path(root))


@functools.cache
def _load_corpus(root: Path) -> Corpus:
    # Cached on the resolved path, so load_corpus() and load_corpus(stdlib_root()) share
    # one copy (about 12 MB, read in a fraction of a second).
    if not root.is_dir():
        raise TaskError(f"stdlib-lm: the standard library directory {root} does not exist; "
                        "run the peer with a regular CPython install or choose another --task")
    files = list_source_files(root)
    heldout_files = [f for f in files if is_heldout(f)]
    train_files = [f for f in files if not is_heldout(f)]
    hasher = hashlib.blake2b(digest_size=32)
    train = _read_all(root, train_files, hasher)
    heldout = _read_all(root, heldout_files, hasher)
    return Corpus(train=train, heldout=heldout, train_files=tuple(train_files),
                  heldout_files=tuple(heldout_files), digest=hasher.hexdigest())


def _windows(data: torch.Tensor, starts: torch.Tensor, length: int) -> Batch:
    """(x, y) int64 batches: rows data[s : s+length] and the same shifted by one byte."""
    rows = data[starts.unsqueeze(1) + torch.arange(length + 1)].to(torch.int64)
    return rows[:, :-1], rows[:, 1:]


class StdlibLM(Task):
    """Next-byte prediction on the standard library's source (loss in nats per byte)."""

    name = "stdlib-lm"

    def __init__(self, config: SwarmConfig, root: Path | None = None) -> None:
        self.config = config
        self._root = root
        if config.model.vocab < 256:
            raise TaskError(f"stdlib-lm needs model.vocab >= 256 (one id per byte), got {config.model.vocab}")

    @property
    def corpus(self) -> Corpus:
        return load_corpus(self._root)

    def build_model(self) -> nn.Module:
        return build_byte_gpt(self.config.model, self.config.seed)

    def _checked(self, data: torch.Tensor, which: str) -> torch.Tensor:
        need = self.config.model.context + 1
        if data.numel() < need:
            raise TaskError(f"stdlib-lm: the {which} corpus has {data.numel()} bytes, fewer than "
                            f"model.context + 1 = {need}; use a smaller context or another --task")
        return data

    def train_batches(self, stream_seed: int) -> Iterator[Batch]:
        data = self._checked(self.corpus.train, "training")
        ctx, bs = self.config.model.context, self.config.train.batch_size
        gen = make_generator("stdlib-lm-train", self.config.seed, stream_seed)
        high = data.numel() - ctx  # start + ctx + 1 <= numel
        while True:
            yield _windows(data, torch.randint(0, high, (bs,), generator=gen), ctx)

    def heldout_batches(self, count: int, seed: int) -> list[Batch]:
        if count < 0:
            raise ValueError(f"heldout_batches: count must be >= 0, got {count}")
        data = self._checked(self.corpus.heldout, "held-out")
        ctx, bs = self.config.model.context, self.config.train.batch_size
        gen = make_generator("stdlib-lm-heldout", self.config.seed, seed)
        high = data.numel() - ctx
        return [_windows(data, torch.randint(0, high, (bs,), generator=gen), ctx) for _ in range(count)]

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        logits = model(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def make_stdlib_lm(config: SwarmConfig) -> StdlibLM:
    """Factory used by :func:`~swarmtrain.peer.training.tasks.load_task`."""
    return StdlibLM(config)
