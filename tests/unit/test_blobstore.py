"""The blob store's bounds: what is evicted, and what never is."""

from __future__ import annotations

from swarmtrain.peer.exchange.server import BlobStore
from swarmtrain.protocol.digest import blob_digest

IDS = [blob_digest(bytes([i])).hex() for i in range(8)]


def test_pinned_base_weights_outlive_any_number_of_updates() -> None:
    store = BlobStore(max_bytes=100, max_entries=2)
    store.put_provider("base", IDS[0], lambda: b"weights", pinned=True)
    for digest in IDS[1:6]:
        store.put("update", digest, b"u" * 10)
    # Before pinning, the oldest entry (the base weights) went first.
    assert ("base", IDS[0]) in store
    assert [("update", d) in store for d in IDS[1:6]] == [False, False, False, True, True]
    assert store.remove("base", IDS[0]) and ("base", IDS[0]) not in store


def test_the_byte_bound_evicts_only_entries_that_hold_bytes() -> None:
    store = BlobStore(max_bytes=100, max_entries=10)
    store.put_provider("state", IDS[0], lambda: b"state")  # holds no bytes: evicting it frees none
    store.put("update", IDS[1], b"a" * 60)
    store.put("update", IDS[2], b"b" * 60)  # 120 > 100: the oldest byte holder goes
    assert ("state", IDS[0]) in store and ("update", IDS[1]) not in store and ("update", IDS[2]) in store
    assert store.held_bytes == 60


def test_unpinned_providers_still_count_against_the_entry_bound() -> None:
    store = BlobStore(max_bytes=100, max_entries=2)
    for digest in IDS[:3]:
        store.put_provider("state", digest, lambda: b"")
    assert ("state", IDS[0]) not in store and len(store) == 2
