"""Blob exchange between real hivemind peers (p2pd daemons on 127.0.0.1).

Two DHT nodes live for the whole module: A serves, B fetches. Hostile servers are raw
stream handlers registered on A's P2P handle under their own protocol names, so they
cannot disturb the well-behaved server.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest
from hivemind import DHT
from hivemind.p2p import P2P, PeerID
from hivemind.p2p.p2p_daemon_bindings.datastructures import StreamInfo

from swarmtrain.peer.exchange.service import (
    BadResponse,
    BlobNotFound,
    BlobServer,
    BlobStore,
    BlobTooLarge,
    DigestMismatch,
    Exchange,
    FetchTimeout,
    PeerUnavailable,
    blob_digest,
    fetch_blob,
)
from swarmtrain.peer.exchange.client import ClientStats
from swarmtrain.peer.exchange.server import BlobNotReady
from swarmtrain.peer.exchange.streams import read_frame, write_frame
from swarmtrain.protocol.framing import (
    MAX_REQUEST_FRAME,
    MAX_RESPONSE_FRAME,
    MiB,
    ErrorResponse,
    decode_response,
    encode_frame_prefix,
    encode_header,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

LOCAL = ["/ip4/127.0.0.1/tcp/0"]
Handler = Callable[[StreamInfo, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def make_blob(size: int, seed: int = 0) -> tuple[bytes, str]:
    data = random.Random(seed).randbytes(size)
    return data, blob_digest(data).hex()


@pytest.fixture(scope="module")
def dhts() -> Iterator[tuple[DHT, DHT]]:
    a = DHT(start=True, host_maddrs=LOCAL)
    try:
        b = DHT(start=True, host_maddrs=LOCAL, initial_peers=[str(m) for m in a.get_visible_maddrs()])
    except BaseException:
        a.shutdown()
        raise
    try:
        yield a, b
    finally:
        b.shutdown()
        a.shutdown()


@pytest.fixture(scope="module")
def exchanges(dhts: tuple[DHT, DHT]) -> Iterator[tuple[Exchange, Exchange]]:
    a = Exchange.start(dhts[0])
    try:
        b = Exchange.start(dhts[1])
    except BaseException:
        a.close()
        raise
    try:
        yield a, b
    finally:
        b.close()
        a.close()


def add_handler(exchange: Exchange, name: str, handler: Handler) -> None:
    exchange.submit(exchange.p2p.add_binary_stream_handler(name, handler)).result(10)


def fetch_raw(fetcher: Exchange, server: Exchange, digest_hex: str, protocol: str, **kwargs: object) -> bytes:
    """fetch_blob against an arbitrary protocol name (the hostile handlers)."""
    kwargs.setdefault("max_size", 64 * MiB)
    kwargs.setdefault("timeout", 5.0)
    coro = fetch_blob(fetcher.p2p, server.peer_id, "update", digest_hex, protocol=protocol, **kwargs)
    return fetcher.submit(coro).result(30)


# --- the well-behaved path ------------------------------------------------------------


def test_fetch_small_blob(exchanges: tuple[Exchange, Exchange]) -> None:
    a, b = exchanges
    data, digest = make_blob(1000, seed=1)
    a.serve("update", digest, data)
    before_sent, before_received = a.stats().bytes_sent, b.stats().bytes_received
    assert b.fetch(a.peer_id, "update", digest, max_size=MiB, timeout=10) == data
    sent = a.stats().bytes_sent - before_sent
    assert sent == b.stats().bytes_received - before_received
    assert sent > len(data)  # payload plus header and frame prefixes


def test_fetch_empty_blob(exchanges: tuple[Exchange, Exchange]) -> None:
    a, b = exchanges
    data, digest = make_blob(0)
    a.serve("update", digest, data)
    assert b.fetch(a.peer_id, "update", digest, max_size=0, timeout=10) == b""


def test_fetch_20mb_in_chunks_with_progress(exchanges: tuple[Exchange, Exchange]) -> None:
    a, b = exchanges
    data, digest = make_blob(20_000_000, seed=2)
    a.serve("update", digest, data)
    calls: list[tuple[int, int]] = []
    got = b.fetch(a.peer_id, "update", digest, max_size=32 * MiB, timeout=30,
                  progress=lambda done, total: calls.append((done, total)))
    assert got == data
    frames = -(-len(data) // MiB)
    assert calls[0] == (0, len(data))
    assert calls[-1] == (len(data), len(data))
    assert len(calls) == frames + 1
    assert all(later[0] > earlier[0] for earlier, later in zip(calls, calls[1:]))


def test_concurrent_fetches_overlap(exchanges: tuple[Exchange, Exchange]) -> None:
    a, b = exchanges
    blobs = [make_blob(300_000, seed=10 + i) for i in range(4)]
    for data, digest in blobs:
        a.serve("update", digest, data)
    futures = [b.fetch_future(a.peer_id, "update", d, max_size=MiB, timeout=10) for _, d in blobs]
    assert [f.result(20) for f in futures] == [data for data, _ in blobs]


def test_state_blob_from_a_provider(exchanges: tuple[Exchange, Exchange]) -> None:
    a, b = exchanges
    state, _ = make_blob(2 * MiB + 5, seed=3)
    checksum = blob_digest(b"state checksum is computed over parameters").hex()
    a.serve_provider("state", checksum, lambda: state)
    # States are returned as they are; the caller checks its state checksum.
    assert b.fetch(a.peer_id, "state", checksum, max_size=8 * MiB, timeout=10) == state
    assert b.fetch(a.peer_id, "state", checksum, max_size=8 * MiB, timeout=10,
                   expected_digest=blob_digest(state)) == state
    with pytest.raises(DigestMismatch):
        b.fetch(a.peer_id, "state", checksum, max_size=8 * MiB, timeout=10, expected_digest=blob_digest(b"other"))


def test_fetch_from_own_peer_reads_the_local_store(exchanges: tuple[Exchange, Exchange]) -> None:
    a, _ = exchanges
    data, digest = make_blob(100, seed=4)
    a.serve("update", digest, data)
    assert a.fetch(a.peer_id, "update", digest, max_size=MiB, timeout=5) == data
    with pytest.raises(BlobNotFound):
        a.fetch(a.peer_id, "update", blob_digest(b"absent").hex(), max_size=MiB, timeout=5)


def test_failing_provider_is_peer_unavailable(exchanges: tuple[Exchange, Exchange]) -> None:
    a, b = exchanges
    checksum = blob_digest(b"a state that cannot be produced").hex()

    def broken() -> bytes:
        raise OSError("disk gone")

    a.serve_provider("state", checksum, broken)
    with pytest.raises(PeerUnavailable, match="unavailable"):
        b.fetch(a.peer_id, "state", checksum, max_size=MiB, timeout=10)


def test_store_evicts_oldest_first() -> None:
    # Pure bookkeeping, no peers needed; here because BlobStore lives beside the server.
    store = BlobStore(max_bytes=100, max_entries=3)
    ids = [blob_digest(bytes([i])).hex() for i in range(5)]
    store.put("update", ids[0], b"a" * 40)
    store.put("update", ids[1], b"b" * 40)
    store.put("update", ids[0], b"a" * 40)  # re-offered: now the youngest
    store.put("update", ids[2], b"c" * 40)  # 120 bytes > 100: evicts ids[1]
    assert ("update", ids[1]) not in store and ("update", ids[0]) in store
    assert store.held_bytes == 80
    store.put_provider("state", ids[3], lambda: b"")
    store.put_provider("state", ids[4], lambda: b"")  # 4 entries > 3: evicts ids[0]
    assert ("update", ids[0]) not in store and len(store) == 3 and store.held_bytes == 40
    with pytest.raises(ValueError, match="provider"):
        store.put("update", ids[0], b"x" * 101)
    assert store.remove("update", ids[2]) and not store.remove("update", ids[2])
    assert store.held_bytes == 0


# --- refusals by a well-behaved server --------------------------------------------------


def test_unknown_digest_is_not_found(exchanges: tuple[Exchange, Exchange]) -> None:
    a, b = exchanges
    with pytest.raises(BlobNotFound) as info:
        b.fetch(a.peer_id, "update", blob_digest(b"never served").hex(), max_size=MiB, timeout=10)
    assert info.value.peer_id == a.peer_id


def test_lying_server_gives_digest_mismatch(exchanges: tuple[Exchange, Exchange]) -> None:
    a, b = exchanges
    data, _ = make_blob(70_000, seed=5)
    claimed = blob_digest(b"what the commitment promised").hex()
    a.serve("update", claimed, data)  # the store does not hash; the fetcher must
    with pytest.raises(DigestMismatch):
        b.fetch(a.peer_id, "update", claimed, max_size=MiB, timeout=10)


def test_header_over_max_size_is_refused_before_data(exchanges: tuple[Exchange, Exchange]) -> None:
    a, b = exchanges
    data, digest = make_blob(3 * MiB, seed=6)
    a.serve("update", digest, data)
    stats = ClientStats()
    coro = fetch_blob(b.p2p, a.peer_id, "update", digest, max_size=MiB, timeout=10, stats=stats)
    with pytest.raises(BlobTooLarge) as info:
        b.submit(coro).result(20)
    assert (info.value.size, info.value.max_size) == (len(data), MiB)
    assert stats.bytes_received < MAX_RESPONSE_FRAME  # the header only, no data frame


def test_malformed_request_gets_an_error_frame(exchanges: tuple[Exchange, Exchange]) -> None:
    a, b = exchanges

    async def ask(p2p: P2P) -> object:
        _, reader, writer = await p2p.call_binary_stream_handler(PeerID.from_base58(a.peer_id), a.config.protocol)
        try:
            await write_frame(writer, b"\x81\xa1v\x01", 5)  # {"v": 1} and nothing else
            return decode_response(await read_frame(reader, MAX_RESPONSE_FRAME, 5))
        finally:
            writer.close()

    response = b.submit(ask(b.p2p)).result(20)
    assert isinstance(response, ErrorResponse) and response.code == "bad_request"


def test_a_busy_server_says_so_and_the_client_retries_until_a_slot_frees(exchanges: tuple[Exchange, Exchange]) -> None:
    a, b = exchanges
    data, digest = make_blob(10, seed=7)
    release = threading.Event()
    store = BlobStore(max_bytes=MiB, max_entries=4)
    store.put("update", digest, data)
    slow_digest = "5" * 64
    store.put_provider("state", slow_digest, lambda: data if release.wait(10) else b"")
    server = BlobServer(store, protocol="test.busy", max_concurrent_streams=1, request_timeout=1)
    a.submit(server.start(a.p2p)).result(10)
    try:
        # The only serving slot is taken by a response whose provider waits.
        slow = b.submit(fetch_blob(b.p2p, a.peer_id, "state", slow_digest, max_size=MiB, timeout=20,
                                   protocol="test.busy"))
        deadline = time.monotonic() + 10
        while server.active_streams < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        waiting = b.submit(fetch_blob(b.p2p, a.peer_id, "update", digest, max_size=MiB, timeout=20,
                                      protocol="test.busy"))
        while server.stats.requests_refused < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.stats.requests_refused >= 1 and not waiting.done()  # told "busy", and retrying
        # Busy past the deadline: a timeout that says what it was waiting for.
        with pytest.raises(FetchTimeout, match="busy"):
            fetch_raw(b, a, digest, "test.busy", timeout=1.0)
        release.set()
        assert slow.result(20) == data and waiting.result(20) == data
    finally:
        release.set()
        a.submit(server.stop()).result(10)


def test_a_blob_not_revealed_yet_is_busy_and_the_client_gets_it_once_revealed(
        exchanges: tuple[Exchange, Exchange]) -> None:
    """An update asked for before its round's commit deadline: the server answers "busy"
    (its provider raises BlobNotReady) and the client retries until it is served."""
    a, b = exchanges
    data, digest = make_blob(10, seed=11)
    reveal_at = time.monotonic() + 1.5

    def provide() -> bytes:
        if time.monotonic() < reveal_at:
            raise BlobNotReady("revealed at the commit deadline")
        return data
    store = BlobStore(max_bytes=MiB, max_entries=4)
    store.put_provider("update", digest, provide)
    server = BlobServer(store, protocol="test.reveal", request_timeout=1)
    a.submit(server.start(a.p2p)).result(10)
    try:
        got = b.submit(fetch_blob(b.p2p, a.peer_id, "update", digest, max_size=MiB, timeout=20,
                                  protocol="test.reveal")).result(20)
        assert got == data and time.monotonic() >= reveal_at
        assert server.stats.requests_refused >= 1  # told to wait at least once, never failed
    finally:
        a.submit(server.stop()).result(10)


def test_idle_streams_cost_their_opener_and_nobody_else(dhts: tuple[DHT, DHT],
                                                        exchanges: tuple[Exchange, Exchange]) -> None:
    """32 idle streams used to take every slot of a peer's blob server, and its update was
    then "not downloaded" by everyone. Now a stream holds no serving slot until it has sent
    its request, and one peer's streams beyond its limit are closed unread."""
    a, b = exchanges
    data, digest = make_blob(10, seed=8)
    store = BlobStore(max_bytes=MiB, max_entries=4)
    store.put("update", digest, data)
    server = BlobServer(store, protocol="test.idle", max_concurrent_streams=1, max_streams_per_peer=4,
                        request_timeout=2)
    a.submit(server.start(a.p2p)).result(10)
    third = DHT(start=True, host_maddrs=LOCAL, initial_peers=[str(m) for m in dhts[0].get_visible_maddrs()])
    c = Exchange.start(third)

    async def hold_a_stream(p2p: P2P) -> bytes:
        _, reader, writer = await p2p.call_binary_stream_handler(PeerID.from_base58(a.peer_id), "test.idle")
        try:
            return await reader.read()  # until the server closes it
        finally:
            writer.close()

    try:
        holders = [b.submit(hold_a_stream(b.p2p)) for _ in range(32)]
        deadline = time.monotonic() + 10
        while server.stats.streams_shed < 28 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.stats.streams_shed == 28  # b's streams beyond its 4 were closed unread
        assert server.active_streams == 0       # and the 4 it keeps hold no serving slot
        assert fetch_raw(c, a, digest, "test.idle") == data  # another peer is served at once
        for holder in holders:
            holder.result(10)  # each idle stream ends: shed at once, or after request_timeout
        assert fetch_raw(b, a, digest, "test.idle") == data  # and b itself once it behaves
    finally:
        c.close()
        third.shutdown()
        a.submit(server.stop()).result(10)


