"""Round math without network or votes: the sweep behind docs/decisions.md ("Round math").

K workers (the real LocalTrainer, codec and error feedback; no checks, every update
merged) take H inner steps a round; a share ``--overlap`` of them comes after the
round's snapshot and is carried onto the next version, as networked peers do. The outer
step is the mean of the (compressed) pseudo-gradients times ``--lr``, with optional
Nesterov momentum. Two variants that were measured and not adopted stay selectable:
``--adapt`` (per-coordinate outer scaling by how much the workers disagree) and
``--eager`` (a worker moves to its own estimate of the next version at the snapshot).
``--wide-v K`` runs the workers on ``--inner-optim wide-adamw`` with swarm size K.

Loss is held-out loss on 64 batches (seed 987654321) that no peer votes with. Prints
one JSON line per run; ``--lone`` prints one peer's loss at the given step counts.

    python benchmarks/roundmath.py --workers 4 --H 30 --lr 1.0
    python benchmarks/roundmath.py --H 5 --lr 2.0 --density 0.015 --bits 2
    python benchmarks/roundmath.py --lone --checkpoints 300,600,900,1800,3600
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import torch

from swarmtrain.peer.config import SwarmConfig, preset
from swarmtrain.peer.training.tasks import load_task
from swarmtrain.peer.training.trainer import LocalTrainer, evaluate_loss, model_params
from swarmtrain.protocol import encode_update_and_reconstruct

EVAL_SEED = 987654321
Params = dict[str, torch.Tensor]


def _config(batch: int, lr: float) -> SwarmConfig:
    base = preset("demo")
    return base.replace(train=dataclasses.replace(base.train, batch_size=batch, lr=lr))


def _evaluator(config: SwarmConfig):  # type: ignore[no-untyped-def]
    task = load_task(config)
    model = task.build_model()
    batches = task.heldout_batches(64, EVAL_SEED)
    return lambda params: evaluate_loss(task, model, batches, params=params)


def lone(checkpoints: list[int], batch: int, inner_lr: float) -> dict[int, float]:
    config = _config(batch, inner_lr)
    evaluate = _evaluator(config)
    trainer = LocalTrainer(load_task(config), config.train, stream_seed=0)
    out, done = {}, 0
    for steps in checkpoints:
        trainer.run(steps - done)
        done = steps
        out[steps] = round(evaluate(trainer.params()), 4)
    return out


def _compress(delta: Params, residual: Params, a: argparse.Namespace) -> Params:
    """Error feedback (decaying by ``ef_decay``) and top-k quantization, in place on ``residual``."""
    for name in delta:
        previous = residual.get(name)
        delta[name] = delta[name] if previous is None else previous * a.ef_decay + delta[name]
    _, sent = encode_update_and_reconstruct(delta, density=a.density, bits=a.bits, chunk=4096)
    for name in delta:
        residual[name] = delta[name] - sent[name]
    return sent


def _adapted(mean: torch.Tensor, updates: list[torch.Tensor], k: int) -> torch.Tensor:
    """Scale each coordinate by how much the workers disagree there, in [1, sqrt(k)]:
    where they agree the mean is kept, where noise dominates it grows as a k-times
    larger batch's Adam step would."""
    var = sum((u - mean) ** 2 for u in updates) / k
    m2 = mean ** 2
    return mean * ((m2 + var) / (m2 + var / k + 1e-30)).sqrt().clamp(1.0, k ** 0.5)


def swarm(a: argparse.Namespace) -> list[float]:
    config = _config(16, a.inner_lr)
    evaluate = _evaluator(config)
    inner_optim = "wide-adamw" if a.wide_v else "adamw"
    trainers = [LocalTrainer(load_task(config), config.train, stream_seed=i, inner_optim=inner_optim)
                for i in range(a.workers)]
    for trainer in trainers:
        trainer.set_swarm_size(a.wide_v)
    version = model_params(trainers[0].model)
    for trainer in trainers:
        trainer.load_params(version)
    residuals: list[Params] = [{} for _ in trainers]
    momentum: Params = {}
    rounds = a.steps // a.H
    after = round(a.overlap * a.H)
    curve = []
    for r in range(rounds):
        anchors, sent = [], []
        for trainer, residual in zip(trainers, residuals):
            trainer.run(a.H - after)
            snap = trainer.params()
            delta = {k: version[k] - snap[k] for k in version}
            update = _compress(delta, residual, a) if a.density < 1 else delta
            sent.append(update)
            if a.eager:
                snap = {k: version[k] - a.lr * update[k] for k in version}
                trainer.load_params(snap)
            anchors.append(snap)
        for trainer in trainers:
            if after:
                trainer.run(after)
        step = {k: sum(u[k] for u in sent) / len(sent) for k in version}
        if a.adapt:
            step = {k: _adapted(step[k], [u[k] for u in sent], len(sent)) for k in step}
        if a.momentum > 0:
            for k in step:
                buf = step[k].clone() if k not in momentum else momentum[k] * a.momentum + step[k]
                momentum[k] = buf
                step[k] = step[k] + buf * a.momentum
        version = {k: version[k] - a.lr * step[k] for k in version}
        for trainer, anchor in zip(trainers, anchors):
            current = trainer.params()
            trainer.load_params({k: version[k] + (current[k] - anchor[k]) for k in version})
        if (r + 1) % max(1, rounds // 6) == 0 or r == rounds - 1:
            curve.append(round(evaluate(version), 4))
            print(json.dumps({"round": r + 1, "loss": curve[-1]}), file=sys.stderr, flush=True)
    return curve


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lone", action="store_true", help="one peer alone instead of a swarm")
    p.add_argument("--checkpoints", default="300,600,900", help="--lone: step counts to measure at")
    p.add_argument("--batch", type=int, default=16, help="--lone: batch size (16 x K: data-parallel)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--H", type=int, default=30, help="inner steps per round")
    p.add_argument("--steps", type=int, default=900, help="inner steps per worker")
    p.add_argument("--overlap", type=float, default=0.0)
    p.add_argument("--lr", type=float, default=1.0, help="outer learning rate")
    p.add_argument("--momentum", type=float, default=0.0, help="outer Nesterov momentum")
    p.add_argument("--density", type=float, default=1.0, help="< 1: top-k per 4096 chunk with error feedback")
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--ef-decay", type=float, default=0.95)
    p.add_argument("--inner-lr", type=float, default=3e-3)
    p.add_argument("--adapt", action="store_true")
    p.add_argument("--eager", action="store_true")
    p.add_argument("--wide-v", type=int, default=0,
                   help="inner optimizer wide-adamw with this swarm size (0: adamw)")
    a = p.parse_args()
    torch.set_num_threads(1)
    started = time.monotonic()
    if a.lone:
        out: dict[str, object] = {"lone": lone([int(s) for s in a.checkpoints.split(",")], a.batch, a.inner_lr)}
    else:
        curve = swarm(a)
        out = {"final_loss": curve[-1], "curve": curve}
    print(json.dumps({"command": " ".join(["python", *sys.argv]), **{k: v for k, v in vars(a).items()},
                      **out, "seconds": round(time.monotonic() - started)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
