"""The ``swarmtrain`` command line.

Every subcommand turns bad input into one line on stderr and exit code 2 (usage) or 1
(runtime failure) — never a traceback for a user mistake.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from swarmtrain.peer.app import configfile
from swarmtrain.peer.store.payloads import HISTORY_ROUNDS
from swarmtrain.peer.config import AVERAGE, DENSE, PRESETS, ConfigError, OuterConfig, SwarmConfig, preset
from swarmtrain.peer.training.faults import FAULT_MODES, FaultError
from swarmtrain.peer.training.trainer import INNER_OPTIMIZERS
from swarmtrain.peer.training.tasks.base import TaskError

def _runtime_errors() -> tuple[type[BaseException], ...]:
    """Failures that are the world's, not a bug: one line for the user, exit code 1."""
    from swarmtrain.dht import BootstrapError, DHTTimeoutError, IdentityError
    from swarmtrain.peer.node import JoinError
    from swarmtrain.peer.store.versions import StoreError
    from swarmtrain.peer.training.trainer import DeviceError
    from swarmtrain.peer.training.worker import WorkerError
    from swarmtrain.peer.app.export import ExportError
    from swarmtrain.peer.metrics import MetricsPortError
    return (BootstrapError, DHTTimeoutError, IdentityError, JoinError, StoreError, DeviceError, WorkerError,
            ExportError, MetricsPortError)


if TYPE_CHECKING:
    from swarmtrain.dht.nat import NatOptions
    from swarmtrain.peer.metrics import Metrics
    from swarmtrain.peer.round.simulate import RoundReport
    from swarmtrain.peer.store.versions import VersionStore


class UsageError(ValueError):
    """A flag value that cannot work; printed as one line, exit code 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _add_swarm_options(parser: argparse.ArgumentParser) -> None:
    """Flags that shape the swarm's shared config (task, preset, codec)."""
    parser.add_argument("--task", default=None,
                        help="built-in task (stdlib-lm, synthetic) or module:function (default: stdlib-lm)")
    parser.add_argument("--preset", choices=PRESETS, default=None,
                        help="smoke: tiny and fast, for checks; demo: a few minutes; small: a bigger model")
    parser.add_argument("--density", type=float, default=None, help="top-k density per chunk, (0, 1]")
    parser.add_argument("--bits", type=int, default=None, help="value bits: 2, 4, 8 or 32")
    parser.add_argument("--inner-steps", type=_positive_int, default=None, help="the most local AdamW steps per round (H)")
    parser.add_argument("--uncompressed", action="store_true",
                        help="send dense fp32 updates merged by their plain mean (the presets' default)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the initial model and data")
    parser.add_argument("--lora", type=_positive_int, default=None, metavar="RANK",
                        help="hf: tasks: freeze the base model, train and merge only LoRA adapters of this rank")
    parser.add_argument("--identity-bits", type=int, default=None, metavar="N",
                        help="price an identity at about 2^N hashes: commitments are admitted only with a proof "
                             "of work on the author's id over the genesis digest (0: free identities, the default)")


def _add_data_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", nargs="+", default=None, metavar="PATH",
                        help="hf: tasks: this peer's text files, directories of them, or JSONL with a \"text\" field")


def _add_fetch_base_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fetch-base", action="store_true",
                        help="hf: tasks: when the model directory has no weights, download the swarm's base "
                             "weights from its peers (verified against the genesis; kept in DATA_DIR/base-model)")


def _data_paths(args: argparse.Namespace, task: str) -> tuple[Path, ...]:
    """``--data`` checked against the task: an hf: task needs it, the others bring their own."""
    from swarmtrain.peer.training.tasks import HF_PREFIX

    data = tuple(Path(p) for p in args.data or ())
    if task.startswith(HF_PREFIX) and not data:
        raise UsageError(f"task {task!r} trains on local text: add --data PATH [PATH ...]")
    if data and not task.startswith(HF_PREFIX):
        raise UsageError("--data is for Hugging Face models: name the model directory too, --task hf:PATH")
    from swarmtrain.peer.training.tasks.textdata import collect_text_files

    collect_text_files(data)  # a missing path fails now, before a DHT node starts
    return data


