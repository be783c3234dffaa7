"""Base weights of a Hugging Face model from the swarm's peers (``join --fetch-base``).

A joiner may hold only a model's config (and tokenizer), not its weights: they are large,
and the swarm already has them. Every peer of an ``hf:`` swarm serves its base weights
file (``model.safetensors``, one file) as blob kind "base" under the genesis' initial
checksum. A joiner with ``--fetch-base`` downloads it from a peer, puts it next to a copy
of its own config and tokenizer files in ``DATA_DIR/base-model``, and adopts it only when
the model it builds from there has the genesis' initial state (the checksum every peer
pins; with LoRA the adapters' initial values are drawn from the base's checksum, so that
pins the base too). A holder whose file does not verify is skipped for the next one.

Limits: one ``model.safetensors`` file (sharded checkpoints are not served), held in
memory while it is fetched.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from safetensors import SafetensorError, safe_open

from swarmtrain.peer.config import MAX_MODEL_PARAMS
from swarmtrain.peer.exchange.errors import FetchError
from swarmtrain.peer.exchange.service import Exchange
from swarmtrain.peer.store.files import atomic_write
from swarmtrain.peer.training.tasks import TaskError

BASE_DIR = "base-model"
WEIGHTS_FILE = "model.safetensors"
# Room for any model the genesis bounds allow, fp32, plus the safetensors header.
MAX_BASE_BYTES = 4 * MAX_MODEL_PARAMS + (1 << 24)
FETCH_TIMEOUT_S = 600.0


class BaseFetchError(RuntimeError):
    """The base weights could not be fetched and verified from any peer."""


def serve_base(exchange: Exchange, model_dir: Path, key_hex: str) -> bool:
    """Offer this peer's base weights file under ``key_hex``; False when it has no single
    ``model.safetensors`` to offer (config-only or sharded directories)."""
    path = model_dir / WEIGHTS_FILE
    if not path.is_file():
        return False
    exchange.serve_provider("base", key_hex, path.read_bytes)
    return True


def _is_safetensors(path: Path) -> str | None:
    """None when ``path`` opens as a safetensors file, else why not."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError, ValueError) as error:
        return f"not a safetensors file ({type(error).__name__})"
    return None


def fetch_base(exchange: Exchange, holders: Sequence[str], key_hex: str, model_dir: Path, data_dir: Path,
               verify: Callable[[Path], str | None],
               announce: Callable[[str], None]) -> Path:
    """A directory with ``model_dir``'s files and base weights fetched from ``holders``
    that pass ``verify`` (None: the model built from it has the genesis' initial state;
    else why not). Reuses a directory an earlier run fetched when it still verifies."""
    dest = data_dir / BASE_DIR
    dest.mkdir(parents=True, exist_ok=True)
    for item in model_dir.iterdir():  # config and tokenizer files, this machine's copy
        if item.is_file() and item.name != WEIGHTS_FILE:
            shutil.copy2(item, dest / item.name)
    weights = dest / WEIGHTS_FILE
    if weights.is_file() and verify(dest) is None:
        announce(f"base weights: using the ones fetched before in {dest}")
        return dest
    failures: list[str] = []
    for holder in holders:
        try:
            data = exchange.fetch(holder, "base", key_hex, max_size=MAX_BASE_BYTES, timeout=FETCH_TIMEOUT_S)
        except FetchError as error:
            failures.append(f"{holder[:12]}: {error}")
            continue
        atomic_write(weights, data)
        why = _is_safetensors(weights)
        if why is None:
            try:
                why = verify(dest)
            except (TaskError, RuntimeError) as error:
                # A valid safetensors file with other tensors or shapes: transformers raises
                # RuntimeError. Only the next holder is tried, and the reason is shown in
                # the final error, so a local failure is not hidden either.
                why = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        if why is None:
            announce(f"base weights: fetched {len(data) / 1e6:.1f} MB from {holder[:12]}, verified against the "
                     f"genesis; kept in {dest}")
            return dest
        weights.unlink()
        failures.append(f"{holder[:12]}: {why}")
    raise BaseFetchError(
        f"could not fetch base weights that match the genesis from any of {len(holders)} peer(s)"
        + (f" ({'; '.join(failures[:3])})" if failures else "")
        + "; put the swarm's model.safetensors in the model directory, or retry when more peers are up")
