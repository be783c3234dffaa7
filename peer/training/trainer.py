"""The inner loop of DiLoCo: local AdamW steps on this peer's copy of the model.

A round starts from the swarm's version V(r): :meth:`LocalTrainer.load_params` copies it
into the model in place, so the Parameter objects (and the AdamW state keyed by them)
survive; DiLoCo keeps the inner optimizer state across rounds. :func:`evaluate_loss` is
what a checker uses to score V(r) and V(r) plus one update on its held-out batches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from swarmtrain.peer.config import TrainConfig
from swarmtrain.peer.training.localstate import LocalStateError, tensors_from_bytes, tensors_to_bytes
from swarmtrain.peer.training import wideadam
from swarmtrain.peer.training.tasks import Batch, Task, TaskError


class ParamsMismatchError(ValueError):
    """A parameter mapping does not fit the model (names or shapes differ)."""


class OptimizerStateError(LocalStateError):
    """Saved inner-optimizer state does not fit this model; the peer starts AdamW afresh."""


# AdamW's per-parameter state, as torch keeps it (step is a 0-d float tensor).
_ADAM_KEYS = ("step", "exp_avg", "exp_avg_sq")
# bitsandbytes' 8-bit AdamW: two moments (uint8 with block-wise absmax scales and a
# quantile map each; fp32 for tensors under its 4096-element threshold) and an int step.
_ADAM8_KEYS = ("step", "state1", "state2", "qmap1", "qmap2", "absmax1", "absmax2")
_ADAM8_REQUIRED = ("step", "state1", "state2")

# --inner-optim: the inner loop's optimizer, a per-peer choice (it never leaves the peer:
# updates are parameter differences, whatever made them).
# wide-adamw: AdamW whose second moment estimates that of the swarm's whole batch
# (peer/training/wideadam.py), at two half-batch backward passes a step.
INNER_OPTIMIZERS = ("adamw", "adamw8bit", "wide-adamw")
# The per-parameter state each fp32 optimizer saves, and which of it is a 0-d scalar.
_FP32_KEYS = {"adamw": (_ADAM_KEYS, frozenset({"step"})), "wide-adamw": (wideadam.STATE_KEYS, wideadam.SCALAR_KEYS)}


class DeviceError(ValueError):
    """The requested training device does not exist here."""


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when torch sees a GPU, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Only the inner steps run there: merges, checksums and votes stay on the CPU in fp32,
    where every peer computes them the same way.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise DeviceError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from error
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise DeviceError(f"--device {name!r}: only cpu and cuda are supported")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {name!r}: this torch ({torch.__version__}) sees no CUDA GPU; "
                          "install a CUDA build of torch, or use --device cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"--device {name!r}: there are {torch.cuda.device_count()} CUDA device(s), "
                          f"numbered from 0")
    return device


def shared_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters the swarm trains, sends, merges and checksums: the trainable ones.

    A task decides by what its ``build_model`` freezes (``requires_grad=False``), e.g. a
    LoRA base model; every parameter of the built-in tasks is trainable.
    """
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def model_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached fp32 CPU copies of the shared parameters (:func:`shared_parameters`).

    ``named_parameters`` lists a tied (shared) parameter once, under its first name.
    """
    return {name: p.detach().to(device="cpu", dtype=torch.float32, copy=True)
            for name, p in shared_parameters(model).items()}


def load_model_params(model: nn.Module, params: Mapping[str, torch.Tensor]) -> None:
    """Copy ``params`` into the model's parameters in place (keeps Parameter identity).

    Raises :class:`ParamsMismatchError` before changing anything if the names or shapes
    differ, so a bad mapping never leaves the model half-loaded.
    """
    own = shared_parameters(model)
    missing, unexpected = sorted(own.keys() - params.keys()), sorted(params.keys() - own.keys())
    if missing or unexpected:
        raise ParamsMismatchError(f"parameters do not match the model: missing {missing[:5]}"
                                  f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                                  f"{'...' if len(unexpected) > 5 else ''}; "
                                  "were they made for another task or model config?")
    wrong = [f"{n}: {tuple(params[n].shape)} != {tuple(p.shape)}" for n, p in own.items()
             if params[n].shape != p.shape]
    if wrong:
        raise ParamsMismatchError(f"parameter shapes do not match the model: {wrong[:5]}; "
                                  "were they made for another model config?")
    with torch.no_grad():
        for name, p in own.items():
            p.copy_(params[name])


def evaluate_loss(task: Task, model: nn.Module, batches: Sequence[Batch],
                  params: Mapping[str, torch.Tensor] | None = None) -> float:
    """Mean of ``task.loss`` over ``batches`` in eval mode without gradients.

    With ``params``, they are first loaded into ``model`` (in place, so the model keeps
    them afterwards). The model's train/eval mode is restored on return.
    """
    if not batches:
        raise ValueError("evaluate_loss needs at least one batch; ask task.heldout_batches for count >= 1")
    if params is not None:
        load_model_params(model, params)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            # Sum in float64 so the mean does not depend on float32 rounding order.
            total = sum(float(task.loss(model, batch)) for batch in batches)
    finally:
        model.train(was_training)
    return total / len(batches)


@dataclass(frozen=True)
class TrainReport:
    """What one :meth:`LocalTrainer.run` did.

    ``steps`` counts optimizer steps taken; ``skipped`` counts batches whose loss or
    gradient was not finite (no step taken, optimizer state untouched). ``mean_loss`` is
    over the taken steps (NaN when none).
    """

    steps: int
    samples: int
    mean_loss: float
    seconds: float
    skipped: int = 0


def _batch_size(batch: Batch) -> int:
    return int(batch[0].shape[0]) if batch and batch[0].dim() > 0 else 1


def _make_optimizer(kind: str, groups: list[dict[str, object]], config: TrainConfig) -> torch.optim.Optimizer:
    if kind == "adamw8bit":
        # Imported only here: bitsandbytes loads native code and is needed by no other path.
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    if kind == "wide-adamw":
        return wideadam.WideAdamW(groups, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


class LocalTrainer:
    """This peer's model copy, its AdamW inner optimizer and its training stream."""

    def __init__(self, task: Task, config: TrainConfig, *, stream_seed: int,
                 model: nn.Module | None = None, device: torch.device | str = "cpu",
                 inner_optim: str = "adamw") -> None:
        if inner_optim not in INNER_OPTIMIZERS:
            raise ValueError(f"inner optimizer must be one of {INNER_OPTIMIZERS}, got {inner_optim!r}")
        self.task = task
        self.config = config
        self.device = torch.device(device)
        self.model = (task.build_model() if model is None else model).to(self.device)
        self.model.train()
        self.inner_optim = inner_optim
        self.optimizer = _make_optimizer(inner_optim, self._param_groups(), config)
        self._batches: Iterator[Batch] = task.train_batches(stream_seed)

    def _param_groups(self) -> list[dict[str, object]]:
        # Decay only matrices: pulling LayerNorm gains and biases toward zero hurts and
        # regularises nothing (the usual transformer practice).
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups: list[dict[str, object]] = [
            {"params": [p for p in params if p.dim() >= 2]},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        return [g for g in groups if g["params"]]

    def _next_batch(self) -> Batch:
        try:
            batch = next(self._batches)
        except StopIteration:
            raise TaskError(f"task {self.task.name!r}: train_batches() ran out of batches; it must "
                            "yield forever (loop over the data, reshuffling each epoch)") from None
        if self.device.type == "cpu":
            return batch
        return tuple(t.to(self.device, non_blocking=True) for t in batch)

    def set_swarm_size(self, peers: int) -> None:
        """How many peers' updates the next merge averages (``wide-adamw`` uses it; the
        other optimizers ignore it)."""
        if isinstance(self.optimizer, wideadam.WideAdamW):
            self.optimizer.set_swarm_size(max(1, peers))

    def load_params(self, params: Mapping[str, torch.Tensor]) -> None:
        """Start from the round's version: copy it into the model, keep the optimizer state."""
        load_model_params(self.model, params)

    def params(self) -> dict[str, torch.Tensor]:
        """Detached fp32 clones of the current parameters (see :func:`model_params`)."""
        return model_params(self.model)

    def optimizer_state_bytes(self) -> int:
        """Bytes the inner optimizer's state holds (what ``--inner-optim adamw8bit`` shrinks)."""
        return sum(v.numel() * v.element_size() for s in self.optimizer.state.values()
                   for v in s.values() if isinstance(v, torch.Tensor))

    def optimizer_bytes(self) -> bytes:
        """The inner optimizer's state as ``"<key>/<param name>"`` safetensors bytes."""
        keys = _ADAM8_KEYS if self.inner_optim == "adamw8bit" else _FP32_KEYS[self.inner_optim][0]
        state: dict[str, torch.Tensor] = {}
        for name, p in self.model.named_parameters():
            for key, value in self.optimizer.state.get(p, {}).items():
                if key in keys:
                    tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.int64)
                    state[f"{key}/{name}"] = tensor.detach().cpu().clone()  # 8-bit qmaps are shared
        return tensors_to_bytes(state)

    def load_optimizer_bytes(self, data: bytes) -> None:
        """Restore what :meth:`optimizer_bytes` saved; nothing changes unless all of it fits."""
        try:
            saved = tensors_from_bytes(data, "inner-optimizer state")
        except LocalStateError as error:
            raise OptimizerStateError(str(error)) from error
        if self.inner_optim == "adamw8bit":
            self._load_adam8(saved)
            return
        keys, scalars = _FP32_KEYS[self.inner_optim]
        params = dict(self.model.named_parameters())
        restored: dict[torch.nn.Parameter, dict[str, torch.Tensor]] = {}
        for entry, value in saved.items():
            key, _, name = entry.partition("/")
            if key not in keys or name not in params:
                raise OptimizerStateError(f"saved inner-optimizer state has {entry!r}, which this model's "
                                          f"{self.inner_optim} lacks (saved by another --inner-optim?)")
            want = torch.Size([]) if key in scalars else params[name].shape
            if value.shape != want:
                raise OptimizerStateError(f"saved inner-optimizer state {entry!r} has shape "
                                          f"{tuple(value.shape)}, the model needs {tuple(want)}")
            # torch keeps AdamW's step on the CPU unless capturable; the moments go with the params.
            where = torch.device("cpu") if key in scalars else self.device
            restored.setdefault(params[name], {})[key] = value.to(device=where, dtype=torch.float32, copy=True)
        incomplete = [n for n, p in params.items() if p in restored and len(restored[p]) != len(keys)]
        if incomplete:
            raise OptimizerStateError(f"saved inner-optimizer state is incomplete for {incomplete[:3]}")
        for p, state in restored.items():
            self.optimizer.state[p] = state

    def _load_adam8(self, saved: Mapping[str, torch.Tensor]) -> None:
        # Shapes follow bitsandbytes' blocking, not the parameter's; the parameter's size and
        # the keys present are what can be checked. A state saved by the other optimizer
        # fails here, and the peer starts the inner optimizer afresh.
        params = dict(self.model.named_parameters())
        restored: dict[torch.nn.Parameter, dict[str, object]] = {}
        for entry, value in saved.items():
            key, _, name = entry.partition("/")
            if key not in _ADAM8_KEYS or name not in params:
                raise OptimizerStateError(f"saved inner-optimizer state has {entry!r}, which this model's "
                                          "8-bit AdamW lacks (saved by --inner-optim adamw?)")
            if key in ("state1", "state2") and value.numel() != params[name].numel():
                raise OptimizerStateError(f"saved inner-optimizer state {entry!r} has {value.numel()} values, "
                                          f"the model needs {params[name].numel()}")
            restored.setdefault(params[name], {})[key] = (
                int(value.item()) if key == "step" else value.to(device=self.device, copy=True))
        incomplete = [n for n, p in params.items() if p in restored and any(k not in restored[p] for k in _ADAM8_REQUIRED)]
        if incomplete:
            raise OptimizerStateError(f"saved inner-optimizer state is incomplete for {incomplete[:3]}")
        for p, state in restored.items():
            self.optimizer.state[p] = state

    def _gradient(self, batch: Batch, clip: float) -> tuple[float, torch.Tensor]:
        """Set the parameters' clipped gradient for ``batch``; its loss and unclipped norm.

        ``wide-adamw`` takes it as the mean of two half-batch gradients (the two halves'
        mean losses, averaged) and hands the optimizer their difference as this step's
        noise sample; a batch of one sample gives no sample, and the step keeps the
        noise average as it was."""
        model, opt = self.model, self.optimizer
        opt.zero_grad(set_to_none=True)
        n = _batch_size(batch)
        half = n // 2
        if not isinstance(opt, wideadam.WideAdamW) or half == 0:
            loss = self.task.loss(model, batch)
            loss.backward()
            return float(loss.detach()), torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        params = [p for p in model.parameters() if p.requires_grad]
        grads: list[list[torch.Tensor]] = []
        loss_sum = 0.0
        # Tensors without the batch dimension (none in the shipped tasks) go whole to both.
        halves = [tuple(t[sl] if t.dim() and t.shape[0] == n else t for t in batch)
                  for sl in (slice(0, half), slice(half, None))]
        for part in halves:
            opt.zero_grad(set_to_none=True)
            loss = self.task.loss(model, part)
            loss.backward()
            loss_sum += float(loss.detach())
            grads.append([torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params])
        for p, ga, gb in zip(params, *grads):
            p.grad = (ga + gb) / 2
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        scale = min(1.0, clip / (float(grad_norm) + 1e-6))  # the factor clip_grad_norm_ applied
        opt.noise = wideadam.half_batch_noise((grads[0], grads[1]), params, scale)
        return loss_sum / 2, grad_norm

    def run(self, steps: int, deadline: float | None = None) -> TrainReport:
        """Run up to ``steps`` inner steps; stop early rather than pass ``deadline``.

        ``deadline`` is a :func:`time.monotonic` time. A step is not started when the
        mean step time so far says it would end after the deadline, so the round's
        commit phase is not delayed by the last step.
        """
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        model, opt, clip = self.model, self.optimizer, self.config.grad_clip
        model.train()
        start = time.monotonic()
        taken = skipped = samples = 0
        loss_sum = 0.0
        for attempt in range(steps):
            if deadline is not None:
                now = time.monotonic()
                per_step = (now - start) / attempt if attempt else 0.0
                if now + per_step > deadline:
                    break
            batch = self._next_batch()
            loss_value, grad_norm = self._gradient(batch, clip)
            if not (math.isfinite(loss_value) and math.isfinite(float(grad_norm))):
                # One bad batch must not poison AdamW's moments for every later round.
                opt.zero_grad(set_to_none=True)
                skipped += 1
                continue
            opt.step()
            taken += 1
            samples += _batch_size(batch)
            loss_sum += loss_value
        return TrainReport(steps=taken, samples=samples,
                           mean_loss=loss_sum / taken if taken else math.nan,
                           seconds=time.monotonic() - start, skipped=skipped)
