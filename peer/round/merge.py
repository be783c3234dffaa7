"""Merge accepted updates into the next version, bit-identically on every honest peer.

Every operation here is a plain elementwise multiply or add on fp32 CPU tensors, done in
a fixed order (digest order). Fused forms (``add(alpha=)``, ``addcmul``, ``lerp``) are
avoided on purpose: a compiler may turn them into FMAs on one machine and not on
another, and then two peers disagree in the last bit (x86 and ARM, AVX2 and AVX-512
must agree to the bit; the agree step would only catch it afterwards).
Scalars are made fp32 tensors first so no op silently computes in double.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from swarmtrain.peer.config import CodecConfig, OuterConfig
from swarmtrain.peer.round.validity import InvalidUpdate, open_update
from swarmtrain.protocol import state_checksum, version_id


class MergeError(ValueError):
    """Updates cannot be merged (shape or name mismatch with the model)."""


@dataclass(frozen=True)
class AcceptedUpdate:
    """One accepted contribution: its digest (sort key), sample weight and decoded tensors."""

    digest: bytes
    samples: int
    tensors: Mapping[str, Tensor]


def _f32(value: float) -> Tensor:
    return torch.tensor(value, dtype=torch.float32)


def apply_step(params: Mapping[str, Tensor], step: Mapping[str, Tensor], lr: float) -> dict[str, Tensor]:
    """``params - lr * step`` as two separate ops per tensor; names missing in ``step`` stay."""
    scale = _f32(lr)
    out: dict[str, Tensor] = {}
    for name, value in params.items():
        delta = step.get(name)
        if delta is None:
            out[name] = value.clone()
            continue
        if delta.shape != value.shape:
            raise MergeError(f"update for {name!r} has shape {tuple(delta.shape)}, "
                             f"the model has {tuple(value.shape)}")
        out[name] = value - delta * scale
    return out


def weighted_mean(updates: Sequence[AcceptedUpdate], names: Sequence[str]) -> dict[str, Tensor] | None:
    """Sample-weighted mean of the updates in digest order; None when there are none.

    ``sum_i(u_i * n_i) / sum_i(n_i)``: integer sample counts are exact in fp32 up to 2^24,
    and the division comes last so every peer rounds the same way.
    """
    if not updates:
        return None
    ordered = sorted(updates, key=lambda u: u.digest)
    total = sum(u.samples for u in ordered)
    if total <= 0:
        raise MergeError("accepted updates must claim at least one sample in total")
    out: dict[str, Tensor] = {}
    for name in names:
        acc: Tensor | None = None
        for update in ordered:
            tensor = update.tensors.get(name)
            if tensor is None:
                continue
            term = tensor.to(torch.float32) * _f32(float(update.samples))
            acc = term if acc is None else acc + term
        if acc is not None:
            out[name] = acc / _f32(float(total))
    return out


class OuterOptimizer:
    """The outer step: V(r+1) from V(r) and the merged pseudo-gradient.

    ``nesterov`` keeps a momentum buffer (shared state: part of the state checksum);
    ``sparseloco`` keeps none: its momentum is each peer's decaying error-feedback buffer.
    """

    def __init__(self, config: OuterConfig) -> None:
        self.config = config
        self._momentum: dict[str, Tensor] = {}

    def step(self, params: Mapping[str, Tensor], merged: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
        """Return new parameters; with nothing merged the version keeps its parameters."""
        if merged is None:
            return {name: value.clone() for name, value in params.items()}
        if self.config.kind == "sparseloco" or self.config.momentum == 0.0:
            # No momentum (the plain mean, or SparseLoCo's, kept in error feedback): no
            # buffer, so the state (and every state download) is the parameters alone.
            return apply_step(params, merged, self.config.lr)
        mu = _f32(self.config.momentum)
        direction: dict[str, Tensor] = {}
        for name, grad in merged.items():
            previous = self._momentum.get(name)
            momentum = grad.clone() if previous is None else previous * mu + grad
            self._momentum[name] = momentum
            direction[name] = grad + momentum * mu
        return apply_step(params, direction, self.config.lr)

    def state(self) -> dict[str, Tensor]:
        """Outer optimizer state, prefixed so it never collides with parameter names."""
        return {f"outer.momentum.{name}": t.clone() for name, t in sorted(self._momentum.items())}

    def load_state(self, state: Mapping[str, Tensor]) -> None:
        prefix = "outer.momentum."
        self._momentum = {name[len(prefix):]: t.to(torch.float32).clone()
                          for name, t in state.items() if name.startswith(prefix)}


@dataclass(frozen=True)
class NextVersion:
    """The merged version: parameters, id and checksum every honest peer agrees on."""

    params: dict[str, Tensor]
    version_id: bytes
    state_checksum: bytes
    accepted: tuple[bytes, ...]


def full_state(params: Mapping[str, Tensor], outer: OuterOptimizer) -> dict[str, Tensor]:
    """Parameters plus outer optimizer state: what the state checksum covers."""
    return {**params, **outer.state()}


def next_version(params: Mapping[str, Tensor], parent: bytes, accepted: Sequence[AcceptedUpdate],
                 outer: OuterOptimizer) -> NextVersion:
    """V(r+1) = outer step of the weighted mean of ``accepted``; id = BLAKE2b(parent, digests)."""
    merged = weighted_mean(accepted, names=list(params))
    new_params = outer.step(params, merged)
    digests = tuple(sorted(u.digest for u in accepted))
    return NextVersion(
        params=new_params,
        version_id=version_id(parent, digests),
        state_checksum=state_checksum(full_state(new_params, outer)),
        accepted=digests,
    )


def exact_norm(tensors: Mapping[str, Tensor]) -> float:
    """The L2 norm as the same float on every machine.

    Squares of fp32 values are exact in double, ``math.fsum`` rounds their sum correctly
    whatever the order, and ``sqrt`` is correctly rounded: no SIMD width or thread count
    can change the result, so every peer clips an update by the same factor.
    """
    return math.sqrt(math.fsum(x for name in sorted(tensors)
                               for x in tensors[name].to(torch.float64).square().flatten().tolist()))


def clipped(updates: Sequence[AcceptedUpdate], ratio: float) -> list[AcceptedUpdate]:
    """Each update scaled down to at most ``ratio`` x the median norm of ``updates``.

    The robust part of the aggregate: votes decide what is merged, and this bounds what
    one accepted update can do, so a huge but finite update that slipped through (a
    captured check) cannot overflow the mean. Honest updates within ``ratio`` of the
    median, what the checkers already demand, pass unchanged, bit for bit.
    """
    if not updates:
        return []
    # Opened updates are finite, and so are their norms (squares of fp32 values stay far
    # inside float64's range).
    norms = [exact_norm(u.tensors) for u in updates]
    cap = ratio * statistics.median(norms)
    out = []
    for update, norm in zip(updates, norms):
        if norm > cap:
            factor = _f32(cap / norm)
            update = AcceptedUpdate(update.digest, update.samples,
                                    {n: t.to(torch.float32) * factor for n, t in update.tensors.items()})
        out.append(update)
    return out


@dataclass(frozen=True)
class RoundMerge:
    """V(r+1), and the updates the votes accepted that the merge still refused, with why."""

    version: NextVersion
    refused: dict[bytes, str]


def merge_round(params: Mapping[str, Tensor], parent: bytes, accepted: Mapping[bytes, tuple[int, bytes]],
                outer: OuterOptimizer, *, codec: CodecConfig, clip_ratio: float) -> RoundMerge:
    """The one merge of simulator and peer: ``accepted`` maps digest -> (weight, payload).

    Refused even when the votes accepted them (only a dishonest majority of checkers can
    accept such an update, and every honest peer refuses it alike, so they still agree):
    payloads that do not open for this model (:func:`open_update`). Then the survivors are
    clipped (:func:`clipped`) and merged. A result that is not finite is never kept: the
    round then merges nothing, and the parent's parameters go on under a new id.
    """
    refused: dict[bytes, str] = {}
    updates: list[AcceptedUpdate] = []
    for digest in sorted(accepted):
        weight, payload = accepted[digest]
        try:
            updates.append(AcceptedUpdate(digest, weight, open_update(payload, params=params, codec=codec)))
        except InvalidUpdate as error:
            refused[digest] = f"refused at merge: {error}"
    saved = outer.state()
    result = next_version(params, parent, clipped(updates, clip_ratio), outer)
    if not all(bool(torch.isfinite(t).all()) for t in result.params.values()):
        outer.load_state(saved)
        refused.update({u.digest: "refused at merge: the merged state was not finite" for u in updates})
        result = next_version(params, parent, [], outer)
    return RoundMerge(result, refused)