def swarm_config_from_args(args: argparse.Namespace, default_preset: str) -> SwarmConfig:
    """Build the shared config: preset, then flag overrides; raises ConfigError on bad values."""
    config = preset(args.preset or default_preset)
    if args.task:
        config = config.replace(task=args.task)
    if args.seed is not None:
        config = config.replace(seed=args.seed)
    if args.lora is not None:
        config = config.replace(train=dataclasses.replace(config.train, lora_rank=args.lora))
    if args.inner_steps is not None:
        config = config.replace(train=dataclasses.replace(config.train, inner_steps=args.inner_steps))
    if args.identity_bits is not None:
        config = config.replace(vote=dataclasses.replace(config.vote, identity_bits=args.identity_bits))
    if args.uncompressed:
        config = config.replace(codec=dataclasses.replace(DENSE, chunk=config.codec.chunk), outer=AVERAGE)
    if args.density is not None or args.bits is not None:
        config = config.replace(codec=dataclasses.replace(
            config.codec,
            density=config.codec.density if args.density is None else args.density,
            bits=config.codec.bits if args.bits is None else args.bits,
        ))
        if config.codec.compressed and config.outer == AVERAGE:
            # A compressing codec needs error feedback, and the SparseLoCo step that
            # uses it as momentum (a plain mean of top-k updates drops what they leave).
            config = config.replace(outer=OuterConfig())
    return config


def cmd_simulate(args: argparse.Namespace) -> int:
    import torch

    from swarmtrain.peer.round.simulate import Simulation
    from swarmtrain.peer.app.terminal import print_round, print_summary, simulation_header
    from swarmtrain.peer.training.tasks import load_task
    from swarmtrain.peer.training.trainer import resolve_device

    torch.set_num_threads(args.threads)
    config = swarm_config_from_args(args, default_preset="demo")
    task = load_task(config, data=_data_paths(args, config.task))
    if args.fault is not None and not 1 <= args.faulty < args.peers:
        raise UsageError(f"--faulty {args.faulty} needs at least one honest peer: use --faulty 1..{args.peers - 1}")
    sim = Simulation(config, peers=args.peers, fault=args.fault, device=resolve_device(args.device), task=task,
                     overlap=args.overlap, faulty=args.faulty, attack_from=args.attack_from,
                     inner_optim=args.inner_optim)
    if args.json:
        reports = sim.run(args.rounds, on_round=lambda r: print(json.dumps(_report_dict(r)), flush=True))
        return 0 if reports else 1
    print(simulation_header(config, args.peers, args.fault, sim.validation_loss()))
    reports = sim.run(args.rounds, on_round=print_round)
    print_summary(reports, fault_peer=sim.peers[-1].name if args.fault else None)
    return 0


def _report_dict(report: "RoundReport") -> dict[str, object]:
    data: dict[str, object] = dataclasses.asdict(report)
    data["accepted"], data["rejected"] = report.accepted, report.rejected
    return data


_SWARM_FLAGS = ("task", "preset", "density", "bits", "inner_steps", "seed", "lora", "identity_bits")


def _add_inner_optim_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--inner-optim", choices=INNER_OPTIMIZERS, default="adamw",
                        help="the local inner optimizer, a per-peer choice (the swarm's updates and merges are "
                             "the same): adamw (fp32 moments); adamw8bit (bitsandbytes' 8-bit AdamW: about a "
                             "quarter of the optimizer memory, so a bigger model fits); wide-adamw (AdamW whose "
                             "second moment estimates that of the last round's committers' whole batch: more "
                             "progress per step in a swarm, at two half-batch backward passes a step)")


def _add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", metavar="DEV",
                        help="where local training runs: auto (a CUDA GPU if torch sees one), cpu, cuda, cuda:N; "
                             "merges and votes always run on the CPU")