def test_a_private_swarms_server_serves_its_members_only(exchanges: tuple[Exchange, Exchange]) -> None:
    """--allow-peers: a peer off the list gets no blob, not even an error frame."""
    a, b = exchanges
    data, digest = make_blob(10, seed=9)
    store = BlobStore(max_bytes=MiB, max_entries=4)
    store.put("update", digest, data)
    members = BlobServer(store, protocol="test.private.b", allowed_peers=frozenset({b.peer_id}))
    others = BlobServer(store, protocol="test.private.a", allowed_peers=frozenset({a.peer_id}))
    for server in (members, others):
        a.submit(server.start(a.p2p)).result(10)
    try:
        assert fetch_raw(b, a, digest, "test.private.b") == data
        with pytest.raises(PeerUnavailable):
            fetch_raw(b, a, digest, "test.private.a", timeout=3.0)
        assert others.stats.streams_unlisted == 1 and others.stats.blobs_served == 0
    finally:
        for server in (members, others):
            a.submit(server.stop()).result(10)


# --- hostile servers -----------------------------------------------------------------


async def _read_request(reader: asyncio.StreamReader) -> None:
    await read_frame(reader, MAX_REQUEST_FRAME, 5)


async def _wait_for_client_to_leave(reader: asyncio.StreamReader) -> None:
    # Returns when the client closes the stream, so stalled handlers end with the test.
    await asyncio.wait_for(reader.read(), 30)


