"""How a node reaches and is reached by peers behind NAT: relays, auto-relay, hole punching.

hivemind passes these to its libp2p daemon (p2pd, circuit relay v2):

- ``relay`` (p2pd ``-relay``, on by default): dial peers through relays, and serve as a
  relay for others. Off, a peer can neither reach a NATed peer nor relay for one.
- ``auto_relay`` (``-autoRelay``): for a peer behind NAT. It reserves a slot on a relay
  (the ``relays`` given, else its initial peers, else peers its DHT finds) and announces
  the relayed address ``<relay>/p2p-circuit`` (unless ``announce`` is given), so others
  dial it through the relay.
- ``reachability`` (``-forceReachability{Public,Private}``): skip AutoNAT's guess. libp2p
  looks for relay slots only once it believes it is private, and p2pd offers its
  configured relay service (4 GiB, 30 min per relayed connection) only once it believes
  it is public; before that only a relay with libp2p's default limits runs (128 KiB per
  relayed connection: smaller than one update). AutoNAT never calls a private address
  public and may take minutes otherwise, so ``auto_relay`` defaults to private and
  ``relay_service`` to public. (p2pd starts both relays at once then, and the one that
  registers last wins: README "Peers behind NAT", known defect.)
- ``hole_punching`` (``-autonat``, which turns on both AutoNAT and DCUtR hole punching):
  two NATed peers that met over a relay try to upgrade to a direct connection.
- ``announce``: the addresses this node tells others to dial (a public IP or port that
  a router forwards), instead of the ones it listens on.
- ``client_mode``: the DHT node asks but never answers (a peer nobody can dial).

The defaults keep hivemind's: relay on, hole punching on, nothing forced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hivemind.p2p import P2P
from hivemind.utils.multiaddr import Multiaddr
from hivemind.utils.multiaddr.exceptions import Error as MultiaddrError

__all__ = ["NatOptions", "NatOptionsError", "REACHABILITIES", "circuit_addresses", "use_static_relays"]

REACHABILITIES = ("auto", "public", "private")


class NatOptionsError(ValueError):
    """The NAT options contradict each other or name a bad address; the message names the flag."""


@dataclass(frozen=True)
class NatOptions:
    relay: bool = True
    auto_relay: bool = False
    # Offer relay service at once: this peer has a public address (forces reachability public).
    relay_service: bool = False
    relays: tuple[str, ...] = ()        # trusted relays for auto_relay (default: the initial peers)
    reachability: str | None = None     # None: private with auto_relay, public with relay_service, else auto
    hole_punching: bool = True
    announce: tuple[str, ...] = ()
    client_mode: bool = False

    def __post_init__(self) -> None:
        if self.reachability is not None and self.reachability not in REACHABILITIES:
            raise NatOptionsError(f"--reachability must be one of {', '.join(REACHABILITIES)}, got {self.reachability!r}")
        if not self.relay and (self.auto_relay or self.relay_service):
            flag = "--auto-relay" if self.auto_relay else "--relay"
            raise NatOptionsError(f"{flag} needs circuit relay; drop --no-relay")
        if self.auto_relay and self.relay_service:
            raise NatOptionsError("--auto-relay is for a peer behind NAT and --relay for a public one; pick one")
        if self.relays and not self.auto_relay:
            raise NatOptionsError("--relay-via names relays for --auto-relay; add --auto-relay")
        for address in self.relays:
            _check_maddr("--relay-via", address, need_peer_id=True)
        for address in self.announce:
            parsed = _check_maddr("--announce", address, need_peer_id=False)
            if "tcp" in parsed.protocols() and parsed["tcp"] == "0":
                raise NatOptionsError(f"--announce {address}: give the real port others dial, not 0")

    @property
    def forced_reachability(self) -> str | None:
        """"public", "private" or None (AutoNAT decides)."""
        if self.reachability is not None:
            return None if self.reachability == "auto" else self.reachability
        if self.auto_relay:
            return "private"
        if self.relay_service:
            return "public"
        return None

    def hivemind_kwargs(self, initial_peers: Sequence[str]) -> dict[str, Any]:
        """Keyword arguments for ``hivemind.DHT`` (forwarded to ``hivemind.P2P.create``).

        With ``auto_relay`` and relays to use, this also installs :func:`use_static_relays`.
        """
        kwargs: dict[str, Any] = {
            "use_relay": self.relay,
            "use_auto_relay": self.auto_relay,
            "auto_nat": self.hole_punching,
            "client_mode": self.client_mode,
            "force_reachability": self.forced_reachability,
        }
        announce = list(self.announce)
        if self.auto_relay:
            # The initial peers are the peers a NATed node surely reaches.
            relays = list(self.relays or initial_peers)
            if relays:
                kwargs["trusted_relays"] = relays
                use_static_relays()
            if not announce:
                announce = circuit_addresses(relays)
        if announce:
            kwargs["announce_maddrs"] = announce
        return kwargs


def circuit_addresses(relays: Sequence[str]) -> list[str]:
    """The relayed addresses (``<relay>/p2p-circuit``) a NATed node announces.

    libp2p's autorelay announces relayed addresses only through relays with a public
    (globally routable) IP, so behind a relay on a private network (10.x, 192.168.x: a
    company network, the NAT test) the reservation succeeds but nobody learns the address
    and the peer stays unreachable. Announcing them explicitly works on both. Loopback
    relay addresses are left out unless there is nothing else (a swarm on one machine).
    """
    routable = [address for address in relays if not _is_loopback(address)] or list(relays)
    return [f"{address}/p2p-circuit" for address in routable]


def _is_loopback(address: str) -> bool:
    parts = address.split("/")
    return len(parts) > 2 and parts[1] in ("ip4", "ip6") and (parts[2].startswith("127.") or parts[2] == "::1")


def _check_maddr(flag: str, address: str, *, need_peer_id: bool) -> Multiaddr:
    try:
        parsed = Multiaddr(address)
    except MultiaddrError as error:
        raise NatOptionsError(f"{flag} {address!r} is not a multiaddr ({error}); like /ip4/1.2.3.4/tcp/31337") from error
    if need_peer_id and "p2p" not in parsed.protocols():
        raise NatOptionsError(f"{flag} {address!r} has no /p2p/<peer id> part; copy the relay's full address")
    return parsed


def use_static_relays() -> None:
    """Make p2pd reserve on the trusted relays at once instead of after 3 minutes.

    p2pd's ``-relayDiscovery`` (on by default) feeds autorelay from a peer source, and
    go-libp2p's autorelay then waits for 4 relay candidates or a 3-minute boot delay
    before it reserves a slot; a swarm of a few peers never has 4, so a NATed peer stayed
    unreachable for its first 3 minutes (seen in the NAT test's daemon logs: "node
    supports relay protocol", then no reservation). With ``-relayDiscovery=0`` and
    trusted relays, p2pd uses them as static relays, which autorelay reserves on at once.
    hivemind 1.1 has no parameter for this flag (its ``use_relay_discovery`` is a no-op),
    so the daemon's argument list is amended where hivemind builds it. The DHT runs in a
    forked process, which inherits this. Idempotent.
    """
    if getattr(P2P._make_process_args, "_swarmtrain_static_relays", False):
        return
    build = P2P._make_process_args

    def build_with_static_relays(*args: Any, **kwargs: Any) -> list[str]:
        if kwargs.get("autoRelay") and kwargs.get("trustedRelays"):
            kwargs.setdefault("relayDiscovery", False)
        return build(*args, **kwargs)

    build_with_static_relays._swarmtrain_static_relays = True  # type: ignore[attr-defined]
    P2P._make_process_args = staticmethod(build_with_static_relays)  # type: ignore[method-assign]