def _add_nat_options(parser: argparse.ArgumentParser, *, with_announce: bool = True) -> None:
    """Relaying, hole punching and announced addresses (README "Peers behind NAT").

    A subcommand that defines its own ``--announce`` (dest ``announce``) passes
    ``with_announce=False``; :func:`_nat_options` reads it all the same.
    """
    nat = parser.add_argument_group("peers behind NAT")
    nat.add_argument("--relay", action="store_true",
                     help="this peer has a public address: relay for NATed peers from the start")
    nat.add_argument("--auto-relay", action="store_true",
                     help="this peer is behind NAT: reserve a slot on a relay and announce the relayed address")
    nat.add_argument("--relay-via", nargs="+", default=None, metavar="MADDR",
                     help="with --auto-relay: the relays to use (default: the initial peers)")
    nat.add_argument("--no-relay", action="store_true",
                     help="neither relay for others nor dial through relays (NATed peers become unreachable)")
    nat.add_argument("--no-hole-punching", action="store_true",
                     help="no AutoNAT and no hole punching: relayed connections stay relayed")
    nat.add_argument("--reachability", choices=("auto", "public", "private"), default=None,
                     help="skip AutoNAT's guess (default: private with --auto-relay, public with --relay, else auto)")
    nat.add_argument("--client-mode", action="store_true",
                     help="the DHT node asks but never answers: for a peer nobody can dial and no relay serves")
    if with_announce:
        nat.add_argument("--announce", nargs="+", default=None, metavar="MADDR",
                         help="addresses others should dial (a public IP, a forwarded port), like /ip4/1.2.3.4/tcp/31337")


def _nat_options(args: argparse.Namespace) -> "NatOptions":
    from swarmtrain.dht.nat import NatOptions, NatOptionsError

    try:
        return NatOptions(
            relay=not args.no_relay, auto_relay=args.auto_relay, relay_service=args.relay,
            relays=tuple(args.relay_via or ()), reachability=args.reachability,
            hole_punching=not args.no_hole_punching, announce=tuple(getattr(args, "announce", None) or ()),
            client_mode=args.client_mode)
    except NatOptionsError as error:
        raise UsageError(str(error)) from error


def _add_metrics_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                        help="serve Prometheus metrics on http://HOST:PORT/metrics (HOST: --host; 0: any free port)")


MetricsT = TypeVar("MetricsT", bound="Metrics")


def _start_metrics(args: argparse.Namespace, metrics: MetricsT) -> MetricsT:
    """``metrics``, served when --metrics-port is given (before any DHT starts, so a taken
    port fails in a moment, with nothing joined)."""
    if args.metrics_port is not None:
        metrics.serve(args.metrics_port, host=args.host)
        print(f"metrics on http://{args.host}:{metrics.port}/metrics", flush=True)
    return metrics


def _add_allow_peers_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-peers", default=None, metavar="FILE",
                        help="a private swarm: FILE lists its members' peer ids, one a line (`swarmtrain id` "
                             "prints yours); records of anyone else are refused and nobody else is served blobs")


def _allowed_peers(args: argparse.Namespace) -> frozenset[str] | None:
    from swarmtrain.dht import AllowListError, load_allowed_peers

    if args.allow_peers is None:
        return None
    try:
        return load_allowed_peers(Path(args.allow_peers))
    except AllowListError as error:
        raise UsageError(str(error)) from error


def _digest(text: str) -> str:
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise argparse.ArgumentTypeError(f"a genesis digest is 64 lowercase hex characters, got {text!r}")
    return text


