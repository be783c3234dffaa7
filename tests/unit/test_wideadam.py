"""wide-adamw: AdamW with a second moment for the swarm's whole batch, and its trainer path."""

from __future__ import annotations

import math

import pytest
import torch

from swarmtrain.peer.config import ModelConfig, SwarmConfig, TrainConfig
from swarmtrain.peer.training.tasks import load_task
from swarmtrain.peer.training.trainer import LocalTrainer, OptimizerStateError
from swarmtrain.peer.training.wideadam import WideAdamW

BETAS = (0.9, 0.95)


def _scalar_step(k: int, grad: float, noise: float, lr: float = 0.01) -> float:
    p = torch.nn.Parameter(torch.tensor([1.0]))
    opt = WideAdamW([{"params": [p]}], lr=lr, betas=BETAS, weight_decay=0.0, eps=0.0, swarm_size=k)
    p.grad = torch.tensor([grad])
    opt.noise = {p: torch.tensor([noise])}
    opt.step()
    return 1.0 - float(p.detach())


def test_the_noise_share_k_peers_average_away_leaves_the_second_moment() -> None:
    # First step: bias-corrected m = g = 0.5, v = g^2 = 0.25, noise average s = 0.2.
    # K=4: v_eff = max(0.25 - 0.75 * 0.2, 0.25 / 4) = 0.1.
    assert _scalar_step(4, 0.5, 0.2) == pytest.approx(0.01 * 0.5 / math.sqrt(0.1), rel=1e-6)
    # Noise above the signal: the floor v / K binds, a step sqrt(K) times AdamW's.
    assert _scalar_step(4, 0.5, 1.0) == pytest.approx(0.01 * 0.5 / math.sqrt(0.0625), rel=1e-6)
    # K=1 is AdamW: the step is lr whatever the noise (sign-like first step).
    assert _scalar_step(1, 0.5, 1.0) == pytest.approx(0.01, rel=1e-6)
    with pytest.raises(ValueError, match="swarm size"):
        WideAdamW([{"params": [torch.nn.Parameter(torch.zeros(1))]}], lr=0.01, betas=BETAS, weight_decay=0.0,
                  swarm_size=0)


def test_a_step_without_a_fresh_noise_sample_keeps_the_noise_average() -> None:
    # A batch of one sample cannot be halved: that step brings no sample, and the last
    # step's must not be counted again.
    p = torch.nn.Parameter(torch.tensor([1.0]))
    opt = WideAdamW([{"params": [p]}], lr=0.01, betas=BETAS, weight_decay=0.0, swarm_size=4)
    p.grad = torch.tensor([0.5])
    opt.noise = {p: torch.tensor([0.2])}
    opt.step()
    noise = opt.state[p]["noise"].clone()
    opt.step()
    assert float(opt.state[p]["noise_steps"]) == 1
    assert torch.equal(opt.state[p]["noise"], noise)


def test_with_one_peer_it_steps_as_torch_adamw() -> None:
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5, 3))
    b = torch.nn.Parameter(a.detach().clone())
    wide = WideAdamW([{"params": [a]}], lr=3e-3, betas=BETAS, weight_decay=0.01)
    adamw = torch.optim.AdamW([b], lr=3e-3, betas=BETAS, weight_decay=0.01)
    for _ in range(10):
        g = torch.randn(5, 3)
        a.grad, b.grad = g.clone(), g.clone()
        wide.noise = {a: torch.rand(5, 3)}
        wide.step()
        adamw.step()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-7)


def _trainer(inner_optim: str, seed: int = 0) -> LocalTrainer:
    config = SwarmConfig(task="synthetic", model=ModelConfig(layers=2, d_model=64, heads=4, context=64),
                         train=TrainConfig(batch_size=16))
    return LocalTrainer(load_task(config), TrainConfig(batch_size=16, lr=3e-3), stream_seed=seed,
                        inner_optim=inner_optim)


def test_the_half_batch_gradient_is_the_full_batch_gradient() -> None:
    wide, plain = _trainer("wide-adamw"), _trainer("adamw")
    plain.load_params(wide.params())
    batch = next(wide.task.train_batches(5))
    loss_wide, _ = wide._gradient(batch, clip=1e9)
    loss_plain, _ = plain._gradient(batch, clip=1e9)
    assert loss_wide == pytest.approx(loss_plain, rel=1e-5)
    for p, q in zip(wide.model.parameters(), plain.model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)
    # And the noise sample is there, one per parameter, not all zero.
    assert isinstance(wide.optimizer, WideAdamW)
    assert len(wide.optimizer.noise) == len(list(wide.model.parameters()))
    assert any(float(s.sum()) > 0 for s in wide.optimizer.noise.values())


def test_a_swarm_size_changes_the_steps_and_the_state_survives_a_restart() -> None:
    one, four = _trainer("wide-adamw", seed=3), _trainer("wide-adamw", seed=3)
    four.set_swarm_size(4)
    one.run(5)
    four.run(5)
    assert any(not torch.equal(one.params()[n], four.params()[n]) for n in one.params())  # K matters

    restarted = _trainer("wide-adamw", seed=3)
    restarted.set_swarm_size(4)
    restarted.load_params(four.params())
    restarted.load_optimizer_bytes(four.optimizer_bytes())
    batch = next(four.task.train_batches(99))
    for t in (four, restarted):
        t._batches = iter([batch])
        t.run(1)
    assert all(torch.equal(four.params()[n], restarted.params()[n]) for n in four.params())


def test_state_saved_by_another_inner_optimizer_is_refused_by_name() -> None:
    adamw = _trainer("adamw")
    adamw.run(2)
    wide = _trainer("wide-adamw")
    with pytest.raises(OptimizerStateError, match="incomplete"):
        wide.load_optimizer_bytes(adamw.optimizer_bytes())  # AdamW's keys, without the noise
    wide.run(2)
    with pytest.raises(OptimizerStateError, match="another --inner-optim"):
        _trainer("adamw").load_optimizer_bytes(wide.optimizer_bytes())
