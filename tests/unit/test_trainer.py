"""LocalTrainer (DiLoCo inner loop) and evaluate_loss, mostly on the synthetic task."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from swarmtrain.peer.config import ModelConfig, SwarmConfig, TrainConfig, preset
from swarmtrain.peer.training.tasks import Batch, Task, TaskError, load_task
from swarmtrain.peer.training.tasks.synthetic import Synthetic
from swarmtrain.peer.training.localstate import tensors_from_bytes, tensors_to_bytes
from swarmtrain.peer.training.trainer import (
    DeviceError, LocalTrainer, OptimizerStateError, ParamsMismatchError, TrainReport, evaluate_loss,
    load_model_params, model_params, resolve_device,
)

TRAIN = TrainConfig(batch_size=16, lr=3e-3)


def _task(name: str = "synthetic", context: int = 64) -> Task:
    config = SwarmConfig(task=name, model=ModelConfig(layers=2, d_model=64, heads=4, context=context),
                         train=TrainConfig(batch_size=8 if name == "stdlib-lm" else 16))
    return load_task(config)


def _trainer(task: Task | None = None, stream_seed: int = 0) -> LocalTrainer:
    return LocalTrainer(task or _task(), TRAIN, stream_seed=stream_seed)


def test_loss_falls_on_synthetic_within_100_steps() -> None:
    trainer = _trainer()
    heldout = trainer.task.heldout_batches(4, seed=0)
    before = evaluate_loss(trainer.task, trainer.model, heldout)
    report = trainer.run(100)
    after = evaluate_loss(trainer.task, trainer.model, heldout)
    assert report.steps == 100 and report.samples == 1600 and report.skipped == 0
    assert math.isfinite(report.mean_loss) and report.seconds > 0
    assert after < 0.5 * before, (before, after)


def test_loss_falls_on_stdlib_lm() -> None:
    task = _task("stdlib-lm", context=32)
    trainer = LocalTrainer(task, TrainConfig(batch_size=8, lr=3e-3), stream_seed=0)
    heldout = task.heldout_batches(2, seed=0)
    before = evaluate_loss(task, trainer.model, heldout)
    trainer.run(40)
    assert evaluate_loss(task, trainer.model, heldout) < before - 1.0


@pytest.mark.timeout(30)
def test_deadline_stops_early() -> None:
    trainer = _trainer()
    start = time.monotonic()
    report = trainer.run(1_000_000, deadline=start + 0.2)
    elapsed = time.monotonic() - start
    assert 0 < report.steps < 1_000_000
    assert elapsed < 1.0 and report.seconds <= elapsed
    assert trainer.run(10, deadline=time.monotonic() - 1.0).steps == 0


def test_zero_steps_and_negative_steps() -> None:
    trainer = _trainer()
    report = trainer.run(0)
    assert isinstance(report, TrainReport) and report.steps == 0 and math.isnan(report.mean_loss)
    with pytest.raises(ValueError, match="steps"):
        trainer.run(-1)


def test_optimizer_state_persists_across_load_params() -> None:
    trainer = _trainer()
    start = trainer.params()
    trainer.run(5)
    param = trainer.model[0].weight
    state = trainer.optimizer.state[param]
    exp_avg = state["exp_avg"].clone()
    assert int(state["step"]) == 5
    trainer.load_params(start)
    assert trainer.model[0].weight is param, "load_params must copy in place"
    assert torch.equal(param, start["0.weight"])
    assert int(trainer.optimizer.state[param]["step"]) == 5
    assert torch.equal(trainer.optimizer.state[param]["exp_avg"], exp_avg)
    trainer.run(3)
    assert int(trainer.optimizer.state[param]["step"]) == 8


def test_saved_optimizer_state_makes_a_restarted_trainer_step_identically() -> None:
    trained = _trainer(stream_seed=3)
    trained.run(5)
    start = trained.params()
    restarted = _trainer(stream_seed=3)
    restarted.load_params(start)
    fresh = _trainer(stream_seed=3)
    fresh.load_params(start)
    restarted.load_optimizer_bytes(trained.optimizer_bytes())
    batch = next(trained.task.train_batches(99))
    for t in (trained, restarted, fresh):
        t._batches = iter([batch])
        t.run(1)
    assert all(torch.equal(trained.params()[n], restarted.params()[n]) for n in start)
    assert not all(torch.equal(trained.params()[n], fresh.params()[n]) for n in start)  # the test can fail


def test_saved_optimizer_state_that_does_not_fit_is_refused_and_changes_nothing() -> None:
    trained = _trainer()
    trained.run(2)
    saved = tensors_from_bytes(trained.optimizer_bytes(), "test")
    name = next(k for k in saved if k.startswith("exp_avg/"))
    wrong_shape = {**saved, name: torch.zeros(3)}
    foreign = {**saved, "exp_avg/no.such.param": torch.zeros(1)}
    incomplete = {k: v for k, v in saved.items() if k != name}
    not_finite = {**saved, name: saved[name] * math.inf}
    target = _trainer()
    for bad, match in ((wrong_shape, "shape"), (foreign, "lacks"), (incomplete, "incomplete"),
                       (not_finite, "not finite")):
        with pytest.raises(OptimizerStateError, match=match):
            target.load_optimizer_bytes(tensors_to_bytes(bad))
    with pytest.raises(OptimizerStateError, match="unreadable"):
        target.load_optimizer_bytes(b"not safetensors")
    assert not target.optimizer.state  # nothing was half-loaded


def test_params_are_detached_fp32_clones() -> None:
    trainer = _trainer()
    params = trainer.params()
    assert params.keys() == dict(trainer.model.named_parameters()).keys()
    for name, p in trainer.model.named_parameters():
        assert params[name].dtype == torch.float32 and not params[name].requires_grad
        assert params[name].data_ptr() != p.data_ptr()
    params["0.weight"].add_(1.0)
    assert not torch.equal(params["0.weight"], trainer.model[0].weight)


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(4, 3)
        self.out = nn.Linear(3, 4, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(x))


def test_tied_weights_appear_once() -> None:
    params = model_params(_Tied())
    assert list(params) == ["emb.weight"]
    gpt = _task("stdlib-lm").build_model()
    assert "tok.weight" in model_params(gpt) and len(model_params(gpt)) == len(list(gpt.parameters()))


def test_load_params_mismatch_is_typed_and_changes_nothing() -> None:
    trainer = _trainer()
    before = trainer.params()
    bad = {**before, "extra": torch.zeros(1)}
    with pytest.raises(ParamsMismatchError, match="unexpected \\['extra'\\]"):
        trainer.load_params(bad)
    missing = dict(before)
    del missing["0.bias"]
    with pytest.raises(ParamsMismatchError, match="missing \\['0.bias'\\]"):
        trainer.load_params(missing)
    wrong_shape = {name: (torch.zeros(2, 2) if name == "0.weight" else p + 1) for name, p in before.items()}
    with pytest.raises(ParamsMismatchError, match="shape"):
        trainer.load_params(wrong_shape)
    assert all(torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


def test_evaluate_loss_with_params_equals_loss_after_loading() -> None:
    trainer = _trainer()
    trainer.run(20)
    trained = trainer.params()
    task = trainer.task
    batches = task.heldout_batches(3, seed=5)
    fresh = task.build_model()
    untrained = evaluate_loss(task, fresh, batches)
    fresh.train()
    with_params = evaluate_loss(task, fresh, batches, params=trained)
    assert fresh.training, "evaluate_loss must restore the model's mode"
    assert with_params == evaluate_loss(task, trainer.model, batches)
    assert with_params != untrained
    load_model_params(fresh, trained)
    assert evaluate_loss(task, fresh, batches) == with_params
    with pytest.raises(ValueError, match="at least one batch"):
        evaluate_loss(task, fresh, [])


def test_non_finite_steps_are_skipped_without_touching_optimizer_state() -> None:
    trainer = _trainer()
    nan_params = {name: torch.full_like(p, math.nan) for name, p in trainer.params().items()}
    trainer.load_params(nan_params)
    report = trainer.run(4)
    assert report.steps == 0 and report.skipped == 4 and report.samples == 0
    assert not trainer.optimizer.state, "AdamW moments must not see non-finite gradients"


def test_streams_differ_between_trainers() -> None:
    task = _task()
    a, b = LocalTrainer(task, TRAIN, stream_seed=1), LocalTrainer(task, TRAIN, stream_seed=2)
    a.run(5)
    b.run(5)
    assert not torch.equal(a.params()["0.weight"], b.params()["0.weight"])


class _ModeProbe(nn.Module):
    """Records (training mode, grad enabled) at each call."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 4)
        self.modes: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append((self.training, torch.is_grad_enabled()))
        return self.lin(x)


