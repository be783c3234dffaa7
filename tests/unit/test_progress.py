"""Local progress: snapshots, the exact rebase onto a new version, the training thread."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import torch

from swarmtrain.peer.config import max_samples, preset
from swarmtrain.peer.training.contribute import Contributor
from swarmtrain.peer.training.progress import ProgressTracker, carries_progress, rebased
from swarmtrain.peer.training.tasks import Batch, load_task
from swarmtrain.peer.training.trainer import LocalTrainer, model_params
from swarmtrain.peer.training.worker import TrainingWorker, WorkerError

CONFIG = preset("smoke").replace(task="synthetic")
V0, V1 = b"\x00" * 32, b"\x01" * 32


def _tracker(seed: int = 0) -> ProgressTracker:
    task = load_task(CONFIG)
    trainer = LocalTrainer(task, CONFIG.train, stream_seed=seed)
    return ProgressTracker(trainer, model_params(task.build_model()), V0)


def _wait_for_steps(worker: TrainingWorker, steps: int, timeout: float = 30.0) -> None:
    """Poll until the training thread has taken at least ``steps`` steps in all."""
    deadline = time.monotonic() + timeout
    while worker.stats().steps < steps:
        assert time.monotonic() < deadline, f"the worker took {worker.stats().steps} of {steps} steps"
        time.sleep(0.001)


def _shifted(params: dict[str, torch.Tensor], by: float) -> dict[str, torch.Tensor]:
    return {k: v + by for k, v in params.items()}


def test_rebase_carries_exactly_the_progress_since_the_snapshot() -> None:
    tracker = _tracker()
    tracker.train(5)
    snap = tracker.snapshot()
    tracker.train(3)
    current = tracker.trainer.params()
    target = _shifted(snap.base, 0.25)
    tracker.rebase(target, V1)
    got = tracker.trainer.params()
    for name in target:
        expected = target[name] + (current[name] - snap.params[name])
        assert torch.equal(got[name], expected)
    assert tracker.base_version == V1
    # The progress is now measured from the new version, and the carried steps count in
    # the next snapshot, whose update sends them.
    again = tracker.snapshot()
    assert all(torch.equal(again.base[n], target[n]) for n in target)
    assert again.steps == 3


def test_no_progress_since_the_snapshot_means_exactly_the_new_version() -> None:
    tracker = _tracker()
    tracker.train(4)
    snap = tracker.snapshot()
    target = _shifted(snap.base, -0.5)
    tracker.rebase(target, V1)
    assert all(torch.equal(tracker.trainer.params()[n], target[n]) for n in target)
    assert all(torch.equal(rebased(target, snap.params, snap.params)[n], target[n]) for n in target)


def test_without_a_snapshot_all_progress_since_the_base_is_carried_and_carry_false_drops_it() -> None:
    tracker = _tracker()
    base = tracker.trainer.params()
    tracker.train(4)
    current = tracker.trainer.params()
    target = _shifted(base, 1.0)
    tracker.rebase(target, V1)
    assert all(torch.equal(tracker.trainer.params()[n], target[n] + (current[n] - base[n])) for n in target)
    tracker.train(2)
    tracker.rebase(base, V0, carry=False)
    assert all(torch.equal(tracker.trainer.params()[n], base[n]) for n in base)


def test_snapshot_counts_the_steps_since_the_previous_one() -> None:
    tracker = _tracker()
    tracker.train(7)
    first = tracker.snapshot()
    tracker.train(3)
    second = tracker.snapshot()
    assert (first.steps, second.steps) == (7, 3)
    assert second.samples == 3 * CONFIG.train.batch_size and tracker.total_steps == 10
    assert first.base_version == V0 and first.train_seconds > 0


def test_contribution_is_base_minus_snapshot_and_claims_at_most_the_cap() -> None:
    config = CONFIG.replace(codec=CONFIG.codec.__class__(density=1.0, bits=32))
    tracker = _tracker()
    tracker.train(max_samples(config) // config.train.batch_size + 5)  # more steps than the cap
    snap = tracker.snapshot()
    update = Contributor(config, stream_seed=0).contribute(snap, V0)
    assert update.samples == max_samples(config) and update.base_version == V0
    from swarmtrain.protocol import decode_update
    sent = decode_update(update.payload)
    assert all(torch.equal(sent[n], snap.base[n] - snap.params[n]) for n in sent)


def test_worker_trains_between_requests_and_stops() -> None:
    worker = TrainingWorker(_tracker())
    worker.start()
    try:
        _wait_for_steps(worker, 3)
        snap = worker.snapshot()
        _wait_for_steps(worker, snap.steps + 1)  # it goes on after the snapshot
        worker.rebase(snap.base, V1)
        assert worker.tracker.base_version == V1
    finally:
        worker.stop()
    steps = worker.stats().steps
    time.sleep(0.05)
    assert worker.stats().steps == steps  # stopped means stopped


def test_free_rider_worker_takes_no_steps() -> None:
    worker = TrainingWorker(_tracker(), trains=False)
    worker.start()
    time.sleep(0.05)
    assert worker.snapshot().steps == 0 and worker.stats().utilisation == 0
    worker.stop()


def test_a_failure_in_the_training_thread_reaches_the_caller() -> None:
    tracker = _tracker()

    def three_batches() -> Iterator[Batch]:
        stream = load_task(CONFIG).train_batches(0)
        for _ in range(3):
            yield next(stream)

    tracker.trainer._batches = three_batches()  # a task that wrongly ends its stream
    worker = TrainingWorker(tracker)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        with pytest.raises(WorkerError, match="ran out of batches"):
            while True:
                assert time.monotonic() < deadline
                worker.snapshot()
                time.sleep(0.001)
    finally:
        worker.stop()


def test_progress_is_carried_only_between_neighbouring_versions() -> None:
    def carry(new: str, new_parent: str | None, held: str, held_parent: str | None) -> bool:
        return carries_progress(new=new, new_parent=new_parent, held=held, held_parent=held_parent)

    assert carry("v2", "v1", "v1", "v0")        # the next version
    assert carry("v2b", "v1", "v2a", "v1")      # the majority's sibling of my own merge
    assert carry("v1", "v0", "v2a", "v1")       # back to the version I agreed on
    assert not carry("v5", "v4", "v1", "v0")    # rounds ahead: start afresh
    assert not carry("v9", None, "v1", "v0")    # a version of unknown parentage
    assert carry("v1", "g", "g", None)          # from the genesis to round 0's version


def test_worker_stops_at_the_rounds_step_cap_until_the_next_snapshot() -> None:
    worker = TrainingWorker(_tracker(), max_steps=4)
    worker.start()
    try:
        _wait_for_steps(worker, 4)
        time.sleep(0.05)
        assert worker.stats().steps == 4  # waits at the cap
        assert worker.snapshot().steps == 4
        _wait_for_steps(worker, 8)  # a snapshot opens the next round's steps
        time.sleep(0.05)
        assert worker.stats().steps == 8
    finally:
        worker.stop()
