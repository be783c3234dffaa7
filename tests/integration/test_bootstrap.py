"""`swarmtrain bootstrap` as a swarm's only entry point, and `--metrics-port` scraped for real.

One swarm runs for the whole module (real processes on 127.0.0.1): a `swarmtrain
bootstrap` node and two smoke-preset peers that join only through it and play 2 rounds,
all three serving metrics. The tests run in file order while it trains: the peers'
/metrics over HTTP, a real Prometheus server scraping all three (Debian's `prometheus`
binary; skipped without it), forged records offered to the bootstrap node and to a stock
`hivemind-dht` node, then the end of the swarm. The forgers are hivemind nodes without
swarmtrain's validators (what anyone can run) asking each node in turn, directly, to
store a forged entry under one of the swarm's keys.
"""

from __future__ import annotations

import functools
import json
import math
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import hivemind
import pytest
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord
from hivemind.p2p import PeerID
from hivemind.utils import get_dht_time
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from swarmkit import SMOKE, Swarm, free_port, history, versions_by_round
from swarmtrain.dht.identity import load_or_create_identity
from swarmtrain.dht.keys import commits_key
from swarmtrain.dht.testing import hex_digest, sample_commit
from swarmtrain.peer.app.launch import stop_group
from test_dht_records import _own_marker  # the impostor's marker, read inside its DHT process

pytestmark = [pytest.mark.integration]

SWARM = "itest-boot"
PEERS = ("p0", "p1", "p2")  # the target: 3 peers with the bootstrap as the only entry point
FORGED_ROUND = 200  # inside the validators' first window, far from the rounds the peers play
PROMETHEUS = shutil.which("prometheus")
DOCKER = Path(__file__).resolve().parents[2] / "docker"


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    swarm = Swarm(tmp_path_factory.mktemp("boot"), SWARM)
    try:
        entry = swarm.start_bootstrap("bootstrap", "--metrics-port", "0",
                                      "--address-file", str(swarm.root / "bootstrap.addr"))
        assert (swarm.root / "bootstrap.addr").read_text().splitlines()[0] == entry
        # Both at once, with the same flags: whichever genesis candidate wins, round 0 opens
        # after both have started, even on a loaded machine.
        for label in PEERS:
            swarm.start(label, *SMOKE, "--rounds", "2", "--initial-peers", entry, "--start-delay", "12",
                        "--metrics-port", "0")
        yield swarm
    finally:
        swarm.stop_all()


def scrape(url: str) -> list[Sample]:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float | None:
    found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return found[0] if found else None


