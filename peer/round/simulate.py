"""K virtual peers in one process running the whole round: train, encode, check, vote, merge.

No network: payloads move as bytes in memory, but every step a real peer takes is here,
through the same code (:mod:`contribute`, :mod:`check`, :mod:`vote`, :mod:`merge`), so
the round's math can be measured and tested quickly. Peers take turns on the CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from swarmtrain.peer.config import SwarmConfig, max_samples
from swarmtrain.peer.round.check import Checker, Submission, colluding_verdicts
from swarmtrain.peer.round.decision import Commitment, Vote, admit, checker_table, decide, round_weight
from swarmtrain.peer.round.copies import copycat_source
from swarmtrain.peer.round.merge import merge_round
from swarmtrain.peer.round.offences import OFFENCE_WINDOW, cooling_off
from swarmtrain.peer.round.recompute import contributions_of
from swarmtrain.peer.round.vote import Tally, Verdict
from swarmtrain.peer.store.commit import Contribution
from swarmtrain.peer.round.state import genesis_state
from swarmtrain.peer.training import faults
from swarmtrain.peer.training.contribute import Contributor
from swarmtrain.peer.training.progress import ProgressTracker
from swarmtrain.peer.training.tasks import Task, load_task
from swarmtrain.peer.training.trainer import LocalTrainer, evaluate_loss
from swarmtrain.protocol.work import IdentityWork

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
    tracker: ProgressTracker
    contributor: Contributor
    checker: Checker
    trains: bool


class Simulation:
    """A one-process swarm; ``fault`` makes the last ``faulty`` peers misbehave in that
    mode, from round ``attack_from`` on (before it they are not in the swarm at all:
    attackers who join a running swarm, after the honest peers earned standing).

    Each round every peer takes ``inner_steps`` steps. ``overlap`` is the share of them
    taken after the round's snapshot, while (on a real network) the round's checks,
    votes and merge run: those steps start from the peer's own trajectory and are
    carried onto the next version (:mod:`swarmtrain.peer.training.progress`). 0 is
    classic DiLoCo, where every step of a round starts from its version.
    """

    def __init__(self, config: SwarmConfig, *, peers: int, fault: str | None = None,
                 validation_batches: int = 8, task: Task | None = None,
                 device: torch.device | str = "cpu", overlap: float = 0.0,
                 faulty: int = 1, attack_from: int = 0, inner_optim: str = "adamw") -> None:
        if peers < 1:
            raise ValueError(f"--peers must be >= 1, got {peers}")
        if fault is not None and not 1 <= faulty < peers:
            raise ValueError(f"--faulty must be in [1, peers), got {faulty} of {peers} peers")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        self.config = config
        self.overlap = overlap
        self.task = task if task is not None else load_task(config)
        genesis = genesis_state(self.task, config)
        self.params: dict[str, Tensor] = genesis.params
        self.outer = genesis.outer
        self.version = genesis.version
        self._eval_model = self.task.build_model()
        self._validation = self.task.heldout_batches(validation_batches, VALIDATION_SEED)
        self.peers = []
        self.attack_from = attack_from
        for i in range(peers):
            mode = fault if i >= peers - faulty else None
            trainer = LocalTrainer(self.task, config.train, stream_seed=i, device=device, inner_optim=inner_optim)
            trainer.set_swarm_size(peers)  # every peer commits every round here
            self.peers.append(_VirtualPeer(
                name=f"peer{i}",
                tracker=ProgressTracker(trainer, self.params, self.version),
                contributor=Contributor(config, stream_seed=i, fault=mode),
                checker=Checker(self.task, config, heldout_seed=1000 + i),
                trains=faults.trains(mode),
            ))
        self.round = 0
        self._seen: set[bytes] = set()
        # Who has standing: the first peer founded the swarm (the genesis' creator), then
        # the authors merged into the current version (standing_of on the networked path).
        self._founder: str | None = self.peers[0].name if self.peers else None
        self._standing: frozenset[str] = frozenset() if self._founder is None else frozenset({self._founder})
        # Each peer's own history entries of the latest rounds (who is cooling off, as it sees it).
        self._entries: dict[str, list[tuple[int, tuple[Contribution, ...]]]] = {p.name: [] for p in self.peers}
        self._merged: dict[bytes, bytes] = {}  # payloads merged into the current version
        # A swarm that prices identities: each virtual peer does the work once, on the
        # genesis version (a networked swarm salts it with the genesis record's digest).
        bits = config.vote.identity_bits
        self._work = IdentityWork(self.version, bits) if bits else None
        self._nonces = {p.name: 0 if self._work is None
                        else faults.unpaid_nonce(self._work, p.name) if faults.skips_work(p.contributor.fault)
                        else self._work.solve(p.name) for p in self.peers}

    def validation_loss(self) -> float:
        return evaluate_loss(self.task, self._eval_model, self._validation, params=self.params)

    def _train(self, steps: int) -> None:
        for peer in self.peers:
            if peer.trains and steps:
                peer.tracker.train(steps)

    def run_round(self) -> RoundReport:
        started = time.monotonic()
        after = round(self.overlap * self.config.train.inner_steps)
        self._train(self.config.train.inner_steps - after)
        present = [p for p in self.peers if self.round >= self.attack_from or p.contributor.fault is None]
        for peer in present:
            if faults.copies(peer.contributor.fault):
                peer.contributor.copy_source = copycat_source(self._merged, peer.contributor.last_digest,
                                                              self.params, self.config.codec)
        updates = {p.name: p.contributor.contribute(p.tracker.snapshot(), self.version) for p in present}
        self._train(after)  # on a network: while the round is checked, voted and merged
        submissions = {
            u.committed_digest: Submission(name, u.committed_digest, u.base_version, u.samples, u.payload)
            for name, u in updates.items()
        }
        # A late committer's record arrives after the others froze the round's commit set.
        late = {p.name for p in self.peers if faults.commits_late(p.contributor.fault)}
        commitments = {name: Commitment(name, u.committed_digest, u.samples, self._nonces[name])
                       for name, u in updates.items() if name not in late}
        admitted = admit(self.round, commitments, standing=self._standing, work=self._work).admitted
        checkers = checker_table(self.round, admitted, self.config.vote.checkers_per_update, self._standing,
                                 self.version, self._founder)
        cap = max_samples(self.config)
        ballots: dict[str, dict[bytes, Vote]] = {}
        colluders = {p.name for p in self.peers if faults.colludes(p.contributor.fault)}
        own: dict[str, dict[bytes, Verdict]] = {}
        for peer in present:
            mine = [submissions[d] for d, who in checkers.items() if peer.name in who]
            if peer.name in colluders:
                fellows = {s.committed_digest: s.author in colluders for s in mine}
                ballots[peer.name] = {d: Vote(v.accept, v.reason) for d, v in colluding_verdicts(fellows).items()}
                continue
            # Repeat offenders, as this peer saw them, are rejected unread (as on a network).
            cooling = cooling_off(self._entries[peer.name])
            mine = [replace(s, payload=None, missing_reason=cooling[s.author]) if s.author in cooling else s
                    for s in mine]
            verdicts = own[peer.name] = peer.checker.check_round(
                self.params, self.version, mine, seen=self._seen,
                own=updates[peer.name], round_samples=round_weight(admitted, cap), merged_last_round=self._merged,
            )
            ballots[peer.name] = {d: Vote(v.accept, v.reason) for d, v in verdicts.items()}
        decision = decide(self.round, self.version, commitments, ballots,
                          checkers_per_update=self.config.vote.checkers_per_update,
                          max_samples=cap, standing=self._standing, work=self._work, founder=self._founder)
        merged = merge_round(self.params, self.version,
                             {d: (decision.weights[d], submissions[d].payload or b"") for d in decision.accepted},
                             self.outer, codec=self.config.codec, clip_ratio=self.config.vote.max_norm_ratio)
        result = merged.version
        self._merged = {d: submissions[d].payload or b"" for d in result.accepted}
        for name, verdicts in own.items():
            entries = self._entries[name]
            entries.append((self.round, contributions_of(decision, commitments, merged, verdicts)))
            del entries[:-OFFENCE_WINDOW]
        self._seen.update(decision.authors)
        self._standing = frozenset(decision.authors[d] for d in result.accepted)
        self.params, self.version = result.params, result.version_id
        for peer in self.peers:
            peer.tracker.rebase(self.params, self.version)
        outcomes = tuple(
            PeerOutcome(
                peer=name, digest=u.committed_digest.hex()[:12],
                accepted=u.committed_digest in result.accepted,
                votes_for=decision.counts.get(u.committed_digest, NO_VOTES).votes_for,
                votes_against=decision.counts.get(u.committed_digest, NO_VOTES).votes_against,
                reason=("committed after the commit deadline: ignored" if name in late
                        else decision.refused.get(name) or merged.refused.get(u.committed_digest)
                        or _reason(ballots, u.committed_digest, u.committed_digest in result.accepted)),
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


NO_VOTES = Tally(0, 0)


def _reason(ballots: dict[str, dict[bytes, Vote]], digest: bytes, accepted: bool) -> str:
    """The most common reason among the checkers that agreed with the outcome."""
    votes = [b[digest] for b in ballots.values() if digest in b]
    agreeing = [v.reason for v in votes if v.accept == accepted]
    if not agreeing:
        return "no votes" if not votes else "split"
    return max(sorted(set(agreeing)), key=agreeing.count)
