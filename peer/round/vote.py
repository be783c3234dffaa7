"""Judging one update, and counting the votes.

A checker accepts an update only when every check passes, cheapest first:

1. it decodes and its digest matches the commitment (done by the caller, which turns a
   mismatch or :class:`~swarmtrain.protocol.ProtocolError` into a :class:`Verdict` via
   :func:`reject`),
2. names and shapes match the model and every value is finite,
3. its norm is within ``[min_norm_ratio, max_norm_ratio]`` x the round's median norm
   (scaled updates fail the upper bound; free riders that send almost nothing fail the
   lower one),
4. the checker's held-out loss of ``V(r)`` with this update applied alone, at the weight
   the merge would give it (outer lr x its share ``1/n`` of the round's mean), is at
   most ``loss_before + tolerance``, and below the loss with the update negated (near the
   initial model almost any step helps, a sign-flipped one included). Sign flips and
   noise fail one or the other. Applying a
   compressed update at full weight instead overshoots (it is a top-k of a momentum-like
   error-feedback buffer) and rejected about half of the honest updates in the
   simulator; at its merge weight honest updates pass.

Majority rule: an update is merged when more of its assigned checkers accept than reject
(a tie goes to an author with standing; see ``decision.passes``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from torch import Tensor

from swarmtrain.peer.config import VoteConfig
from swarmtrain.peer.round.merge import apply_step
from swarmtrain.peer.round.validity import structural_problem
from swarmtrain.peer.training.norms import update_norm

Evaluator = Callable[[Mapping[str, Tensor]], float]


@dataclass(frozen=True)
class Verdict:
    """One checker's judgement of one update."""

    accept: bool
    reason: str
    loss_before: float | None = None
    loss_after: float | None = None
    norm: float | None = None

    @property
    def loss_delta(self) -> float | None:
        """``loss_after - loss_before`` (negative is good), when both were measured."""
        if self.loss_before is None or self.loss_after is None:
            return None
        return self.loss_after - self.loss_before


def reject(reason: str, *, norm: float | None = None) -> Verdict:
    return Verdict(accept=False, reason=reason, norm=norm)


def median_norm(norms: Iterable[float]) -> float | None:
    finite = [n for n in norms if math.isfinite(n)]
    return statistics.median(finite) if finite else None


# How far the round's median may pull a checker's reference norm from its own honest
# update's norm, either way. Without the anchor, identities sending many tiny (or huge)
# updates drag the median until honest updates fail "above" (or "below") the norm bounds;
# with it, an honest update within 2x of the checker's own always passes the norm check.
ANCHOR_RATIO = 2.0


def reference_norm(norms: Iterable[float], own_norms: Iterable[float]) -> float | None:
    """The norm a round's updates are compared against: the median of theirs and the
    checker's own, kept within ``ANCHOR_RATIO`` of the checker's own (when it has one)."""
    own = [n for n in own_norms if math.isfinite(n) and n > 0]
    med = median_norm([*norms, *own])
    if med is None or not own:
        return med
    anchor = statistics.median(own)
    return min(max(med, anchor / ANCHOR_RATIO), anchor * ANCHOR_RATIO)


def judge(
    update: Mapping[str, Tensor],
    *,
    params: Mapping[str, Tensor],
    loss_before: float,
    evaluate: Evaluator,
    round_median_norm: float | None,
    config: VoteConfig,
    step_scale: float,
) -> Verdict:
    """Run checks 2-4 (see module doc); ``step_scale`` = outer lr x the update's share of the merge."""
    problem = structural_problem(update, params)
    if problem is not None:
        return reject(problem)
    norm = update_norm(update)
    if round_median_norm is not None and round_median_norm > 0:
        if norm > config.max_norm_ratio * round_median_norm:
            return reject(f"norm {norm:.3g} above {config.max_norm_ratio}x median {round_median_norm:.3g}",
                          norm=norm)
        if norm < config.min_norm_ratio * round_median_norm:
            return reject(f"norm {norm:.3g} below {config.min_norm_ratio}x median {round_median_norm:.3g}",
                          norm=norm)
    if norm == 0.0:
        return reject("empty update", norm=norm)
    loss_after = evaluate(apply_step(params, update, step_scale))
    if not math.isfinite(loss_after):
        return Verdict(False, "loss not finite after update", loss_before, loss_after, norm)
    if loss_after > loss_before + config.tolerance:
        return Verdict(False, f"held-out loss rose by {loss_after - loss_before:.4f}",
                       loss_before, loss_after, norm)
    # Near the initial model almost any step lowers the loss, a sign-flipped one included;
    # an honest pseudo-gradient must also beat its own negation (point downhill).
    loss_mirror = evaluate(apply_step(params, update, -step_scale))
    if not loss_after < loss_mirror:
        return Verdict(False, f"points uphill: loss {loss_after:.4f} with it, {loss_mirror:.4f} with its negation",
                       loss_before, loss_after, norm)
    return Verdict(True, "ok", loss_before, loss_after, norm)


@dataclass(frozen=True)
class Tally:
    """Votes counted for one update from its assigned checkers."""

    votes_for: int
    votes_against: int

    @property
    def accepted(self) -> bool:
        return self.votes_for > self.votes_against


def tally(
    votes: Mapping[str, Mapping[bytes, bool]],
    checkers: Mapping[bytes, Iterable[str]],
) -> dict[bytes, Tally]:
    """Count ``votes[voter][digest]`` for each digest, only from that digest's checkers.

    Votes from peers not assigned to an update are ignored, so a peer cannot stuff the
    ballot of an update it was not drawn for.
    """
    out: dict[bytes, Tally] = {}
    for digest, assigned in checkers.items():
        yes = no = 0
        for voter in set(assigned):
            ballot = votes.get(voter, {})
            if digest in ballot:
                if ballot[digest]:
                    yes += 1
                else:
                    no += 1
        out[digest] = Tally(yes, no)
    return out


def common_rejection(
    reasons: Mapping[str, Mapping[bytes, str]],
    checkers: Mapping[bytes, Iterable[str]],
) -> dict[bytes, str]:
    """The reason most of an update's assigned checkers gave for rejecting it.

    ``reasons[voter][digest]`` holds the reasons of rejecting votes. Only assigned checkers
    count, as in :func:`tally`; ties go to the alphabetically first reason so that every
    peer records the same one. Digests nobody gave a reason for are left out.
    """
    out: dict[bytes, str] = {}
    for digest, assigned in checkers.items():
        given = [reasons[v][digest] for v in set(assigned) if reasons.get(v, {}).get(digest)]
        if given:
            out[digest] = min(set(given), key=lambda r: (-given.count(r), r))
    return out