def poll(what: str, read: Callable[[], object], timeout: float) -> object:
    """``read()`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = read()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.mark.timeout(120)
def test_peers_serve_rounds_losses_and_throughput(swarm: Swarm) -> None:
    urls = [swarm.metrics_url(label) for label in PEERS]
    # Served before the DHT starts: the first scrape comes before any round has ended.
    first = scrape(urls[0])
    assert value(first, "swarmtrain_rounds_total") == 0
    assert math.isnan(value(first, "swarmtrain_heldout_loss") or 0.0)  # unknown, not a made-up 0

    for url in urls:
        def after_a_round(url: str = url) -> list[Sample] | None:
            samples = scrape(url)
            return samples if (value(samples, "swarmtrain_rounds_total") or 0) >= 1 else None

        after = poll("a round to end", after_a_round, timeout=100)
        assert isinstance(after, list)
        assert value(after, "swarmtrain_round") >= 1  # type: ignore[operator]
        for loss in ("swarmtrain_heldout_loss", "swarmtrain_train_loss"):
            assert math.isfinite(value(after, loss)), loss  # type: ignore[arg-type]
        assert 0 < value(after, "swarmtrain_utilisation") <= 1  # type: ignore[operator]
        assert value(after, "swarmtrain_samples_per_second") > 0  # type: ignore[operator]
        assert value(after, "swarmtrain_updates_total", outcome="accepted", reason="accepted") == len(PEERS)
        assert value(after, "swarmtrain_own_updates_total", outcome="accepted") >= 1  # type: ignore[operator]
        assert value(after, "swarmtrain_sent_bytes_total") > 0  # type: ignore[operator]  # the other checked it
        assert value(after, "swarmtrain_received_bytes_total") > 0  # type: ignore[operator]
        assert value(after, "swarmtrain_node_info", role="peer", swarm=SWARM) == 1
        versions = [s for s in after if s.name == "swarmtrain_version"]
        assert len(versions) == 1 and len(versions[0].labels["version"]) == 12


@pytest.mark.timeout(120)
def test_prometheus_scrapes_every_node(swarm: Swarm, tmp_path: Path) -> None:
    if PROMETHEUS is None:
        pytest.skip("no `prometheus` binary on PATH (Debian: apt-get install --no-install-recommends prometheus)")
    targets = {label: urllib.parse.urlsplit(swarm.metrics_url(label)).netloc for label in (*PEERS, "bootstrap")}
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "swarmtrain", "static_configs": [{"targets": list(targets.values())}]}],
    }))
    web = f"127.0.0.1:{free_port()}"
    log_path = tmp_path / "prometheus.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address={web}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        def query(expr: str) -> dict[str, float]:
            """``expr``'s value by target (empty until Prometheus answers)."""
            address = f"http://{web}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            try:
                with urllib.request.urlopen(address, timeout=5) as response:
                    body = json.load(response)
            except urllib.error.HTTPError as error:  # a query Prometheus refuses (before OSError: one too)
                raise AssertionError(f"{expr}: {error.read().decode()}") from error
            except OSError:  # not listening yet
                assert server.poll() is None, log_path.read_text()
                return {}
            assert body["status"] == "success", body
            return {r["metric"].get("instance", ""): float(r["value"][1]) for r in body["data"]["result"]}

        peers = {targets[label] for label in PEERS}
        # Every peer's round and finite held-out loss, through Prometheus' HTTP API.
        losses = poll("every peer's held-out loss", lambda: (got := {
            k: v for k, v in query("swarmtrain_heldout_loss").items() if math.isfinite(v)}).keys() == peers and got,
            timeout=45)
        assert isinstance(losses, dict)
        rounds = poll("every peer's round", lambda: (got := query("swarmtrain_round >= 1")).keys() == peers and got,
                      timeout=20)
        assert isinstance(rounds, dict)
        # Polled too: Prometheus scrapes each target on its own 1 s clock, so the peers'
        # series can be in while the bootstrap's first scrape is not yet (CI saw it empty).
        poll("the bootstrap's DHT peers", lambda: query("swarmtrain_dht_peers").keys() == {targets["bootstrap"]},
             timeout=20)
        poll("every target up", lambda: query('up{job="swarmtrain"}') == {t: 1.0 for t in targets.values()},
             timeout=20)
        # The shipped dashboard's queries are all ones Prometheus accepts, and its first
        # panel shows every peer.
        dashboard = json.loads((DOCKER / "grafana-dashboard.json").read_text())
        exprs = [t["expr"].replace("$__rate_interval", "1m") for p in dashboard["panels"] for t in p["targets"]]
        for expr in exprs:
            query(expr)
        assert exprs[0] == "swarmtrain_heldout_loss" and query(exprs[0]).keys() == peers
    finally:
        stop_group(server)
    # And the compose swarm's scrape config is one Prometheus accepts.
    promtool = Path(PROMETHEUS).with_name("promtool")
    if promtool.exists():
        check = subprocess.run([str(promtool), "check", "config", str(DOCKER / "prometheus.yml")],
                               capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr


async def _store_on(_dht: hivemind.DHT, node: hivemind.DHTNode, *, peer: str, key: str, subkey: bytes,
                    value: object, expiration: float) -> list[bool] | None:
    """Ask one node (``peer``) to store one entry, signed as DHTNode.store_many signs it."""
    key_id, serializer = DHTID.generate(source=key), node.protocol.serializer
    value_bytes = serializer.dumps(value)
    record = DHTRecord(key_id.to_bytes(), serializer.dumps(subkey), value_bytes, expiration)
    value_bytes = node.protocol.record_validator.sign_value(record)
    stored = await node.protocol.call_store(PeerID.from_base58(peer), [key_id], [value_bytes], expiration,
                                            subkeys=[subkey])
    return None if stored is None else list(stored)  # a protobuf field does not pickle back to the caller


async def _holds(_dht: hivemind.DHT, node: hivemind.DHTNode, *, peer: str, key: str) -> bool:
    """Whether ``peer`` itself answers ``key`` with a value (not just with its neighbours)."""
    key_id = DHTID.generate(source=key)
    found = await node.protocol.call_find(PeerID.from_base58(peer), [key_id])
    return found is not None and found[key_id][0] is not None


def _peer_id(address: str) -> str:
    return address.rsplit("/p2p/", 1)[1]


@pytest.mark.timeout(90)
def test_bootstrap_refuses_forged_records_a_stock_node_stores(
        swarm: Swarm, plain_dht: Callable[..., hivemind.DHT], wait_until: Callable[..., None]) -> None:
    entry, stock = swarm.peers["bootstrap"].address(), swarm.start_plain_hivemind()
    victim = load_or_create_identity(swarm.root / "victim")
    forged = sample_commit(victim.peer_id, digest=hex_digest("evil")).to_wire()
    key = commits_key(SWARM, FORGED_ROUND)
    nodes = {"bootstrap": _peer_id(entry), "stock": _peer_id(stock)}
    unsigned = plain_dht(initial_peers=[entry, stock])  # no signature, under the victim's marker
    impostor = plain_dht(initial_peers=[entry, stock], record_validators=[RSASignatureValidator()])
    forgeries = {"unsigned, under the victim's marker": (unsigned, victim.owner_marker),
                 "signed by a key that is not the owner's": (impostor, impostor.run_coroutine(_own_marker))}

    def ask(forger: hivemind.DHT, coroutine: Callable[..., object]) -> object:
        return forger.run_coroutine(coroutine, return_future=True).result(timeout=30)  # type: ignore[arg-type]

    for what, (forger, marker) in forgeries.items():
        answers = {name: ask(forger, functools.partial(_store_on, peer=peer, key=key, subkey=marker, value=forged,
                                                      expiration=get_dht_time() + 600))
                   for name, peer in nodes.items()}
        assert answers == {"bootstrap": [False], "stock": [True]}, what
    assert {name: ask(unsigned, functools.partial(_holds, peer=peer, key=key)) for name, peer in nodes.items()} \
        == {"bootstrap": False, "stock": True}
    url = swarm.metrics_url("bootstrap")
    wait_until(lambda: (value(scrape(url), "swarmtrain_dht_refused_records_total") or 0) >= len(forgeries),
               timeout=15, what="the bootstrap's refusal count")


@pytest.mark.timeout(120)
def test_peers_joined_only_through_the_bootstrap_agree(swarm: Swarm) -> None:
    swarm.wait(*PEERS, timeout=100)
    bootstrap = swarm.peers["bootstrap"]
    assert bootstrap.running()  # peers leaving does not end the entry point
    assert bootstrap.stop(signal.SIGTERM) == 0, bootstrap.log_text()
    assert "bootstrap node stopped" in bootstrap.log_text()
    assert re.search(rf"swarm '{SWARM}' has genesis [0-9a-f]{{64}}", bootstrap.log_text()), bootstrap.log_text()

    logs = [swarm.peers[label].log_text() for label in PEERS]
    played = [versions_by_round(log) for log in logs]
    assert all(p == played[0] for p in played) and len(played[0]) == 2, logs  # the same versions, round by round
    finals = [history(swarm.root / label)[-1] for label in PEERS]
    assert len({(c.version_id, c.state_checksum) for c in finals}) == 1, finals
    assert all(len(c.accepted) == len(PEERS) for c in finals), finals
    assert math.isfinite(finals[0].validation_loss or math.nan)


def test_taken_metrics_port_is_a_one_line_error_before_anything_joins(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "swarmtrain.peer.app.cli", "join", "--swarm", "itest-taken", "--data-dir",
             str(tmp_path / "peer"), "--metrics-port", str(port)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("swarmtrain: error:") and "--metrics-port" in lines[0], lines
    assert not (tmp_path / "peer").exists()  # no identity, no DHT node, no genesis
