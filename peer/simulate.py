"""K virtual peers in one process running the whole round: train, encode, check, vote, merge.

No network: payloads move as bytes in memory, but every step a real peer takes is here,
through the same code (:mod:`contribute`, :mod:`check`, :mod:`vote`, :mod:`merge`), so
the round's math can be measured and tested quickly. Peers take turns on the CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from swarmtrain.peer.assignment import assignments
from swarmtrain.peer.check import Checker, Submission
from swarmtrain.peer.config import SwarmConfig
from swarmtrain.peer.contribute import Contributor, LocalUpdate
from swarmtrain.peer.merge import AcceptedUpdate, next_version
from swarmtrain.peer.state import genesis_state
from swarmtrain.peer.tasks import Task, load_task
from swarmtrain.peer.trainer import evaluate_loss
from swarmtrain.peer.vote import Verdict, tally
from swarmtrain.protocol import decode_update

VALIDATION_SEED = 0x7E57  # the simulator's own yardstick, distinct from every voter's seed


@dataclass(frozen=True)
class PeerOutcome:
    """What happened to one virtual peer's update in one round."""

    peer: str
    digest: str
    accepted: bool
    votes_for: int
    votes_against: int
    reason: str
    payload_bytes: int


@dataclass(frozen=True)
class RoundReport:
    round: int
    version_id: str
    state_checksum: str
    validation_loss: float
    outcomes: tuple[PeerOutcome, ...]
    seconds: float
    fp32_bytes: int  # size of one dense fp32 update, for the compression ratio

    @property
    def accepted(self) -> int:
        return sum(o.accepted for o in self.outcomes)

    @property
    def rejected(self) -> int:
        return len(self.outcomes) - self.accepted

    @property
    def mean_payload_bytes(self) -> float:
        sizes = [o.payload_bytes for o in self.outcomes]
        return sum(sizes) / max(1, len(sizes))


@dataclass
class _VirtualPeer:
    name: str
    contributor: Contributor
    checker: Checker
    last: LocalUpdate | None = None
    verdicts: dict[bytes, Verdict] = field(default_factory=dict)


class Simulation:
    """A one-process swarm; ``fault`` makes the last peer misbehave in that mode."""

    def __init__(self, config: SwarmConfig, *, peers: int, fault: str | None = None,
                 validation_batches: int = 8, task: Task | None = None,
                 device: torch.device | str = "cpu") -> None:
        if peers < 1:
            raise ValueError(f"--peers must be >= 1, got {peers}")
        self.config = config
        self.task = task if task is not None else load_task(config)
        genesis = genesis_state(self.task, config)
        self.params: dict[str, Tensor] = genesis.params
        self.outer = genesis.outer
        self.version = genesis.version
        self._eval_model = self.task.build_model()
        self._validation = self.task.heldout_batches(validation_batches, VALIDATION_SEED)
        self.peers = [
            _VirtualPeer(
                name=f"peer{i}",
                contributor=Contributor(self.task, config, stream_seed=i,
                                        fault=fault if i == peers - 1 else None, device=device),
                checker=Checker(self.task, config, heldout_seed=1000 + i),
            )
            for i in range(peers)
        ]
        self.round = 0
        self._seen: set[bytes] = set()

    def validation_loss(self) -> float:
        return evaluate_loss(self.task, self._eval_model, self._validation, params=self.params)

    def run_round(self) -> RoundReport:
        started = time.monotonic()
        updates = {p.name: p.contributor.contribute(self.params, self.version) for p in self.peers}
        authors = {u.committed_digest: name for name, u in updates.items()}
        submissions = {
            u.committed_digest: Submission(name, u.committed_digest, u.base_version, u.samples, u.payload)
            for name, u in updates.items()
        }
        checkers = assignments(self.round, authors, [p.name for p in self.peers],
                               self.config.vote.checkers_per_update)
        ballots: dict[str, dict[bytes, bool]] = {}
        verdicts_by_digest: dict[bytes, list[Verdict]] = {}
        for peer in self.peers:
            mine = [submissions[d] for d, who in checkers.items() if peer.name in who]
            verdicts = peer.checker.check_round(
                self.params, self.version, mine, seen=self._seen,
                own_norms=[updates[peer.name].sent_norm], round_size=len(updates),
            )
            ballots[peer.name] = {d: v.accept for d, v in verdicts.items()}
            for d, v in verdicts.items():
                verdicts_by_digest.setdefault(d, []).append(v)
        counts = tally(ballots, checkers)
        accepted = [
            AcceptedUpdate(d, submissions[d].samples, decode_update(submissions[d].payload or b""))
            for d in sorted(counts) if counts[d].accepted
        ]
        result = next_version(self.params, self.version, accepted, self.outer)
        self._seen.update(authors)
        self.params, self.version = result.params, result.version_id
        outcomes = tuple(
            PeerOutcome(
                peer=name, digest=u.committed_digest.hex()[:12],
                accepted=counts[u.committed_digest].accepted,
                votes_for=counts[u.committed_digest].votes_for,
                votes_against=counts[u.committed_digest].votes_against,
                reason=_reason(verdicts_by_digest.get(u.committed_digest, []),
                               counts[u.committed_digest].accepted),
                payload_bytes=len(u.payload),
            )
            for name, u in updates.items()
        )
        report = RoundReport(
            round=self.round, version_id=self.version.hex(), state_checksum=result.state_checksum.hex(),
            validation_loss=self.validation_loss(), outcomes=outcomes,
            seconds=time.monotonic() - started,
            fp32_bytes=4 * sum(t.numel() for t in self.params.values()),
        )
        self.round += 1
        return report

    def run(self, rounds: int, on_round: Callable[[RoundReport], None] | None = None) -> list[RoundReport]:
        reports = []
        for _ in range(rounds):
            report = self.run_round()
            reports.append(report)
            if on_round is not None:
                on_round(report)
        return reports


def _reason(verdicts: list[Verdict], accepted: bool) -> str:
    """The most common reason among the checkers that agreed with the outcome."""
    agreeing = [v.reason for v in verdicts if v.accept == accepted]
    if not agreeing:
        return "no votes" if not verdicts else "split"
    return max(set(agreeing), key=agreeing.count)
