"""Start a swarmtrain DHT node, and turn hivemind's start-up failures into one-line errors.

hivemind reports a bad start as a daemon log line (``P2PDaemonError: Daemon failed to
start: 2026/.. failed to connect to bootstrap peers``), a ``ValidationError`` about clocks,
or a ``RuntimeError``; a user needs to know which of their inputs is wrong and what to do.
The cheap mistakes (a bare string, a malformed address, no ``/p2p/`` part) are caught
before any process starts.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import socket
from collections.abc import Sequence

import hivemind
from hivemind.dht.protocol import ValidationError as HivemindValidationError
from hivemind.p2p import P2PDaemonError
from hivemind.utils.multiaddr import Multiaddr
from hivemind.utils.multiaddr.exceptions import Error as MultiaddrError

from swarmtrain.dht.identity import Identity
from swarmtrain.dht.keys import validate_round, validate_swarm_name
from swarmtrain.dht.nat import NatOptions
from swarmtrain.dht.validator import round_window, swarm_validators

__all__ = [
    "BootstrapError",
    "ClockSkewError",
    "DeadBootstrapError",
    "IdentityTakenError",
    "MalformedMultiaddrError",
    "UnreachableError",
    "start_dht",
    "is_loopback_host",
    "visible_maddrs",
]

# The daemon starts in ~0.4 s and a dead bootstrap fails in ~0.5 s (~5 s when the port
# accepts TCP but never handshakes); past this something is stuck, not slow.
DEFAULT_START_TIMEOUT_S = 60.0
# Per initial peer, for the TCP probe before starting a daemon (loopback answers in ~ms).
_TCP_PROBE_TIMEOUT_S = 3.0


class BootstrapError(ValueError):
    """The DHT node could not start; the message says which input to fix."""


class MalformedMultiaddrError(BootstrapError):
    """An initial peer is not a full multiaddr with a /p2p/<peer id> part."""


class DeadBootstrapError(BootstrapError):
    """None of the initial peers answered."""


class ClockSkewError(BootstrapError):
    """This machine's clock differs from an initial peer's by more than hivemind allows (3 s)."""


class IdentityTakenError(BootstrapError):
    """Another live node already runs with this identity file."""


class UnreachableError(BootstrapError):
    """The initial peers answered but cannot connect back to this node."""


def start_dht(
    *,
    initial_peers: Sequence[str],
    identity: Identity,
    swarm: str,
    host: str = "127.0.0.1",
    port: int = 0,
    client_mode: bool = False,
    first_round: int = 0,
    start_timeout: float = DEFAULT_START_TIMEOUT_S,
    nat: NatOptions | None = None,
    allowed_peers: frozenset[str] | None = None,
) -> hivemind.DHT:
    """Start a DHT node that validates ``swarm``'s records and signs with ``identity``.

    ``initial_peers`` empty starts a new DHT (print :func:`visible_maddrs` for others to
    join). ``first_round`` centres the validator's round window for a late joiner (records.py
    moves it as rounds go by). ``nat`` sets relaying, hole punching and announced addresses
    (see dht/nat.py; its client_mode or ``client_mode`` makes a client node).
    ``allowed_peers`` makes the swarm private (allowlist.py). Raises a
    :class:`BootstrapError` subclass on a bad start.
    """
    validate_swarm_name(swarm)
    validate_round(first_round)
    peers = _check_initial_peers(initial_peers)
    if not 0 <= port <= 65535:
        raise BootstrapError(f"port must be in [0, 65535] (0 picks a free one), got {port}")
    listen = _listen_maddr(host, port)
    _check_some_peer_accepts_tcp(peers)
    nat_kwargs = (nat or NatOptions()).hivemind_kwargs(peers)
    nat_kwargs["client_mode"] = nat_kwargs["client_mode"] or client_mode
    dht = hivemind.DHT(
        initial_peers=peers,
        start=False,
        identity_path=str(identity.path),
        host_maddrs=[listen],
        record_validators=swarm_validators(identity, swarm, round_window(first_round), allowed_peers),
        **nat_kwargs,
    )
    try:
        dht.run_in_background(await_ready=True, timeout=start_timeout)
    except concurrent.futures.TimeoutError as error:
        dht.shutdown()
        raise BootstrapError(
            f"the DHT node did not start within {start_timeout:.0f} s; check that the initial peers "
            "are reachable and that this machine is not overloaded"
        ) from error
    except (P2PDaemonError, HivemindValidationError, RuntimeError) as error:
        _reap(dht)
        raise _explain(error, peers, identity) from error
    return dht


def visible_maddrs(dht: hivemind.DHT, *, loopback: bool = True) -> list[str]:
    """The node's full multiaddrs (with /p2p/); only the loopback ones when ``loopback``,
    else all of them with the non-loopback ones (what other machines dial) first."""
    addresses = [str(maddr) for maddr in dht.get_visible_maddrs()]
    if not loopback:
        return sorted(addresses, key=_is_loopback)
    return [address for address in addresses if _is_loopback(address)]


def is_loopback_host(host: str) -> bool:
    """Whether listening on ``host`` keeps a node on this machine (127.0.0.1, ::1)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_initial_peers(initial_peers: Sequence[str]) -> list[str]:
    # A bare string is a Sequence[str] too, of one-character "addresses"; hivemind then
    # fails with a parse error about an empty multiaddr.
    if isinstance(initial_peers, (str, bytes)):
        raise MalformedMultiaddrError(
            "initial_peers must be a list of multiaddrs, got a single string; wrap it: [address]"
        )
    peers = list(initial_peers)
    for address in peers:
        if not isinstance(address, str):
            raise MalformedMultiaddrError(f"initial peer {address!r} must be a string multiaddr")
        try:
            parsed = Multiaddr(address)
        except MultiaddrError as error:
            raise MalformedMultiaddrError(
                f"initial peer {address!r} is not a multiaddr ({error}); "
                "copy the full address a running peer printed, like /ip4/1.2.3.4/tcp/31337/p2p/Qm..."
            ) from error
        if "p2p" not in parsed.protocols():
            raise MalformedMultiaddrError(
                f"initial peer {address!r} has no /p2p/<peer id> part; copy the full address a running peer printed"
            )
    return peers