def test_evaluate_loss_runs_in_eval_mode_without_grad() -> None:
    task = _task()
    probe = _ModeProbe()
    loss = evaluate_loss(task, probe, task.heldout_batches(2, seed=0))
    assert probe.modes == [(False, False), (False, False)] and probe.training
    assert math.isfinite(loss)


def test_train_config_reaches_the_optimizer_and_clipping() -> None:
    config = TrainConfig(batch_size=16, lr=2e-3, betas=(0.8, 0.9), weight_decay=0.05, grad_clip=1e-3)
    trainer = LocalTrainer(_task(), config, stream_seed=0)
    groups = trainer.optimizer.param_groups
    assert all(g["lr"] == 2e-3 and g["betas"] == (0.8, 0.9) for g in groups)
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert decay[id(trainer.model[0].weight)] == 0.05 and decay[id(trainer.model[0].bias)] == 0.0
    assert len(decay) == len(list(trainer.model.parameters()))
    trainer.run(1)
    grads = [p.grad for p in trainer.model.parameters()]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert float(total) <= 1e-3 * (1 + 1e-4)


class _FiniteStream(Synthetic):
    def train_batches(self, stream_seed: int) -> Iterator[Batch]:
        yield from itertools.islice(super().train_batches(stream_seed), 3)


