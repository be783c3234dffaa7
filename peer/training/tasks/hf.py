"""Task ``hf:PATH``: a Hugging Face causal LM from a local directory, trained on local text.

The directory holds ``config.json`` and optionally weights and a tokenizer. Nothing is
fetched from any hub: the hub's offline switches are set before ``transformers`` is
imported and every load passes ``local_files_only``. Without weights the model is built
from its config and every matrix is drawn portably from the swarm seed, so all peers get
identical bits (transformers' own init uses torch's non-portable ``normal_``). Without a
tokenizer the model reads bytes (ids 0-255, so its vocabulary must hold 256).

With ``train.lora_rank`` (``--lora RANK``) the base is frozen and LoRA adapters on every
linear layer are the swarm's state. The adapters' initial values are drawn from the
base's checksum, so the genesis' initial checksum pins the base model too.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

# Before transformers / huggingface_hub are imported: they read these once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from swarmtrain.peer.config import SwarmConfig  # noqa: E402
from swarmtrain.protocol import state_checksum  # noqa: E402

from . import HF_PREFIX  # noqa: E402
from .base import Batch, Task, TaskError  # noqa: E402
from .rng import make_generator, portable_normal, without_global_rng  # noqa: E402
from .textdata import PackedText, collect_text_files, heldout_sample, pack_corpus, train_stream  # noqa: E402

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
BYTE_VOCAB = 256
_INIT_STD = 0.02  # when the config names no initializer_range

# A peer prints its own one-line progress; transformers' loading bars would garble it.
hf_logging.disable_progress_bar()


def model_dir(task: str) -> Path:
    """The directory of ``hf:PATH``; a missing directory or config is a :class:`TaskError`."""
    path = Path(task[len(HF_PREFIX):]).expanduser()
    if not str(task[len(HF_PREFIX):]):
        raise TaskError("task 'hf:' names no directory; use --task hf:PATH (a local model directory)")
    if not path.is_dir():
        raise TaskError(f"--task {task}: no such model directory {path}")
    if not (path / "config.json").is_file():
        raise TaskError(f"--task {task}: {path / 'config.json'} is missing; a model directory needs "
                        "the model's config.json")
    return path


def has_weights(path: Path) -> bool:
    return any((path / name).is_file() for name in WEIGHT_FILES)


def has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in TOKENIZER_FILES)


def _load_error(path: Path, what: str, error: Exception) -> TaskError:
    return TaskError(f"cannot load the {what} in {path}: {type(error).__name__}: {str(error).splitlines()[0]}")


def load_hf_config(path: Path) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise _load_error(path, "model config", error) from error


def portable_init(model: nn.Module, seed: int, std: float) -> None:
    """Overwrite every matrix (and any non-constant vector) from the swarm seed.

    Constant vectors (norm gains of one, zero biases) are what transformers sets on every
    machine alike, so they are kept.
    """
    gen = make_generator("hf-init", seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            if p.dim() >= 2 or (flat.numel() and not bool((flat == flat[0]).all())):
                p.copy_(portable_normal(p.shape, std, gen))


def load_base(path: Path, seed: int) -> nn.Module:
    """The base model in fp32 on the CPU: its weights, or its config built from ``seed``."""
    try:
        if has_weights(path):
            return AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        hf_config = load_hf_config(path)
        model = without_global_rng(lambda: AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32))
    except (OSError, ValueError, KeyError) as error:
        raise _load_error(path, "model", error) from error
    portable_init(model, seed, float(getattr(hf_config, "initializer_range", _INIT_STD)))
    return model


def add_lora(base: nn.Module, rank: int, seed: int, base_checksum: bytes) -> nn.Module:
    """``base`` frozen, LoRA adapters (rank ``rank``) on its linear layers trainable.

    B starts at zero (the model starts as the base); A is drawn from the base's checksum.
    """
    from peft import LoraConfig, get_peft_model

    # GPT-2 style models store linear layers transposed (Conv1D); peft must be told.
    transposed = any(isinstance(m, Conv1D) for m in base.modules())
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear",
                      fan_in_fan_out=transposed)
    with warnings.catch_warnings():
        # peft asks transformers a question it has deprecated; nothing the user can change.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        model = without_global_rng(lambda: get_peft_model(base, lora))
    gen = make_generator("hf-lora-init", seed, base_checksum.hex())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.copy_(portable_normal(p.shape, p.shape[-1] ** -0.5, gen))
    return model


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on a GPU that supports it; fp32 elsewhere (the CPU checks stay exact)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class HFTask(Task):
    """Next-token prediction on local text (loss in nats per token)."""

    name = "hf"

    def __init__(self, config: SwarmConfig, data: Sequence[Path | str] = ()) -> None:
        self.config = config
        self.path = model_dir(config.task)
        self.hf_config = load_hf_config(self.path)
        self.tokenizer = self._load_tokenizer()
        vocab = int(getattr(self.hf_config, "vocab_size", 0) or 0)
        if self.tokenizer is None and vocab < BYTE_VOCAB:
            raise TaskError(f"{self.path} has no tokenizer, so the model reads bytes and needs a vocabulary of "
                            f">= {BYTE_VOCAB}; its config says vocab_size={vocab}")
        if self.tokenizer is not None and len(self.tokenizer) > vocab:  # type: ignore[arg-type]
            raise TaskError(f"the tokenizer in {self.path} has {len(self.tokenizer)} tokens, more than the "  # type: ignore[arg-type]
                            f"model's vocab_size={vocab}; use the tokenizer the model was made with")
        positions = getattr(self.hf_config, "max_position_embeddings", None) or getattr(
            self.hf_config, "n_positions", None)
        if positions is not None and config.model.context > int(positions):
            raise TaskError(f"model.context {config.model.context} exceeds the model's "
                            f"{positions} positions; use a smaller context")
        # Validated now, so a missing path fails when the peer starts; read on first use.
        self.files = collect_text_files(data)
        self._base_checksum: bytes | None = None

    def _load_tokenizer(self) -> object | None:
        if not has_tokenizer(self.path):
            return None
        try:
            return AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError, KeyError) as error:
            raise _load_error(self.path, "tokenizer", error) from error

    @property
    def lora_rank(self) -> int:
        return self.config.train.lora_rank

    def _tokenize(self, doc: str | bytes) -> list[int]:
        if self.tokenizer is None:
            return list(doc if isinstance(doc, bytes) else doc.encode("utf-8"))
        ids = self.tokenizer(doc, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
        return list(ids)

    @functools.cached_property
    def corpus(self) -> PackedText:
        if not self.files:
            raise TaskError(f"task {self.config.task!r} trains on local text: name it with --data PATH [PATH ...]")
        eos = None if self.tokenizer is None else getattr(self.tokenizer, "eos_token_id", None)
        return pack_corpus(self.files, self._tokenize, context=self.config.model.context,
                           as_bytes=self.tokenizer is None, separator=eos)

    def build_base(self) -> nn.Module:
        """The base model alone (without adapters), as the directory and seed define it."""
        return load_base(self.path, self.config.seed)

    def build_model(self) -> nn.Module:
        base = self.build_base()
        if not self.lora_rank:
            return base
        if self._base_checksum is None:  # the same directory and seed give the same base
            self._base_checksum = state_checksum({n: p.detach() for n, p in base.named_parameters()})
        return add_lora(base, self.lora_rank, self.config.seed, self._base_checksum)

    def train_batches(self, stream_seed: int) -> Iterator[Batch]:
        return train_stream(self.corpus.train, self.config.train.batch_size, self.config.seed, stream_seed)

    def heldout_batches(self, count: int, seed: int) -> list[Batch]:
        return heldout_sample(self.corpus.heldout, self.config.train.batch_size, count, self.config.seed, seed)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        with _autocast(x.device):
            logits = model(input_ids=x, use_cache=False).logits
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))


def make_hf_task(config: SwarmConfig, data: Sequence[Path | str] = ()) -> HFTask:
    """Factory used by :func:`~swarmtrain.peer.training.tasks.load_task` for ``hf:`` tasks."""
    return HFTask(config, data)