def _check_some_peer_accepts_tcp(peers: list[str]) -> None:
    # p2pd finds a dead bootstrap itself, but then exits leaving its unix socket file in
    # /tmp (hivemind does not remove it). A plain TCP connect answers the common case
    # (nothing listening) faster and without starting a daemon. Only for plain
    # /ip4|ip6/tcp addresses; anything else (dns, quic, relays) is left to p2pd.
    targets: list[tuple[str, int]] = []
    for address in peers:
        parts = address.split("/")
        if len(parts) < 5 or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp":
            return
        targets.append((parts[2], int(parts[4])))
    for target in targets:
        try:
            with socket.create_connection(target, timeout=_TCP_PROBE_TIMEOUT_S):
                return
        except OSError:
            continue
    if targets:
        raise DeadBootstrapError(
            f"no initial peer answered ({', '.join(peers)}); "
            "check that a peer is running there and the address is current"
        )


def _listen_maddr(host: str, port: int) -> str:
    try:
        version = ipaddress.ip_address(host).version
    except ValueError as error:
        raise BootstrapError(
            f"host must be an IP address to listen on (e.g. 127.0.0.1 or 0.0.0.0), got {host!r}"
        ) from error
    return f"/ip{version}/{host}/tcp/{port}"


def _is_loopback(address: str) -> bool:
    parts = address.split("/")
    return len(parts) > 2 and parts[1] in ("ip4", "ip6") and is_loopback_host(parts[2])


def _reap(dht: hivemind.DHT) -> None:
    # The DHT process returns after reporting the failure and its p2pd dies with it (seen
    # here for clock skew: the daemon is gone at once, though hivemind leaves its 0-byte
    # control socket in /tmp). Wait for the process so no zombie outlives the error.
    dht.join(timeout=dht.shutdown_timeout)
    if dht.is_alive():
        dht.terminate()
        dht.join(timeout=dht.shutdown_timeout)


def _explain(error: Exception, peers: list[str], identity: Identity) -> BootstrapError:
    message = str(error)
    joined = ", ".join(peers) or "(none)"
    if "failed to connect to bootstrap peers" in message or "bootstrap failed" in message:
        return DeadBootstrapError(
            f"no initial peer answered ({joined}); check that a peer is running there and the address is current"
        )
    if "failed to parse multiaddr" in message or "invalid p2p multiaddr" in message:
        detail = message.splitlines()[-1]
        return MalformedMultiaddrError(f"an initial peer is not a valid multiaddr ({joined}): {detail}")
    if "already taken" in message:
        return IdentityTakenError(
            f"identity {identity.path} (peer {identity.peer_id}) is already used by a running node; "
            "stop the other peer, or give this one its own --data-dir"
        )
    if "local time must be within" in message:
        return ClockSkewError(
            "this machine's clock is more than 3 s off an initial peer's; sync it (e.g. enable NTP) and retry"
        )
    if "can't access this node" in message:
        return UnreachableError(
            "the initial peers cannot connect back to this node; open its port or run with client mode"
        )
    first_line = message.splitlines()[0] if message else type(error).__name__
    return BootstrapError(f"the DHT node failed to start: {first_line}")
