"""``join`` on a terminal: a compact live panel of this peer under its progress lines.

Only when stdout is a terminal. Anywhere else (logs, pipes, the demo and the tests, which
parse the lines) ``join`` prints exactly its plain lines and nothing else (:class:`JoinOutput`).

:func:`render_peer` is pure (a :class:`PeerView` in, a rich panel out); :func:`peer_view`
reads the running node's state from a refresh thread (attribute reads only, and the
training worker's counters, which it guards itself).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from rich import box
from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from swarmtrain.peer.app.status import sparkline, swarm_position

if TYPE_CHECKING:
    from swarmtrain.peer.node import Node

# Versions whose loss the panel's trend shows.
TREND_LEN = 16
REFRESH_S = 1.0


@dataclass(frozen=True)
class PeerView:
    """What the panel shows of one peer at one moment."""

    peer_id: str
    swarm: str
    round: int                  # of the version this peer holds
    phase: str                  # the swarm's phase now ...
    phase_round: int            # ... and whose it is
    phase_left_s: float
    loss: float | None          # held-out loss of the held version
    utilisation: float | None
    samples_per_s: float | None
    accepted: int               # this peer's updates accepted / rejected so far
    rejected: int
    last_update: str | None     # "accepted" or "rejected": its most recent update's fate
    loss_trend: tuple[float, ...] = ()


def render_peer(view: PeerView) -> Panel:
    """Pure: a few lines, narrow enough for an 80-column terminal."""
    grid = Table.grid(padding=(0, 2))
    for _ in range(4):
        grid.add_column(no_wrap=True)
    phase = view.phase if view.phase_round == view.round else f"round {view.phase_round} {view.phase}"
    loss = "-" if view.loss is None else f"{view.loss:.4f}"
    grid.add_row("round", f"{view.round} ({phase}, {view.phase_left_s:.0f}s left)",
                 "loss", f"{loss} {sparkline(view.loss_trend[-TREND_LEN:])}".rstrip())
    grid.add_row("busy", "-" if view.utilisation is None else f"{view.utilisation:.0%}",
                 "samples/s", "-" if view.samples_per_s is None else f"{view.samples_per_s:.1f}")
    grid.add_row("updates", f"{view.accepted} accepted, {view.rejected} rejected",
                 "last", view.last_update or "-")
    return Panel(grid, title=f"peer {view.peer_id[:12]}… in swarm {view.swarm!r}", title_align="left",
                 box=box.ROUNDED, expand=False)


class PeerWatcher:
    """Builds :class:`PeerView` s of a node, remembering what a single reading cannot say:
    which of its counters moved last, and the losses of the versions it held."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._counts = (node.engine.accepted, node.engine.rejected)
        self._last: str | None = None
        self._losses: dict[bytes, float] = {}

    def view(self, now: float) -> PeerView:
        node = self.node
        state, engine, worker = node.state, node.engine, node.worker
        accepted, rejected = engine.accepted, engine.rejected
        if (accepted, rejected) != self._counts:
            self._last = "accepted" if accepted > self._counts[0] else "rejected"
            self._counts = (accepted, rejected)
        if state.validation_loss is not None:
            self._losses[state.version] = state.validation_loss
            self._losses = dict(list(self._losses.items())[-TREND_LEN:])
        stats = None if worker is None else worker.stats()
        position = swarm_position(node.genesis.genesis_time, node.config.timing, now)
        return PeerView(
            peer_id=node.identity.peer_id, swarm=node.options.swarm, round=state.round,
            phase=position.phase, phase_round=position.phase_round,
            phase_left_s=max(0.0, position.phase_ends_at - now), loss=state.validation_loss,
            utilisation=None if stats is None else min(1.0, stats.utilisation),
            samples_per_s=None if stats is None else stats.samples_per_second,
            accepted=accepted, rejected=rejected, last_update=self._last, loss_trend=tuple(self._losses.values()))


class JoinOutput:
    """Where ``join`` prints: plain lines, and on a terminal the live panel under them."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._live: Live | None = None

    def announce(self, line: str) -> None:
        live = self._live
        if live is None:
            print(line, file=self.stream, flush=True)
        else:  # above the panel, unwrapped (an address must stay one line to copy)
            live.console.print(line, soft_wrap=True, markup=False, highlight=False, emoji=False)

    @contextlib.contextmanager
    def panel(self, node: Node) -> Iterator[None]:
        """While the body runs: on a terminal, the panel under the node's lines (stray
        stdout and stderr writes go above it too); elsewhere nothing at all."""
        if not self.stream.isatty():
            yield
            return
        watcher = PeerWatcher(node)
        stop = threading.Event()
        with Live(render_peer(watcher.view(time.time())), console=Console(file=self.stream), auto_refresh=False,
                  redirect_stdout=True, redirect_stderr=True) as live:

            def refresh() -> None:
                while not stop.wait(REFRESH_S):
                    live.update(render_peer(watcher.view(time.time())), refresh=True)

            thread = threading.Thread(target=refresh, name="swarmtrain-panel", daemon=True)
            thread.start()
            self._live = live
            try:
                yield
            finally:
                self._live = None
                stop.set()
                thread.join(timeout=5.0)
