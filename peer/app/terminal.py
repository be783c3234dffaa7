"""Terminal output of ``swarmtrain simulate``: pure render functions plus thin printers.

``render_*`` return rich renderables built only from their arguments, so tests can print
them on a fixed-width console and compare text.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from swarmtrain.peer.config import SwarmConfig
from swarmtrain.peer.round.offences import PeerRecord
from swarmtrain.peer.round.simulate import RoundReport
from swarmtrain.peer.store.versions import VersionCommit

_console = Console(highlight=False)


def simulation_header(config: SwarmConfig, peers: int, fault: str | None, initial_loss: float) -> str:
    codec = config.codec
    sending = "dense fp32" if not codec.compressed else f"top {codec.density:.1%} per {codec.chunk}, {codec.bits}-bit"
    lines = [
        f"swarmtrain simulate: {peers} virtual peers, task {config.task}, "
        f"{config.train.inner_steps} inner steps x batch {config.train.batch_size} per round",
        f"updates: {sending}; outer step: {config.outer.kind} (lr {config.outer.lr})",
        f"faulty peer: peer{peers - 1} ({fault})" if fault else "all peers honest",
        f"round -: validation loss {initial_loss:.4f} (initial model)",
    ]
    return "\n".join(lines)


def render_round(report: RoundReport) -> Text:
    """One line per round: loss, bytes, outcome per peer (rejections with their reason)."""
    ratio = report.fp32_bytes / max(1.0, report.mean_payload_bytes)
    text = Text(
        f"round {report.round}: validation loss {report.validation_loss:.4f}  "
        f"sent {report.mean_payload_bytes / 1024:.1f} KiB/peer ({ratio:.0f}x < fp32)  "
        f"accepted {report.accepted}/{len(report.outcomes)}  "
        f"version {report.version_id[:10]}  {report.seconds:.1f}s"
    )
    for outcome in report.outcomes:
        if not outcome.accepted:
            text.append(f"\n    rejected {outcome.peer} {outcome.digest}: {outcome.reason} "
                        f"({outcome.votes_for} for, {outcome.votes_against} against)", style="red")
    return text


def render_summary(reports: Sequence[RoundReport], fault_peer: str | None) -> Table:
    table = Table(title="simulation summary")
    table.add_column("peer")
    table.add_column("accepted", justify="right")
    table.add_column("rejected", justify="right")
    peers = sorted({o.peer for r in reports for o in r.outcomes})
    for peer in peers:
        outcomes = [o for r in reports for o in r.outcomes if o.peer == peer]
        label = f"{peer} (faulty)" if peer == fault_peer else peer
        table.add_row(label, str(sum(o.accepted for o in outcomes)), str(sum(not o.accepted for o in outcomes)))
    if reports:
        table.caption = (f"validation loss {reports[0].validation_loss:.4f} -> {reports[-1].validation_loss:.4f} "
                         f"nats/byte over {len(reports)} rounds")
    return table


def print_round(report: RoundReport) -> None:
    _console.print(render_round(report))


def print_summary(reports: Sequence[RoundReport], fault_peer: str | None) -> None:
    _console.print(render_summary(reports, fault_peer))


def render_peers(records: Mapping[str, PeerRecord], cooling: Mapping[str, str], rounds: int) -> Table:
    """``swarmtrain log --peers``: each author's record over the versions read."""
    table = Table(title=f"{len(records)} peer(s) over the last {rounds} version(s)")
    for column in ("peer", "accepted", "rejected", "offences (seen here)", "latest offence", "now"):
        table.add_column(column)
    for peer, record in sorted(records.items(), key=lambda item: (-item[1].accepted, item[0])):
        table.add_row(peer, str(record.accepted), str(record.rejected), str(len(record.offences)),
                      record.last_offence or "-", "cooling off" if peer in cooling else "-")
    return table


def render_history(commits: Sequence[VersionCommit]) -> Table:
    """``swarmtrain log``: one row per version, newest first."""
    table = Table(title=f"{len(commits)} version(s)")
    for column in ("version", "parent", "round", "accepted", "rejected", "val loss", "created"):
        table.add_column(column)
    for commit in reversed(commits):
        rejected = ", ".join(f"{c.peer_id[:8]}… ({c.reason})" for c in commit.rejected) or "-"
        table.add_row(
            commit.version_id[:12], (commit.parent_id or "genesis")[:12], str(commit.round),
            str(len(commit.accepted)), rejected,
            "-" if commit.validation_loss is None else f"{commit.validation_loss:.4f}",
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(commit.created)),
        )
    return table
