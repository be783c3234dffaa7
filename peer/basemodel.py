"""Base weights of a Hugging Face model from the swarm's peers (``join --fetch-base``).

A joiner may hold only a model's config (and tokenizer), not its weights: they are large,
and the swarm already has them. Every peer of an ``hf:`` swarm serves its base weights
file (``model.safetensors``, one file) as blob kind "base" under the genesis' initial
checksum. A joiner with ``--fetch-base`` downloads it from a peer, puts it next to a copy
of its own config and tokenizer files in ``DATA_DIR/base-model``, and adopts it only when
the model it builds from there has the genesis' initial state (the checksum every peer
pins; with LoRA the adapters' initial values are drawn from the base's checksum, so that
pins the base too). A holder whose file does not verify is skipped for the next one.

A sharded checkpoint (``model.safetensors.index.json`` naming its shard files) is
served as its index under that key and each shard under a key derived from the key and
the shard's file name (:func:`shard_key`); the joiner fetches the index, then every
shard from the same holder, and verifies the whole directory as above.

Limits: safetensors only (``pytorch_model.bin`` is pickle, never loaded from a
stranger); one file (or shard) held in memory at a time while it is fetched.
"""

from __future__ import annotations

import hashlib
import json
import re
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
INDEX_FILE = "model.safetensors.index.json"
# Shard file names as transformers writes them (model-00001-of-00004.safetensors); a name
# from another peer's index becomes a path here, so nothing else is accepted.
SHARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.safetensors$")
MAX_SHARDS = 256  # transformers' default 5 GB shards: over a terabyte; each is one served blob
MAX_INDEX_BYTES = 16 << 20  # an index names every tensor once: a few MB for the largest models
# Room for any model the genesis bounds allow, fp32, plus the safetensors header.
MAX_BASE_BYTES = 4 * MAX_MODEL_PARAMS + (1 << 24)
FETCH_TIMEOUT_S = 600.0


class BaseFetchError(RuntimeError):
    """The base weights could not be fetched and verified from any peer."""


class ShardIndexError(ValueError):
    """A sharded checkpoint's index that cannot be used (the message says why)."""


def shard_key(key_hex: str, name: str) -> str:
    """The blob key of shard ``name`` of the base served under ``key_hex``."""
    h = hashlib.blake2b(digest_size=32, person=b"swarmtrain-shard")
    h.update(bytes.fromhex(key_hex) + name.encode())
    return h.hexdigest()


