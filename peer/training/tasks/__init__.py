"""Tasks: what the swarm trains. ``load_task(config)`` turns ``config.task`` into a Task.

``config.task`` is a built-in name (see :data:`BUILTIN_TASKS`) or ``module:function``,
where ``function(config)`` returns a :class:`Task` (the function may be a dotted
attribute path such as ``pkg.mod:Factory.create``), or ``hf:PATH``, a Hugging Face model
directory trained on the peer's own ``data`` files (:mod:`.hf`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

from swarmtrain.peer.config import SwarmConfig

from .base import Batch, Task, TaskError
from .stdlib_lm import make_stdlib_lm
from .synthetic import make_synthetic

__all__ = ["BUILTIN_TASKS", "HF_PREFIX", "Batch", "Task", "TaskError", "load_task"]

# ``hf:PATH``: a local Hugging Face model directory (imported on use: transformers is slow to load).
HF_PREFIX = "hf:"

BUILTIN_TASKS: Mapping[str, Callable[[SwarmConfig], Task]] = MappingProxyType({
    "stdlib-lm": make_stdlib_lm,
    "synthetic": make_synthetic,
})


def _valid_forms() -> str:
    names = ", ".join(repr(n) for n in BUILTIN_TASKS)
    return (f"valid tasks: {names}, or 'module:function' where module is importable and "
            "function(config: SwarmConfig) returns a swarmtrain.peer.training.tasks.Task, "
            "or 'hf:PATH' (a local Hugging Face model directory)")


def _resolve_user_factory(spec: str) -> Callable[[SwarmConfig], object]:
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path or ":" in attr_path:
        raise TaskError(f"task {spec!r} is malformed; {_valid_forms()}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise TaskError(f"task {spec!r}: cannot import module {module_name!r} ({exc}); "
                        f"check that it is installed or on PYTHONPATH; {_valid_forms()}") from exc
    except Exception as exc:
        # Any error while the user's module runs (syntax error, failing import inside it).
        raise TaskError(f"task {spec!r}: importing module {module_name!r} failed with "
                        f"{type(exc).__name__}: {exc}") from exc
    target: object = module
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise TaskError(f"task {spec!r}: module {module_name!r} has no attribute {attr_path!r}; "
                            f"{_valid_forms()}") from exc
    if not callable(target):
        raise TaskError(f"task {spec!r}: {attr_path!r} is a {type(target).__name__}, not a function; "
                        f"{_valid_forms()}")
    return target


def load_task(config: SwarmConfig, data: Sequence[Path | str] = ()) -> Task:
    """Build the task named by ``config.task``; any failure is a :class:`TaskError`.

    ``data``: this peer's text files for an ``hf:`` task (``--data``); other tasks bring
    their own data and take none.
    """
    spec = config.task
    if spec.startswith(HF_PREFIX):
        from .hf import make_hf_task

        return make_hf_task(config, data)
    if data:
        raise TaskError(f"--data is for hf: tasks; task {spec!r} brings its own data")
    if config.train.lora_rank:
        raise TaskError(f"--lora is for hf: tasks; task {spec!r} trains all of its parameters")
    builtin = BUILTIN_TASKS.get(spec)
    if builtin is not None:
        return builtin(config)
    if ":" not in spec:
        raise TaskError(f"unknown task {spec!r}; {_valid_forms()}")
    factory = _resolve_user_factory(spec)
    try:
        task = factory(config)
    except TaskError:
        raise
    except Exception as exc:
        # Surfaced with its cause chained: the user's own bug, named, not hidden.
        raise TaskError(f"task {spec!r}: calling the factory failed with "
                        f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(task, Task):
        raise TaskError(f"task {spec!r}: the factory returned a {type(task).__name__}, not a Task; "
                        "subclass swarmtrain.peer.training.tasks.Task and return an instance")
    return task
