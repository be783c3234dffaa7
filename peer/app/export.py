"""``swarmtrain export``: a kept version as safetensors, a Hugging Face model directory, or
a PEFT adapter directory.

``hf`` writes what ``AutoModelForCausalLM.from_pretrained(OUT)`` loads (LoRA adapters
merged into the base); ``peft`` writes the adapters alone, for ``PeftModel.from_pretrained``
on the base directory. Both rebuild the model from this machine's model directory, so the
initial checksum is checked against the genesis first: a different directory would give
a model that is not the swarm's. ``swarmtrain.json`` in OUT names the swarm, the version
and its parent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarmtrain.dht import GenesisRecord, ValidationError
from swarmtrain.peer.config import SwarmConfig
from swarmtrain.peer.round.state import genesis_state
from swarmtrain.peer.store.versions import VersionStore
from swarmtrain.peer.training.tasks import HF_PREFIX, load_task
from swarmtrain.peer.training.trainer import load_model_params

FORMATS: tuple[str, ...] = ("safetensors", "hf", "peft")
METADATA_FILE = "swarmtrain.json"
GENESIS_FILE = "genesis.json"


class ExportError(RuntimeError):
    """A version cannot be exported in the asked format; the message says what to change."""


@dataclass(frozen=True)
class Exported:
    path: Path
    metadata: dict[str, Any]


def read_genesis(data_dir: Path) -> GenesisRecord:
    """The genesis record a peer's data dir adopted (written by the peer on joining)."""
    path = data_dir / GENESIS_FILE
    try:
        pin = json.loads(path.read_text())
        return GenesisRecord.model_validate(pin["record"])
    except FileNotFoundError:
        raise ExportError(f"{path} is missing; pass the --data-dir a peer ran with") from None
    except (ValueError, KeyError, TypeError, ValidationError) as error:
        raise ExportError(f"{path} is damaged ({type(error).__name__}); export from another peer's data dir") \
            from error


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an empty directory; choose a new output directory")


def export_version(store: VersionStore, data_dir: Path, version: str, out: Path, *, fmt: str = "safetensors",
                   model_dir: Path | None = None) -> Exported:
    """Write ``version`` to ``out`` in format ``fmt`` (one of :data:`FORMATS`).

    ``model_dir``: this machine's copy of an ``hf:`` swarm's model directory (default:
    the path the genesis names, right on the machine that started the swarm).
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    version_id = store.resolve(version)
    commit = store.commit(version_id)
    if fmt == "safetensors":
        return Exported(store.export(version_id, out), {"version": version_id, "parent": commit.parent_id})
    genesis = read_genesis(data_dir)
    config = SwarmConfig.from_dict(genesis.config)
    if not config.task.startswith(HF_PREFIX):
        raise ExportError(f"--format {fmt} is for swarms of Hugging Face models (hf: tasks); this one trains "
                          f"{config.task!r}: use --format safetensors")
    rank = config.train.lora_rank
    if fmt == "peft" and not rank:
        raise ExportError("--format peft writes LoRA adapters, and this swarm trains every parameter "
                          "(no --lora): use --format hf")
    if model_dir is not None:
        config = config.replace(task=f"{HF_PREFIX}{model_dir}")
    _check_out(out)
    from swarmtrain.peer.training.tasks.hf import HFTask  # transformers loads slowly: only when used

    task = load_task(config)
    assert isinstance(task, HFTask)
    initial = genesis_state(task, config).checksum.hex()
    if initial != genesis.initial_checksum:
        raise ExportError(f"your model directory differs from the swarm's (checksum {initial[:12]} vs "
                          f"{genesis.initial_checksum[:12]}); pass the one this peer trained with: --model DIR")
    params, _ = store.load(version_id)
    model = task.build_model()
    load_model_params(model, params)
    path = task.path.resolve()
    if fmt == "peft":
        # Loaders find the base here (peft records the name the base was loaded under).
        model.peft_config["default"].base_model_name_or_path = str(path)
        model.save_pretrained(out)
    else:
        (model.merge_and_unload() if rank else model).save_pretrained(out)
    tokenizer = task.tokenizer
    if tokenizer is not None:
        tokenizer.save_pretrained(out)  # type: ignore[attr-defined]
    metadata = {
        "swarm": genesis.swarm, "genesis": genesis.digest(), "version": version_id, "parent": commit.parent_id,
        "round": commit.round, "validation_loss": commit.validation_loss, "state_checksum": commit.state_checksum,
        "format": fmt, "base_model": str(path), "lora_rank": rank,
        # Without a tokenizer the model reads UTF-8 bytes: token id = byte value.
        "tokenizer": "included" if tokenizer is not None else "bytes",
    }
    (out / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return Exported(out, metadata)