def _pinned_version(text: str) -> str:
    """The pin as text (a config file writes it back as it was given), checked here."""
    from swarmtrain.peer.round.pin import PinnedVersion

    try:
        return str(PinnedVersion.parse(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _insisted_config(args: argparse.Namespace) -> SwarmConfig | None:
    """The settings a joining peer asked for explicitly (None: adopt the swarm's genesis)."""
    explicit = args.uncompressed or any(getattr(args, name) is not None for name in _SWARM_FLAGS)
    return swarm_config_from_args(args, default_preset="demo") if explicit else None


def _sigterm_handler(main_pid: int) -> Callable[[int, object], None]:
    """SIGTERM ends the peer like Ctrl-C (leave the DHT, stop serving, release the data dir).

    hivemind's DHT child is forked and inherits the handler; there SIGTERM keeps its
    default meaning (end the process) instead of raising inside the child's event loop.
    """
    import signal

    def handle(signum: int, _frame: object) -> None:
        if os.getpid() != main_pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt

    return handle


def cmd_join(args: argparse.Namespace) -> int:
    import signal

    import torch

    from swarmtrain.peer.metrics import PeerMetrics
    from swarmtrain.peer.app.panel import JoinOutput
    from swarmtrain.peer.node import Node, NodeOptions
    from swarmtrain.peer.round.pin import PinnedVersion
    from swarmtrain.peer.training.trainer import resolve_device

    resolve_device(args.device)  # a wrong --device fails here, before a DHT node starts
    data = _data_paths(args, args.task or "")
    if args.fetch_base and not (args.task or "").startswith("hf:"):
        raise UsageError("--fetch-base is for Hugging Face models: name this machine's model directory, "
                         "--task hf:PATH")
    torch.set_num_threads(args.threads)
    signal.signal(signal.SIGTERM, _sigterm_handler(os.getpid()))
    insisted = _insisted_config(args)
    output = JoinOutput(sys.stdout)
    options = NodeOptions(
        swarm=args.swarm, data_dir=Path(args.data_dir or f"swarm-data/{args.swarm}"),
        initial_peers=tuple(args.initial_peers or ()), host=args.host, port=args.port,
        rounds=args.rounds, fault=args.fault, config=insisted,
        new_swarm_config=insisted or swarm_config_from_args(args, default_preset="demo"),
        start_delay=args.start_delay,
        address_file=Path(args.address_file) if args.address_file else None,
        device=args.device, inner_optim=args.inner_optim, genesis_digest=args.genesis, trust_states=args.trust_state,
        trust_version=PinnedVersion.parse(args.trust_version) if args.trust_version else None,
        keep_payload_rounds=args.keep_payloads, fetch_base=args.fetch_base,
        nat=_nat_options(args), data=data, allowed_peers=_allowed_peers(args),
        announce=output.announce, metrics=_start_metrics(args, PeerMetrics()),
    )
    try:
        node = Node(options)
        try:
            with output.panel(node):  # a terminal only: pipes get the plain lines alone
                node.run()
        finally:
            node.close()
    finally:
        options.metrics.close()
    return 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    import signal

    from swarmtrain.peer.app.bootstrap import BootstrapOptions, run_bootstrap
    from swarmtrain.peer.metrics import BootstrapMetrics

    signal.signal(signal.SIGTERM, _sigterm_handler(os.getpid()))
    options = BootstrapOptions(
        swarm=args.swarm, data_dir=Path(args.data_dir or f"swarm-data/{args.swarm}-bootstrap"),
        initial_peers=tuple(args.initial_peers or ()), host=args.host, port=args.port, nat=_nat_options(args),
        address_file=Path(args.address_file) if args.address_file else None,
        allowed_peers=_allowed_peers(args),
        say=lambda line: print(line, flush=True), metrics=_start_metrics(args, BootstrapMetrics()),
    )
    try:
        return run_bootstrap(options)
    finally:
        options.metrics.close()


def cmd_id(args: argparse.Namespace) -> int:
    from swarmtrain.dht import load_or_create_identity

    # The same identity file `join` uses: created here when the data dir has none, so a
    # private swarm's members can collect their ids before anyone joins.
    identity = load_or_create_identity(Path(args.data_dir or f"swarm-data/{args.swarm}").expanduser())
    print(identity.peer_id)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from swarmtrain.peer.app.demo import run_demo

    return run_demo(peers=args.peers, rounds=args.rounds, preset=args.preset or "demo",
                    root=Path(args.data_dir), fault=args.fault)


def cmd_status(args: argparse.Namespace) -> int:
    import time

    from rich.console import Console
    from rich.live import Live

    from swarmtrain.peer.app.status import RECENT_ROUNDS, SwarmObserver, render, render_watch

    observer = SwarmObserver(args.swarm, args.initial_peers)
    try:
        if args.json:
            print(json.dumps(observer.snapshot(RECENT_ROUNDS).to_dict(), indent=2))
            return 0
        console = Console()
        if not args.watch:
            console.print(render(observer.snapshot()))
            return 0
        with Live(render_watch(observer.snapshot(RECENT_ROUNDS)), console=console, refresh_per_second=1) as live:
            while True:
                time.sleep(2.0)
                live.update(render_watch(observer.snapshot(RECENT_ROUNDS)))
    finally:
        observer.close()


def _open_store(data_dir: str) -> "VersionStore":
    from swarmtrain.peer.store.versions import VersionStore

    path = Path(data_dir) / "versions"
    if not path.is_dir():
        raise UsageError(f"{data_dir} holds no versions (no {path}); pass the --data-dir a peer ran with")
    return VersionStore(path, read_only=True)


def cmd_log(args: argparse.Namespace) -> int:
    from rich.console import Console

    from swarmtrain.peer.app.terminal import render_history

    store = _open_store(args.data_dir)
    try:
        if args.peers:
            return _print_peers(store, json_out=args.json)
        if args.pin:
            return _print_pin(store)
        history = store.history()
    finally:
        store.close()
    if args.json:
        print(json.dumps([c.to_dict() for c in history], indent=2))
    else:
        Console().print(render_history(history))
    return 0


def _print_pin(store: "VersionStore") -> int:
    """The head version as another peer pins it (``join --trust-version``)."""
    head = store.head()
    if head is None:
        raise UsageError(f"{store.data_dir} holds no versions yet")
    print(f"{head.version_id}:{head.state_checksum}")
    return 0


def _print_peers(store: "VersionStore", *, json_out: bool) -> int:
    """Each author's record over the head version's lineage (the window of offences)."""
    from rich.console import Console

    from swarmtrain.peer.app.terminal import render_peers
    from swarmtrain.peer.round.offences import OFFENCE_WINDOW, cooling_off, peer_records

    head = store.head()
    if head is None:
        raise UsageError(f"{store.data_dir} holds no versions yet")
    lineage = store.lineage(head.version_id)
    entries = [(c.round, c.contributions) for c in lineage]
    records = peer_records(entries)
    cooling = cooling_off(entries[:OFFENCE_WINDOW])
    if json_out:
        print(json.dumps({peer: {**r.to_dict(), "cooling_off": peer in cooling} for peer, r in records.items()},
                         indent=2))
    else:
        Console().print(render_peers(records, cooling, len(lineage)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from swarmtrain.peer.app.export import export_version

    store = _open_store(args.data_dir)
    try:
        exported = export_version(store, Path(args.data_dir), args.version, Path(args.out), fmt=args.format,
                                  model_dir=Path(args.model) if args.model else None)
    finally:
        store.close()
    print(f"wrote {exported.path}")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("swarmtrain")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swarmtrain",
        description="Train one model together over a peer-to-peer swarm.",
    )
    parser.add_argument("--version", action="version", version=f"swarmtrain {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sim = sub.add_parser("simulate", help="K virtual peers in one process run whole rounds (no network)")
    sim.add_argument("--peers", type=_positive_int, default=4)
    sim.add_argument("--rounds", type=_positive_int, default=8)
    sim.add_argument("--fault", choices=list(FAULT_MODES), default=None,
                     help="make the last peer misbehave: " + "; ".join(f"{k}: {v}" for k, v in FAULT_MODES.items()))
    sim.add_argument("--faulty", type=_positive_int, default=1, metavar="N",
                     help="with --fault: how many peers (the last N) misbehave (default 1)")
    sim.add_argument("--attack-from", type=int, default=0, metavar="ROUND",
                     help="with --fault: the faulty peers join at this round (default 0: from the start)")
    sim.add_argument("--threads", type=_positive_int, default=1, help="torch threads (default 1)")
    sim.add_argument("--overlap", type=_share, default=0.0, metavar="F",
                     help="share of each round's steps taken while the round is exchanged, carried onto "
                          "the next version, as networked peers do (default 0: classic DiLoCo)")
    _add_device_option(sim)
    _add_inner_optim_option(sim)
    sim.add_argument("--json", action="store_true", help="one JSON object per round instead of the table")
    _add_swarm_options(sim)
    _add_data_option(sim)
    sim.set_defaults(func=cmd_simulate)

    join = sub.add_parser("join", help="run a peer: start a swarm, or join one with --initial-peers")
    join.add_argument("--swarm", default="demo", help="swarm name (default: demo)")
    join.add_argument("--initial-peers", nargs="+", metavar="MADDR",
                      help="multiaddrs of peers already in the swarm (none: start a new swarm)")
    join.add_argument("--data-dir", default=None, help="identity, versions and checkpoints (default: swarm-data/SWARM)")
    join.add_argument("--rounds", type=_positive_int, default=None, help="leave after this many rounds")
    join.add_argument("--fault", choices=list(FAULT_MODES), default=None,
                      help="misbehave on purpose so the swarm rejects this peer's updates")
    join.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all interfaces)")
    join.add_argument("--port", type=int, default=0, help="TCP port to listen on (0: any free port)")
    join.add_argument("--address-file", default=None, metavar="PATH",
                      help="write the addresses others join with to PATH, one per line, once ready")
    join.add_argument("--start-delay", type=float, default=0.0,
                      help="when starting a swarm: round 0 begins this many seconds from now")
    join.add_argument("--threads", type=_positive_int, default=1, help="torch threads (default 1)")
    join.add_argument("--genesis", type=_digest, default=None, metavar="DIGEST",
                      help="join only the genesis with this digest (printed by every peer as 'genesis ...')")
    join.add_argument("--trust-state", action="store_true",
                      help="when the rounds this peer missed cannot be replayed (their records or payloads are "
                           "gone), download the newest version from the peers that publish it and take it on "
                           "their word (by default a peer adopts only versions it recomputed itself)")
    join.add_argument("--trust-version", type=_pinned_version, default=None, metavar="VERSION:CHECKSUM",
                      help="a version you trust (`swarmtrain log --pin` on a peer you trust prints it): when the "
                           "rounds this peer missed cannot be replayed from what it holds, it downloads this "
                           "version, checks it against the checksum, and replays from there")
    join.add_argument("--keep-payloads", type=_positive_int, default=HISTORY_ROUNDS, metavar="ROUNDS",
                      help=f"keep and serve the update payloads this peer merged for this many rounds, so "
                           f"peers that join later can replay them (default {HISTORY_ROUNDS}; the DHT keeps "
                           "round records for an hour, so more helps up to an hour of rounds)")
    _add_device_option(join)
    _add_inner_optim_option(join)
    _add_metrics_option(join)
    _add_allow_peers_option(join)
    _add_nat_options(join)
    _add_swarm_options(join)
    _add_data_option(join)
    _add_fetch_base_option(join)
    join.set_defaults(func=cmd_join)

    boot = sub.add_parser("bootstrap", help="run a swarm's entry point: a DHT node that validates the swarm's "
                          "records, with no model (recommended first node of a swarm)")
    boot.add_argument("--swarm", default="demo", help="swarm name whose records it validates (default: demo)")
    boot.add_argument("--initial-peers", nargs="+", metavar="MADDR",
                      help="other bootstrap nodes of the swarm, to chain with (none: start the DHT)")
    boot.add_argument("--data-dir", default=None,
                      help="keeps the node's identity, so its address survives restarts "
                           "(default: swarm-data/SWARM-bootstrap)")
    boot.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all interfaces)")
    boot.add_argument("--port", type=int, default=0, help="TCP port to listen on (0: any free port)")
    boot.add_argument("--address-file", default=None, metavar="PATH",
                      help="write the addresses peers join with to PATH, one per line, once ready")
    _add_metrics_option(boot)
    _add_allow_peers_option(boot)
    _add_nat_options(boot)  # its --announce: the address others dial, e.g. /ip4/PUBLIC_IP/tcp/31337
    boot.set_defaults(func=cmd_bootstrap)

    id_cmd = sub.add_parser("id", help="print this peer's id (for a private swarm's --allow-peers file), "
                            "creating its identity in the data dir if there is none")
    id_cmd.add_argument("--swarm", default="demo", help="swarm name, for the default data dir (default: demo)")
    id_cmd.add_argument("--data-dir", default=None, help="the peer's data dir (default: swarm-data/SWARM)")
    id_cmd.set_defaults(func=cmd_id)

    demo = sub.add_parser("demo", help="a local swarm of N peer processes on 127.0.0.1, shown live")
    demo.add_argument("--peers", type=_positive_int, default=3)
    demo.add_argument("--rounds", type=_positive_int, default=8)
    demo.add_argument("--preset", choices=PRESETS, default="demo")
    demo.add_argument("--fault", choices=list(FAULT_MODES), default=None, help="make the last peer misbehave")
    demo.add_argument("--data-dir", default="swarm-data/local-demo", help="where the peers keep data and logs")
    demo.set_defaults(func=cmd_demo)

    status = sub.add_parser("status", help="one snapshot of a swarm, read from its DHT records")
    status.add_argument("--swarm", default="demo", help="swarm name (default: demo)")
    status.add_argument("--initial-peers", nargs="+", metavar="MADDR", required=True,
                        help="multiaddr of any peer of the swarm")
    status.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    status.add_argument("--watch", action="store_true", help="keep the view updated until Ctrl-C")
    status.set_defaults(func=cmd_status)

    log_cmd = sub.add_parser("log", help="the version history this peer keeps")
    log_cmd.add_argument("--data-dir", default="swarm-data/demo", help="the peer's data dir")
    log_cmd.add_argument("--json", action="store_true")
    log_cmd.add_argument("--peers", action="store_true",
                         help="each author's record instead: updates accepted and rejected, offences this peer "
                              "saw itself, and who is cooling off now")
    log_cmd.add_argument("--pin", action="store_true",
                         help="print the head version as VERSION:CHECKSUM, what `join --trust-version` takes")
    log_cmd.set_defaults(func=cmd_log)

    export = sub.add_parser("export", help="write a kept version: a .safetensors file, or an HF/PEFT directory")
    export.add_argument("version", help="version id or a unique prefix of one")
    export.add_argument("out", help="output path, e.g. model.safetensors")
    export.add_argument("--data-dir", default="swarm-data/demo", help="the peer's data dir")
    export.add_argument("--format", choices=("safetensors", "hf", "peft"), default="safetensors",
                        help="safetensors: one file of the parameters (default); hf: a directory "
                             "AutoModelForCausalLM.from_pretrained loads (LoRA merged); peft: the LoRA adapter")
    export.add_argument("--model", default=None, metavar="DIR",
                        help="hf/peft: this machine's model directory (default: the one the genesis names)")
    export.set_defaults(func=cmd_export)
    configfile.add_to_every_subcommand(parser)  # last: every subcommand's flags are config keys
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # hivemind logs every identity check at INFO; peers print their own progress lines.
    # Read when hivemind is first imported (inside the commands), so set it here.
    os.environ.setdefault("HIVEMIND_LOGLEVEL", "WARNING")
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        sub = configfile.prepare(parser, argv)  # a --config file's values become the defaults
    except configfile.ConfigFileError as error:
        print(f"swarmtrain: error: {error}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if getattr(args, "print_config", False) and sub is not None:
        print(configfile.to_toml(configfile.effective(sub, args)), end="")
        return 0
    try:
        return int(args.func(args))
    except (ConfigError, FaultError, TaskError, UsageError) as error:
        print(f"swarmtrain: error: {error}", file=sys.stderr)
        return 2
    except _runtime_errors() as error:
        print(f"swarmtrain: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("swarmtrain: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