def test_garbage_header_is_bad_response(exchanges: tuple[Exchange, Exchange]) -> None:
    a, b = exchanges

    async def garbage(_: StreamInfo, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await write_frame(writer, os.urandom(40) + b"\xc1", 5)
        writer.close()

    add_handler(a, "test.garbage", garbage)
    with pytest.raises(BadResponse):
        fetch_raw(b, a, blob_digest(b"x").hex(), "test.garbage")


def test_huge_frame_prefix_is_refused_without_reading(exchanges: tuple[Exchange, Exchange]) -> None:
    a, b = exchanges

    async def huge(_: StreamInfo, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(encode_frame_prefix(1 << 40))  # "a 1 TiB header follows"
        await writer.drain()
        await _wait_for_client_to_leave(reader)

    add_handler(a, "test.huge", huge)
    with pytest.raises(BadResponse, match="exceeds the cap"):
        fetch_raw(b, a, blob_digest(b"x").hex(), "test.huge")


def test_oversized_data_frame_is_bad_response(exchanges: tuple[Exchange, Exchange]) -> None:
    a, b = exchanges
    data, digest = make_blob(2 * MiB, seed=8)

    async def fat_frames(_: StreamInfo, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await write_frame(writer, encode_header(len(data), MiB), 5)
        await write_frame(writer, data, 5)  # one 2 MiB frame where 1 MiB frames were promised
        await _wait_for_client_to_leave(reader)

    add_handler(a, "test.fat", fat_frames)
    with pytest.raises(BadResponse, match="exceeds the cap"):
        fetch_raw(b, a, digest, "test.fat")


def test_stalled_server_times_out_within_the_deadline(exchanges: tuple[Exchange, Exchange]) -> None:
    a, b = exchanges

    async def stall(_: StreamInfo, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await _wait_for_client_to_leave(reader)

    add_handler(a, "test.stall", stall)
    started = time.monotonic()
    with pytest.raises(FetchTimeout, match="waiting for the header"):
        fetch_raw(b, a, blob_digest(b"x").hex(), "test.stall", timeout=1.0)
    assert time.monotonic() - started < 2.0


def test_server_stalling_mid_blob_hits_the_stall_timeout(exchanges: tuple[Exchange, Exchange]) -> None:
    a, b = exchanges
    data, digest = make_blob(3 * MiB, seed=9)

    async def stall_midway(_: StreamInfo, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await write_frame(writer, encode_header(len(data), MiB), 5)
        await write_frame(writer, data[:MiB], 5)
        await _wait_for_client_to_leave(reader)

    add_handler(a, "test.stall-midway", stall_midway)
    started = time.monotonic()
    with pytest.raises(FetchTimeout, match=f"{MiB} bytes in"):
        fetch_raw(b, a, digest, "test.stall-midway", timeout=20.0, stall_timeout=0.5)
    assert time.monotonic() - started < 3.0


def test_server_hanging_up_mid_blob_is_peer_unavailable(exchanges: tuple[Exchange, Exchange]) -> None:
    a, b = exchanges
    data, digest = make_blob(3 * MiB, seed=9)

    async def hang_up(_: StreamInfo, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await write_frame(writer, encode_header(len(data), MiB), 5)
        await write_frame(writer, data[:MiB], 5)
        writer.close()

    add_handler(a, "test.hang-up", hang_up)
    with pytest.raises(PeerUnavailable, match="closed the stream"):
        fetch_raw(b, a, digest, "test.hang-up")


def test_raising_handler_is_peer_unavailable(exchanges: tuple[Exchange, Exchange]) -> None:
    a, b = exchanges

    async def crash(_: StreamInfo, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise RuntimeError("a careless handler")

    add_handler(a, "test.crash", crash)
    with pytest.raises(PeerUnavailable):
        fetch_raw(b, a, blob_digest(b"x").hex(), "test.crash", timeout=5.0)


# --- unreachable peers ---------------------------------------------------------------


def test_dead_peer_is_peer_unavailable(dhts: tuple[DHT, DHT], exchanges: tuple[Exchange, Exchange]) -> None:
    a_dht, _ = dhts
    _, b = exchanges
    c_dht = DHT(start=True, host_maddrs=LOCAL, initial_peers=[str(m) for m in a_dht.get_visible_maddrs()])
    try:
        c = Exchange.start(c_dht)
        data, digest = make_blob(1000, seed=11)
        c.serve("update", digest, data)
        assert b.fetch(c.peer_id, "update", digest, max_size=MiB, timeout=10) == data  # B knows C now
        c.close()
    finally:
        c_dht.shutdown()
    started = time.monotonic()
    with pytest.raises(PeerUnavailable):
        b.fetch(c.peer_id, "update", digest, max_size=MiB, timeout=10)
    assert time.monotonic() - started < 10


def test_unknown_peer_is_peer_unavailable(exchanges: tuple[Exchange, Exchange]) -> None:
    _, b = exchanges
    stranger = "12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp"
    with pytest.raises(PeerUnavailable, match="routing: not found"):
        b.fetch(stranger, "update", blob_digest(b"x").hex(), max_size=MiB, timeout=5)
    with pytest.raises(PeerUnavailable, match="base58"):
        b.fetch("not a peer id!", "update", blob_digest(b"x").hex(), max_size=MiB, timeout=5)


# --- large blobs ---------------------------------------------------------------------


def test_64mib_blob_arrives_intact(exchanges: tuple[Exchange, Exchange]) -> None:
    """Many frames, one digest; speed is measured by benchmarks/exchange.py, not here."""
    a, b = exchanges
    data, digest = make_blob(64 * MiB, seed=12)
    a.serve("update", digest, data)
    try:
        assert b.fetch(a.peer_id, "update", digest, max_size=64 * MiB, timeout=60) == data
    finally:
        a.unserve("update", digest)
