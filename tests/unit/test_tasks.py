"""Tasks: deterministic model init, the stdlib-lm corpus and batches, synthetic, load_task."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from swarmtrain.peer.config import ModelConfig, SwarmConfig, TrainConfig, preset
from swarmtrain.peer.training.tasks import BUILTIN_TASKS, Batch, Task, TaskError, load_task
from swarmtrain.peer.training.tasks.model import build_byte_gpt
from swarmtrain.peer.training.tasks.rng import derive_seed, make_generator, portable_normal
from swarmtrain.peer.training.tasks.stdlib_lm import (
    EXCLUDED_DIRS, StdlibLM, _windows, is_heldout, list_source_files, load_corpus, stdlib_root,
)
from swarmtrain.peer.training.tasks.synthetic import Synthetic

TINY = ModelConfig(layers=2, d_model=64, heads=4, context=64)


def _config(task: str = "stdlib-lm", batch_size: int = 4, context: int = 32, seed: int = 0) -> SwarmConfig:
    return SwarmConfig(task=task, seed=seed, model=dataclasses.replace(TINY, context=context),
                       train=TrainConfig(batch_size=batch_size))


# --- user task factories, loaded through "module:function" below ------------------------

class _TinyUserTask(Synthetic):
    name = "tiny-user"


def make_tiny_task(config: SwarmConfig) -> Task:
    return _TinyUserTask(config)


def make_not_a_task(config: SwarmConfig) -> object:
    return 42


def make_failing_task(config: SwarmConfig) -> Task:
    raise RuntimeError("dataset path /nowhere is missing")


NOT_CALLABLE = "just a string"


def _spec(function: str) -> str:
    return f"{__name__}:{function}"


# --- portable random draws ------------------------------------------------------------

def test_portable_draws_are_pinned() -> None:
    # Pinned values: if these change (torch's generator or our arithmetic changed), peers
    # on different versions would build different initial models and fail the genesis check.
    assert derive_seed("golden", 0) == 1545717053024190207
    values = portable_normal((6,), 1.0, make_generator("golden", 0)).tolist()
    assert values == [-1.0196342468261719, 1.4340150356292725, 0.49913734197616577,
                      0.7804789543151855, 0.8022134900093079, -0.39707908034324646]


def test_portable_normal_has_requested_moments() -> None:
    x = portable_normal((50_000,), 2.0, make_generator("moments", 1))
    assert x.dtype == torch.float32
    assert abs(float(x.mean())) < 0.05
    assert abs(float(x.std()) - 2.0) < 0.05


def test_derive_seed_separates_parts() -> None:
    assert derive_seed("ab", "c") != derive_seed("a", "bc")
    assert derive_seed(1) != derive_seed("1")
    assert derive_seed("train", 0, 1) != derive_seed("train", 0, 2)


# --- model --------------------------------------------------------------------------

def test_model_init_is_bit_identical_and_seed_dependent() -> None:
    rng_before = torch.get_rng_state()
    a, b = build_byte_gpt(TINY, seed=7), build_byte_gpt(TINY, seed=7)
    c = build_byte_gpt(TINY, seed=8)
    assert torch.equal(torch.get_rng_state(), rng_before), "model init must not use the global RNG"
    pa, pb, pc = dict(a.named_parameters()), dict(b.named_parameters()), dict(c.named_parameters())
    assert pa.keys() == pb.keys() == pc.keys()
    for name in pa:
        assert torch.equal(pa[name], pb[name]), name
        assert torch.isfinite(pa[name]).all(), name
    assert not torch.equal(pa["tok.weight"], pc["tok.weight"])
    assert not torch.equal(pa["blocks.1.mlp.fc.weight"], pc["blocks.1.mlp.fc.weight"])


def test_tiny_preset_param_count_and_tied_output() -> None:
    model = load_task(preset("demo")).build_model()
    names = [n for n, _ in model.named_parameters()]
    assert sum(p.numel() for p in model.parameters()) == 120_576
    assert len(names) == len(set(names))
    assert not any("head" in n for n in names), "output projection must reuse tok.weight"
    # Tied: a change of the embedding changes the logits of every position.
    x = torch.randint(0, 256, (2, 16), generator=make_generator("x", 0))
    before = model(x)
    with torch.no_grad():
        model.tok.weight[5] += 1.0
    assert not torch.equal(model(x)[..., 5], before[..., 5])
    # And trained through both uses: a byte absent from the input still gets a gradient
    # from the output projection.
    absent = next(b for b in range(256) if not (x == b).any())
    model.zero_grad()
    model(x).logsumexp(-1).sum().backward()
    assert model.tok.weight.grad[absent].abs().sum() > 0


def test_model_forward_shape_causality_and_context_limit() -> None:
    model = build_byte_gpt(TINY, seed=0)
    x = torch.randint(0, 256, (3, 20), generator=make_generator("x", 1))
    logits = model(x)
    assert logits.shape == (3, 20, 256)
    x2 = x.clone()
    x2[:, 10:] = (x2[:, 10:] + 1) % 256
    # Causal: changing later bytes leaves earlier positions' logits unchanged.
    torch.testing.assert_close(model(x2)[:, :10], logits[:, :10])
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(1, TINY.context + 1, dtype=torch.int64))


# --- stdlib-lm corpus ----------------------------------------------------------------

def test_corpus_split_is_disjoint_complete_and_about_five_percent() -> None:
    corpus = load_corpus()
    files = list_source_files(stdlib_root())
    train, held = set(corpus.train_files), set(corpus.heldout_files)
    assert not train & held
    assert train | held == set(files)
    assert list(corpus.train_files) == sorted(corpus.train_files)
    assert len(files) > 100
    assert 0.02 <= len(held) / len(files) <= 0.10
    assert all(is_heldout(f) for f in held) and not any(is_heldout(f) for f in train)
    assert {"test", "tests", "idle_test", "site-packages", "dist-packages"} <= EXCLUDED_DIRS
    for f in files:
        assert f.endswith(".py")
        assert not set(f.split("/")[:-1]) & EXCLUDED_DIRS, f
    assert corpus.train.dtype == torch.uint8 and corpus.train.numel() > 1_000_000
    assert corpus.heldout.numel() > 10_000
    assert load_corpus() is corpus and load_corpus(stdlib_root()) is corpus  # cached per process


def _fake_stdlib(root: Path) -> None:
    """Train files hold only 'T', held-out files only 'H', excluded trees only 'X'."""
    names = [f"mod{i}.py" for i in range(60)] + [f"pkg/sub{i}.py" for i in range(20)]
    assert any(is_heldout(n) for n in names) and not all(is_heldout(n) for n in names)
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((b"H" if is_heldout(name) else b"T") * 300)
    for excluded in ("site-packages/x.py", "test/test_x.py", "pkg/tests/t.py", "idlelib/idle_test/t.py"):
        path = root / excluded
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"X" * 300)
    (root / "notes.txt").write_bytes(b"X" * 300)


def test_train_and_heldout_batches_never_mix(tmp_path: Path) -> None:
    _fake_stdlib(tmp_path)
    corpus = load_corpus(tmp_path)
    assert set(corpus.train.unique().tolist()) == {ord("T")}, "excluded or held-out bytes in training data"
    assert set(corpus.heldout.unique().tolist()) == {ord("H")}
    assert len(corpus.train_files) + len(corpus.heldout_files) == 80
    task = StdlibLM(_config(), root=tmp_path)
    x, y = next(task.train_batches(0))
    assert set(torch.cat([x, y]).unique().tolist()) == {ord("T")}
    hx, hy = task.heldout_batches(2, seed=0)[0]
    assert set(torch.cat([hx, hy]).unique().tolist()) == {ord("H")}


def test_too_small_corpus_is_a_task_error(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_bytes(b"x = 1\n")
    task = StdlibLM(_config(context=64), root=tmp_path)
    with pytest.raises(TaskError, match="context"):
        next(task.train_batches(0))


def test_windows_are_shifted_by_one() -> None:
    data = torch.arange(100, dtype=torch.uint8)
    x, y = _windows(data, torch.tensor([0, 37]), 8)
    assert x.tolist()[1] == list(range(37, 45))
    assert y.tolist()[1] == list(range(38, 46))


def test_train_batches_shape_dtype_and_shift() -> None:
    task = load_task(_config(batch_size=5, context=32))
    x, y = next(task.train_batches(3))
    assert x.shape == y.shape == (5, 32)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert int(x.min()) >= 0 and int(x.max()) < 256


def _first(batches: Iterator[Batch], n: int) -> list[Batch]:
    return [next(batches) for _ in range(n)]


def test_train_streams_are_per_seed_and_reproducible() -> None:
    a, b = load_task(_config()), load_task(_config())
    s0, s0_again, s1 = _first(a.train_batches(0), 3), _first(b.train_batches(0), 3), _first(a.train_batches(1), 3)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(s0, s0_again))
    assert not torch.equal(s0[0][0], s1[0][0])
    assert not torch.equal(s0[0][0], s0[1][0]), "an endless stream must not repeat its first batch"
    other_swarm = _first(load_task(_config(seed=1)).train_batches(0), 1)
    assert not torch.equal(s0[0][0], other_swarm[0][0])


def test_heldout_batches_are_deterministic_and_seeded() -> None:
    task = load_task(_config(batch_size=3))
    a, b, c = task.heldout_batches(4, seed=9), task.heldout_batches(4, seed=9), task.heldout_batches(4, seed=10)
    assert len(a) == 4 and a[0][0].shape == (3, 32)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    assert task.heldout_batches(0, seed=9) == []


def test_stdlib_loss_starts_near_uniform() -> None:
    task = load_task(_config())
    model = task.build_model()
    with torch.no_grad():
        loss = float(task.loss(model, task.heldout_batches(1, seed=0)[0]))
    assert abs(loss - torch.log(torch.tensor(256.0)).item()) < 0.5


# --- synthetic ------------------------------------------------------------------------

def test_synthetic_streams_and_heldout_are_separate_and_deterministic() -> None:
    task = load_task(_config("synthetic"))
    assert isinstance(task, Synthetic)
    x, y = next(task.train_batches(0))
    hx, _ = task.heldout_batches(1, seed=0)[0]
    assert x.shape == (4, 16) and y.shape == (4, 4) and x.dtype == torch.float32
    assert not torch.equal(x, hx), "held-out data must come from its own seed space"
    assert torch.equal(x, next(load_task(_config("synthetic")).train_batches(0))[0])
    assert not torch.equal(x, next(task.train_batches(1))[0])
    a, b = task.build_model(), load_task(_config("synthetic")).build_model()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with torch.no_grad():
        assert float(task.loss(a, (x, y))) > 0


# --- load_task ------------------------------------------------------------------------

def test_builtin_tasks_load() -> None:
    assert set(BUILTIN_TASKS) == {"stdlib-lm", "synthetic"}
    for name in BUILTIN_TASKS:
        task = load_task(_config(name))
        assert isinstance(task, Task) and task.name == name
        assert isinstance(task.build_model(), nn.Module)


def test_unknown_task_names_the_valid_forms() -> None:
    with pytest.raises(TaskError) as err:
        load_task(_config("stdlib_lm"))
    message = str(err.value)
    assert "'stdlib_lm'" in message and "'stdlib-lm'" in message and "'synthetic'" in message
    assert "module:function" in message


@pytest.mark.parametrize(("spec", "expected"), [
    ("no_such_module_swarmtrain_xyz:make", "cannot import module 'no_such_module_swarmtrain_xyz'"),
    (_spec("no_such_factory"), "has no attribute 'no_such_factory'"),
    (_spec("NOT_CALLABLE"), "not a function"),
    (_spec("make_not_a_task"), "returned a int, not a Task"),
    (_spec("make_failing_task"), "RuntimeError: dataset path /nowhere is missing"),
    (":make", "malformed"),
    ("module:", "malformed"),
    ("a:b:c", "malformed"),
])
def test_bad_user_tasks_raise_task_error(spec: str, expected: str) -> None:
    with pytest.raises(TaskError) as err:
        load_task(_config(spec))
    assert expected in str(err.value)


def test_user_task_via_module_function() -> None:
    task = load_task(_config(_spec("make_tiny_task")))
    assert isinstance(task, _TinyUserTask) and task.name == "tiny-user"
    batch = next(task.train_batches(0))
    with torch.no_grad():
        assert float(task.loss(task.build_model(), batch)) > 0
