"""Local text for ``hf:`` tasks: files, directories of them, or JSONL with a "text" field.

Files are split into training and held-out sets by a hash of their path relative to the
``--data`` argument that named them (:func:`~swarmtrain.peer.training.tasks.stdlib_lm.is_heldout`,
as stdlib-lm does), so peers that keep the same files in different places split them the
same way. Token ids of each side are concatenated and cut into windows of the context
length plus one (inputs and next-token targets): packed sequences, no padding.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .base import Batch, TaskError
from .rng import make_generator
from .stdlib_lm import HELDOUT_MODULUS, is_heldout

# Names never read from a data directory: hidden files (editor and VCS state) and caches.
SKIPPED_DIRS: frozenset[str] = frozenset({"__pycache__"})
JSONL_SUFFIX = ".jsonl"

# Text (str) or raw bytes (byte-level models) to token ids.
Tokenize = Callable[[str | bytes], list[int]]


@dataclass(frozen=True)
class TextFile:
    path: Path
    relpath: str  # '/'-separated, relative to the --data argument's parent: what the split hashes


def collect_text_files(paths: Sequence[Path | str]) -> list[TextFile]:
    """The files the ``--data`` arguments name, each directory walked in sorted order.

    A missing path is a :class:`TaskError` naming it.
    """
    found: list[TextFile] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_file():
            found.append(TextFile(path, path.name))
        elif path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS and not d.startswith("."))
                rel_dir = Path(path.name) / Path(dirpath).relative_to(path)
                found.extend(TextFile(Path(dirpath) / name, (rel_dir / name).as_posix())
                             for name in sorted(filenames) if not name.startswith("."))
        else:
            raise TaskError(f"--data {raw}: no such file or directory")
    return found


def read_documents(file: TextFile, *, as_bytes: bool) -> list[str | bytes]:
    """A plain file is one document; a ``.jsonl`` file one per line (its "text" field)."""
    try:
        if file.path.suffix != JSONL_SUFFIX:
            data = file.path.read_bytes()
            return [data if as_bytes else data.decode("utf-8", errors="replace")]
        lines = file.path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise TaskError(f"--data {file.path}: cannot read it ({error})") from error
    docs: list[str | bytes] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)["text"]
        except (ValueError, KeyError, TypeError):
            text = None
        if not isinstance(text, str):
            raise TaskError(f"--data {file.path}:{number}: a JSONL line must be an object with a string "
                            "\"text\" field")
        docs.append(text.encode("utf-8") if as_bytes else text)
    return docs


def token_ids(files: Sequence[TextFile], tokenize: Tokenize, *, as_bytes: bool,
              separator: int | None) -> torch.Tensor:
    """All documents' ids concatenated (``separator`` after each, e.g. EOS) as int64."""
    ids: list[int] = []
    for file in files:
        for doc in read_documents(file, as_bytes=as_bytes):
            ids.extend(tokenize(doc))
            if separator is not None:
                ids.append(separator)
    return torch.tensor(ids, dtype=torch.int64)


@dataclass(frozen=True, eq=False)
class PackedText:
    """Training and held-out windows, each row ``context + 1`` ids."""

    train: torch.Tensor
    heldout: torch.Tensor


def pack(ids: torch.Tensor, context: int) -> torch.Tensor:
    """Rows of ``context + 1`` ids with stride ``context`` (each id a target exactly once)."""
    if ids.numel() < context + 1:
        return torch.empty(0, context + 1, dtype=torch.int64)
    return ids.unfold(0, context + 1, context)


def pack_corpus(files: Sequence[TextFile], tokenize: Tokenize, *, context: int, as_bytes: bool,
                separator: int | None) -> PackedText:
    """Split by path hash and pack. When the hash leaves one side empty (a single file, a
    few files), the last 1/HELDOUT_MODULUS of the ids is held out instead."""
    if not files:
        raise TaskError("--data names no files (empty directories?); give text files, directories "
                        "of them, or JSONL files with a \"text\" field")
    held = [f for f in files if is_heldout(f.relpath)]
    train = [f for f in files if not is_heldout(f.relpath)]
    if held and train:
        train_ids = token_ids(train, tokenize, as_bytes=as_bytes, separator=separator)
        held_ids = token_ids(held, tokenize, as_bytes=as_bytes, separator=separator)
    else:
        ids = token_ids(files, tokenize, as_bytes=as_bytes, separator=separator)
        cut = ids.numel() - ids.numel() // HELDOUT_MODULUS
        train_ids, held_ids = ids[:cut], ids[cut:]
    packed = PackedText(train=pack(train_ids, context), heldout=pack(held_ids, context))
    for which, rows, n in (("training", packed.train, train_ids.numel()),
                           ("held-out", packed.heldout, held_ids.numel())):
        if rows.shape[0] == 0:
            raise TaskError(f"--data: the {which} text has {n} tokens, fewer than model.context + 1 = "
                            f"{context + 1}; give more text or a smaller context")
    return packed


def _as_batch(rows: torch.Tensor) -> Batch:
    rows = rows.clone()  # unfold views share memory with the corpus; batches must not
    return rows[:, :-1], rows[:, 1:]


def train_stream(rows: torch.Tensor, batch_size: int, *parts: int | str) -> Iterator[Batch]:
    """Endless batches: each epoch a fresh permutation of the rows drawn from ``parts``."""
    gen = make_generator("hf-train", *parts)
    pending = torch.empty(0, dtype=torch.int64)
    while True:
        while pending.numel() < batch_size:
            pending = torch.cat([pending, torch.randperm(rows.shape[0], generator=gen)])
        take, pending = pending[:batch_size], pending[batch_size:]
        yield _as_batch(rows[take])


def heldout_sample(rows: torch.Tensor, batch_size: int, count: int, *parts: int | str) -> list[Batch]:
    """``count`` batches of held-out rows chosen by ``parts``."""
    if count < 0:
        raise ValueError(f"heldout_batches: count must be >= 0, got {count}")
    gen = make_generator("hf-heldout", *parts)
    return [_as_batch(rows[torch.randint(0, rows.shape[0], (batch_size,), generator=gen)])
            for _ in range(count)]
