"""NAT options: the flags map onto hivemind's P2P arguments, and contradictions are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hivemind.p2p import P2P

from swarmtrain.dht.nat import NatOptions, NatOptionsError, circuit_addresses
from swarmtrain.peer.app.cli import main

PEER = "QmXfzsrJ8n8o2gGqXbXvDJHnS6PNtEh5Evu7Wrqk1FNbAb"
RELAY = f"/ip4/203.0.113.7/tcp/31337/p2p/{PEER}"
LOOPBACK = f"/ip4/127.0.0.1/tcp/31337/p2p/{PEER}"


def test_defaults_keep_hivemind_defaults() -> None:
    assert NatOptions().hivemind_kwargs([RELAY]) == {
        "use_relay": True, "use_auto_relay": False, "auto_nat": True, "client_mode": False,
        "force_reachability": None}


def test_auto_relay_reserves_on_the_initial_peers_and_announces_the_relayed_address() -> None:
    kwargs = NatOptions(auto_relay=True).hivemind_kwargs([LOOPBACK, RELAY])
    assert kwargs["use_auto_relay"] and kwargs["force_reachability"] == "private"
    assert kwargs["trusted_relays"] == [LOOPBACK, RELAY]
    assert kwargs["announce_maddrs"] == [f"{RELAY}/p2p-circuit"]  # not the loopback one


def test_given_announce_and_relays_win() -> None:
    other = f"/ip4/198.51.100.1/tcp/4001/p2p/{PEER}"
    kwargs = NatOptions(auto_relay=True, relays=(other,), announce=("/ip4/1.2.3.4/tcp/5",),
                        reachability="auto").hivemind_kwargs([RELAY])
    assert kwargs["trusted_relays"] == [other] and kwargs["announce_maddrs"] == ["/ip4/1.2.3.4/tcp/5"]
    assert kwargs["force_reachability"] is None


def test_relay_service_forces_public_and_switches_are_passed() -> None:
    kwargs = NatOptions(relay_service=True, hole_punching=False, client_mode=True).hivemind_kwargs([])
    assert kwargs["force_reachability"] == "public" and kwargs["auto_nat"] is False and kwargs["client_mode"]


def test_static_relays_turn_off_relay_discovery_in_the_daemon_arguments() -> None:
    NatOptions(auto_relay=True).hivemind_kwargs([RELAY])
    with_relays = P2P._make_process_args("p2pd", autoRelay=True, trustedRelays=RELAY)
    assert "-relayDiscovery=0" in with_relays
    assert not any("relayDiscovery" in arg for arg in P2P._make_process_args("p2pd", autoRelay=False))


def test_circuit_addresses_fall_back_to_loopback_on_one_machine() -> None:
    assert circuit_addresses([LOOPBACK]) == [f"{LOOPBACK}/p2p-circuit"]


@pytest.mark.parametrize(("options", "flag"), [
    (dict(relay=False, auto_relay=True), "--no-relay"),
    (dict(auto_relay=True, relay_service=True), "pick one"),
    (dict(relays=(RELAY,)), "--auto-relay"),
    (dict(auto_relay=True, relays=("/ip4/1.2.3.4/tcp/1",)), "/p2p/"),
    (dict(announce=("/ip4/1.2.3.4/tcp/0",)), "not 0"),
    (dict(announce=("nonsense",)), "--announce"),
    (dict(reachability="sometimes"), "--reachability"),
])
def test_contradictions_name_the_flag(options: dict[str, object], flag: str) -> None:
    with pytest.raises(NatOptionsError, match=flag):
        NatOptions(**options)  # type: ignore[arg-type]


def test_cli_gives_a_one_line_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["join", "--data-dir", str(tmp_path), "--relay-via", RELAY])
    err = capsys.readouterr().err
    assert code == 2 and err == "swarmtrain: error: --relay-via names relays for --auto-relay; add --auto-relay\n"