def shard_names(index: bytes) -> list[str]:
    """The shard files a ``model.safetensors.index.json`` names, checked: a JSON object
    whose ``weight_map`` maps tensor names to at most :data:`MAX_SHARDS` plain file names."""
    try:
        weight_map = json.loads(index.decode("utf-8"))["weight_map"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ShardIndexError(f"not a safetensors index ({type(error).__name__})") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ShardIndexError("the index's weight_map is not a non-empty object")
    names = sorted({v for v in weight_map.values() if isinstance(v, str)})
    if len(names) != len(set(weight_map.values())) or not all(SHARD_NAME.match(n) for n in names):
        raise ShardIndexError("the index names a shard that is not a plain .safetensors file name")
    if len(names) > MAX_SHARDS:
        raise ShardIndexError(f"the index names {len(names)} shards, more than {MAX_SHARDS}")
    return names


def serve_base(exchange: Exchange, model_dir: Path, key_hex: str) -> bool:
    """Offer this peer's base weights under ``key_hex``: its ``model.safetensors``, or a
    sharded checkpoint's index and shards; False when it has neither (config only)."""
    path = model_dir / WEIGHTS_FILE
    if path.is_file():
        exchange.serve_provider("base", key_hex, path.read_bytes, pinned=True)
        return True
    index = model_dir / INDEX_FILE
    if not index.is_file():
        return False
    try:
        names = shard_names(index.read_bytes())
    except ShardIndexError:
        return False  # this machine's own checkpoint: it loads it or fails on its own terms
    if not all((model_dir / n).is_file() for n in names):
        return False
    # Pinned: served while this peer runs, however many updates and states come after.
    exchange.serve_provider("base", key_hex, index.read_bytes, pinned=True)
    for name in names:
        exchange.serve_provider("base", shard_key(key_hex, name), (model_dir / name).read_bytes, pinned=True)
    return True


def _is_safetensors(path: Path) -> str | None:
    """None when ``path`` opens as a safetensors file, else why not."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError, ValueError) as error:
        return f"not a safetensors file ({type(error).__name__})"
    return None


def _is_weight_file(name: str) -> bool:
    return name in (WEIGHTS_FILE, INDEX_FILE) or name.endswith(".safetensors")


def fetch_base(exchange: Exchange, holders: Sequence[str], key_hex: str, model_dir: Path, data_dir: Path,
               verify: Callable[[Path], str | None],
               announce: Callable[[str], None]) -> Path:
    """A directory with ``model_dir``'s files and base weights fetched from ``holders``
    that pass ``verify`` (None: the model built from it has the genesis' initial state;
    else why not). Reuses a directory an earlier run fetched when it still verifies."""
    dest = data_dir / BASE_DIR
    dest.mkdir(parents=True, exist_ok=True)
    for item in model_dir.iterdir():  # config and tokenizer files, this machine's copy
        if item.is_file() and not _is_weight_file(item.name):
            shutil.copy2(item, dest / item.name)
    if ((dest / WEIGHTS_FILE).is_file() or (dest / INDEX_FILE).is_file()) and _verified(dest, verify) is None:
        announce(f"base weights: using the ones fetched before in {dest}")
        return dest
    failures: list[str] = []
    for holder in holders:
        _clear_weights(dest)
        try:
            got = _fetch_weights(exchange, holder, key_hex, dest)
        except FetchError as error:
            failures.append(f"{holder[:12]}: {error}")
            continue
        why = got if isinstance(got, str) else _verified(dest, verify)
        if why is None:
            announce(f"base weights: fetched {got / 1e6:.1f} MB from {holder[:12]}, verified against the "
                     f"genesis; kept in {dest}")
            return dest
        failures.append(f"{holder[:12]}: {why}")
    _clear_weights(dest)  # nothing unverified is kept
    raise BaseFetchError(
        f"could not fetch base weights that match the genesis from any of {len(holders)} peer(s)"
        + (f" ({'; '.join(failures[:3])})" if failures else "")
        + "; put the swarm's model.safetensors in the model directory, or retry when more peers are up")


def _fetch_weights(exchange: Exchange, holder: str, key_hex: str, dest: Path) -> int | str:
    """Write ``holder``'s base weights into ``dest``: the bytes written, or why they are
    not weights. A sharded checkpoint's shards come from the same holder, within one
    size budget."""
    data = exchange.fetch(holder, "base", key_hex, max_size=MAX_BASE_BYTES, timeout=FETCH_TIMEOUT_S)
    weights = dest / WEIGHTS_FILE
    atomic_write(weights, data)
    if _is_safetensors(weights) is None:
        return len(data)
    weights.unlink()
    if len(data) > MAX_INDEX_BYTES:
        return "not a safetensors file"
    try:
        names = shard_names(data)
    except ShardIndexError as error:
        return f"not a safetensors file, nor an index of shards: {error}"
    total, budget = len(data), MAX_BASE_BYTES
    for name in names:
        if budget <= 0:
            return f"its {len(names)} shards exceed {MAX_BASE_BYTES} bytes in all"
        shard = exchange.fetch(holder, "base", shard_key(key_hex, name), max_size=budget, timeout=FETCH_TIMEOUT_S)
        budget -= len(shard)
        total += len(shard)
        atomic_write(dest / name, shard)
        why = _is_safetensors(dest / name)
        if why is not None:
            return f"shard {name}: {why}"
    atomic_write(dest / INDEX_FILE, data)
    return total


def _verified(dest: Path, verify: Callable[[Path], str | None]) -> str | None:
    try:
        return verify(dest)
    except (TaskError, RuntimeError) as error:
        # A valid safetensors file with other tensors or shapes: transformers raises
        # RuntimeError. Only the next holder is tried, and the reason is shown in the
        # final error, so a local failure is not hidden either.
        return f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"


def _clear_weights(dest: Path) -> None:
    for item in dest.iterdir():
        if item.is_file() and _is_weight_file(item.name):
            item.unlink()