def test_a_finite_training_stream_is_a_task_error() -> None:
    config = SwarmConfig(task="synthetic", train=TrainConfig(batch_size=4))
    trainer = LocalTrainer(_FiniteStream(config), config.train, stream_seed=0)
    assert trainer.run(3).steps == 3
    with pytest.raises(TaskError, match="ran out of batches"):
        trainer.run(1)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for bad, match in (("tpu", "not a device"), ("meta", "only cpu and cuda")):
        with pytest.raises(DeviceError, match=match):
            resolve_device(bad)
    if torch.cuda.is_available():
        with pytest.raises(DeviceError, match="numbered from 0"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(DeviceError, match="--device cpu"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device machine)")
def test_training_on_the_gpu_hands_back_cpu_params_and_portable_optimizer_state() -> None:
    gpu = LocalTrainer(_task(), TRAIN, stream_seed=0, device="cuda")
    assert next(gpu.model.parameters()).is_cuda
    start = gpu.params()
    report = gpu.run(20)
    trained = gpu.params()
    assert report.steps == 20 and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in trained.values())
    assert any(not torch.equal(start[n], trained[n]) for n in start)
    # AdamW state saved on the GPU restores on a CPU peer, and the other way round.
    cpu = LocalTrainer(_task(), TRAIN, stream_seed=0)
    cpu.load_optimizer_bytes(gpu.optimizer_bytes())
    again = LocalTrainer(_task(), TRAIN, stream_seed=0, device="cuda")
    again.load_optimizer_bytes(cpu.optimizer_bytes())
    again.load_params(trained)
    assert again.run(2).steps == 2
    # The loss falls on the GPU as on the CPU (same task, same stream).
    heldout = gpu.task.heldout_batches(4, seed=0)
    assert evaluate_loss(gpu.task, gpu.task.build_model(), heldout, params=trained) < \
        evaluate_loss(gpu.task, gpu.task.build_model(), heldout, params=start)


def test_eight_bit_inner_adamw_trains_in_a_quarter_of_the_memory_and_restores() -> None:
    """--inner-optim adamw8bit: bitsandbytes' 8-bit AdamW runs on this CPU; its moments
    are uint8 codes with block scales, and a restart restores them exactly."""
    from swarmtrain.peer.training.tasks import load_task
    from swarmtrain.peer.training.trainer import LocalTrainer, OptimizerStateError
    config = preset("smoke")
    task = load_task(config)
    full = LocalTrainer(task, config.train, stream_seed=0)
    eight = LocalTrainer(task, config.train, stream_seed=0, inner_optim="adamw8bit")
    first = eight.run(1).mean_loss
    full.run(15)
    report = eight.run(15)
    assert report.steps == 15 and report.mean_loss < first
    assert eight.optimizer_state_bytes() * 3 < full.optimizer_state_bytes()
    restarted = LocalTrainer(task, config.train, stream_seed=0, inner_optim="adamw8bit")
    restarted.load_optimizer_bytes(eight.optimizer_bytes())
    assert restarted.optimizer_bytes() == eight.optimizer_bytes()
    with pytest.raises(OptimizerStateError, match="8-bit AdamW lacks"):
        restarted.load_optimizer_bytes(full.optimizer_bytes())
    with pytest.raises(OptimizerStateError):
        full.load_optimizer_bytes(eight.optimizer_bytes())
