"""Blob exchange framing (protocol/framing.py): messages, caps and the receiver, no sockets."""

from __future__ import annotations

import hashlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmtrain.protocol.errors import ProtocolError
from swarmtrain.protocol.framing import (
    DEFAULT_CHUNK,
    MAX_CHUNK,
    MAX_REQUEST_FRAME,
    MAX_RESPONSE_FRAME,
    MIN_CHUNK,
    BlobComplete,
    BlobHeader,
    BlobReceiver,
    BlobRequest,
    ChunkReceived,
    ErrorResponse,
    HeaderReceived,
    OversizedBlob,
    ReceiverState,
    RemoteError,
    decode_frame_prefix,
    decode_request,
    decode_response,
    encode_error,
    encode_frame_prefix,
    encode_header,
    encode_request,
    iter_chunks,
)

DIGEST = hashlib.blake2b(b"payload", digest_size=32).hexdigest()
C = MIN_CHUNK


def pack(message: object) -> bytes:
    return msgpack.packb(message)


# --- frame prefix --------------------------------------------------------------------


def test_frame_prefix_round_trip_and_cap() -> None:
    prefix = encode_frame_prefix(1234)
    assert len(prefix) == 8 and prefix == (1234).to_bytes(8, "big")
    assert decode_frame_prefix(prefix, 1234) == 1234
    with pytest.raises(ProtocolError, match="exceeds the cap"):
        decode_frame_prefix(prefix, 1233)
    with pytest.raises(ProtocolError, match="8 bytes"):
        decode_frame_prefix(prefix[:7], 1 << 30)
    with pytest.raises(ProtocolError):
        decode_frame_prefix(b"\xff" * 8, 1 << 40)


# --- request -------------------------------------------------------------------------


def test_request_round_trip() -> None:
    frame = encode_request("update", DIGEST)
    assert len(frame) <= MAX_REQUEST_FRAME
    assert decode_request(frame) == BlobRequest(kind="update", digest_hex=DIGEST)
    assert decode_request(encode_request("state", DIGEST)).kind == "state"


def test_request_ignores_unknown_keys_for_forward_compatibility() -> None:
    frame = pack({"v": 1, "op": "get", "kind": "update", "id": DIGEST, "hint": 3})
    assert decode_request(frame).digest_hex == DIGEST


@pytest.mark.parametrize(
    "message",
    [
        {"v": 2, "op": "get", "kind": "update", "id": DIGEST},  # other protocol version
        {"v": True, "op": "get", "kind": "update", "id": DIGEST},  # bool is not an int
        {"op": "get", "kind": "update", "id": DIGEST},  # no version
        {"v": 1, "op": "put", "kind": "update", "id": DIGEST},  # unknown op
        {"v": 1, "op": "get", "kind": "model", "id": DIGEST},  # unknown kind
        {"v": 1, "op": "get", "kind": "update"},  # no id
        {"v": 1, "op": "get", "kind": "update", "id": DIGEST.upper()},  # not canonical hex
        {"v": 1, "op": "get", "kind": "update", "id": "ab" * 8},  # too short
        {"v": 1, "op": "get", "kind": "update", "id": "zz" * 32},  # not hex
        {"v": 1, "op": "get", "kind": "update", "id": DIGEST + "a"},  # odd length
        {"v": 1, "op": "get", "kind": "update", "id": bytes.fromhex(DIGEST)},  # bin, not str
        {"v": 1, "op": "get", "kind": ["update"], "id": DIGEST},  # wrong type
        [1, "get", "update", DIGEST],  # not a map
    ],
)
def test_malformed_request_is_refused(message: object) -> None:
    with pytest.raises(ProtocolError):
        decode_request(pack(message))


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\xc1",  # reserved msgpack byte
        pack({"v": 1, "op": "get", "kind": "update", "id": DIGEST})[:-3],  # truncated
        pack({"v": 1, "op": "get", "kind": "update", "id": DIGEST}) + b"\x00",  # trailing bytes
        pack({"v": 1, "op": "get", "kind": "update", "id": DIGEST, "pad": "x" * 300}),  # over cap
        pack({1: 1}),  # non-string key
        b"\x91" * 200,  # deep nesting
        b"\xd9\x03\xff\xfe\xfd",  # invalid UTF-8
    ],
)
def test_garbage_request_frame_is_refused(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_request(frame)


def test_encode_request_refuses_bad_arguments() -> None:
    with pytest.raises(ProtocolError):
        encode_request("weights", DIGEST)
    with pytest.raises(ProtocolError):
        encode_request("update", "not-hex")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=MAX_REQUEST_FRAME + 16))
def test_any_bytes_decode_to_a_request_or_protocol_error(frame: bytes) -> None:
    try:
        decode_request(frame)
    except ProtocolError:
        pass


# --- responses -----------------------------------------------------------------------


def test_header_and_error_round_trip() -> None:
    assert decode_response(encode_header(10, C)) == BlobHeader(size=10, chunk=C)
    assert decode_response(encode_header(0)) == BlobHeader(size=0, chunk=DEFAULT_CHUNK)
    assert decode_response(encode_error("not_found", "no such blob")) == ErrorResponse("not_found", "no such blob")


def test_error_message_is_truncated_to_fit_the_cap() -> None:
    frame = encode_error("internal", "\U0001f600" * 5000)
    assert len(frame) <= MAX_RESPONSE_FRAME
    assert isinstance(decode_response(frame), ErrorResponse)


def test_frame_count() -> None:
    assert BlobHeader(size=0, chunk=C).frame_count == 0
    assert BlobHeader(size=1, chunk=C).frame_count == 1
    assert BlobHeader(size=C, chunk=C).frame_count == 1
    assert BlobHeader(size=C + 1, chunk=C).frame_count == 2


@pytest.mark.parametrize(
    "message",
    [
        {"v": 1, "ok": True, "size": -1, "chunk": C},
        {"v": 1, "ok": True, "size": 1 << 41, "chunk": C},
        {"v": 1, "ok": True, "size": 1.5, "chunk": C},
        {"v": 1, "ok": True, "size": True, "chunk": C},
        {"v": 1, "ok": True, "size": 10, "chunk": MIN_CHUNK - 1},
        {"v": 1, "ok": True, "size": 10, "chunk": MAX_CHUNK + 1},
        {"v": 1, "ok": True, "size": 10},
        {"v": 1, "ok": 1, "size": 10, "chunk": C},  # ok must be a bool
        {"v": 1, "ok": False, "message": "no code"},
        {"v": 1, "ok": False, "error": "", "message": "empty code"},
        {"v": 1, "ok": False, "error": "x" * 33, "message": "long code"},
        {"v": 1, "ok": False, "error": "internal", "message": "m" * 1001},
        {"v": 1, "ok": False, "error": "internal"},
        {"v": 0, "ok": True, "size": 10, "chunk": C},
    ],
)
def test_malformed_response_is_refused(message: object) -> None:
    with pytest.raises(ProtocolError):
        decode_response(pack(message))


def test_oversized_response_frame_is_refused() -> None:
    frame = pack({"v": 1, "ok": True, "size": 1, "chunk": C, "pad": b"x" * MAX_RESPONSE_FRAME})
    with pytest.raises(ProtocolError, match="exceeds the cap"):
        decode_response(frame)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_decode_to_a_response_or_protocol_error(frame: bytes) -> None:
    try:
        decode_response(frame)
    except ProtocolError:
        pass


def test_iter_chunks_slices_without_copying() -> None:
    data = bytes(range(256)) * 600  # 153600 bytes: two full chunks and a short one
    chunks = list(iter_chunks(data, C))
    assert [len(c) for c in chunks] == [C, C, len(data) - 2 * C]
    assert b"".join(chunks) == data
    assert list(iter_chunks(b"", C)) == []
    with pytest.raises(ProtocolError):
        list(iter_chunks(data, 1000))


# --- receiver ------------------------------------------------------------------------


def feed(receiver: BlobReceiver, data: bytes, chunk: int = C) -> list[object]:
    events: list[object] = [receiver.receive_frame(encode_header(len(data), chunk))]
    for body in iter_chunks(data, chunk):
        events.append(receiver.receive_frame(bytes(body)))
    return events


def test_receiver_assembles_a_blob() -> None:
    data = bytes(range(256)) * 600
    receiver = BlobReceiver(expected_size_cap=len(data))
    assert receiver.next_frame_cap() == MAX_RESPONSE_FRAME
    events = feed(receiver, data)
    assert events[0] == HeaderReceived(size=len(data), chunk=C)
    assert events[1] == ChunkReceived(received=C, size=len(data))
    assert events[2] == ChunkReceived(received=2 * C, size=len(data))
    assert events[3] == BlobComplete(data=data)
    assert receiver.state is ReceiverState.DONE
    assert receiver.next_frame_cap() == 0


def test_receiver_caps_each_frame_by_what_is_still_owed() -> None:
    receiver = BlobReceiver(expected_size_cap=1 << 20)
    receiver.receive_frame(encode_header(C + 10, C))
    assert receiver.next_frame_cap() == C
    receiver.receive_frame(b"x" * C)
    assert receiver.next_frame_cap() == 10


def test_receiver_empty_blob_completes_at_the_header() -> None:
    receiver = BlobReceiver(expected_size_cap=0)
    assert receiver.receive_frame(encode_header(0, C)) == BlobComplete(data=b"")
    assert receiver.state is ReceiverState.DONE


def test_receiver_accepts_uneven_frames_that_keep_the_promise() -> None:
    # ceil(N / C) frames of at most C bytes each; they need not all be full.
    receiver = BlobReceiver(expected_size_cap=1 << 20)
    receiver.receive_frame(encode_header(2 * C - 2, C))
    receiver.receive_frame(b"a" * (C - 1))
    assert receiver.receive_frame(b"b" * (C - 1)) == BlobComplete(data=b"a" * (C - 1) + b"b" * (C - 1))


def test_receiver_reports_an_error_frame() -> None:
    receiver = BlobReceiver(expected_size_cap=10)
    event = receiver.receive_frame(encode_error("not_found", "gone"))
    assert event == RemoteError(code="not_found", message="gone")
    assert receiver.state is ReceiverState.DONE


def test_receiver_refuses_a_header_above_the_cap_before_any_data() -> None:
    receiver = BlobReceiver(expected_size_cap=C)
    with pytest.raises(OversizedBlob) as info:
        receiver.receive_frame(encode_header(C + 1, C))
    assert (info.value.size, info.value.cap) == (C + 1, C)
    assert isinstance(info.value, ProtocolError)
    assert receiver.state is ReceiverState.FAILED


def test_receiver_refuses_a_frame_longer_than_the_chunk() -> None:
    receiver = BlobReceiver(expected_size_cap=1 << 20)
    receiver.receive_frame(encode_header(3 * C, C))
    with pytest.raises(ProtocolError, match="exceeds the announced chunk"):
        receiver.receive_frame(b"x" * (C + 1))
    assert receiver.state is ReceiverState.FAILED


def test_receiver_refuses_more_bytes_than_announced() -> None:
    receiver = BlobReceiver(expected_size_cap=1 << 20)
    receiver.receive_frame(encode_header(100, C))
    with pytest.raises(ProtocolError, match="more than the announced"):
        receiver.receive_frame(b"x" * 101)


def test_receiver_refuses_short_frames_as_soon_as_the_promise_breaks() -> None:
    # 2 frames announced for C + 1 bytes; a first frame of 1 byte leaves C bytes for one
    # frame (fine), a first frame of 0 bytes would leave C + 1 for one frame (impossible).
    receiver = BlobReceiver(expected_size_cap=1 << 20)
    receiver.receive_frame(encode_header(C + 1, C))
    with pytest.raises(ProtocolError, match="short frames"):
        receiver.receive_frame(b"")
    receiver = BlobReceiver(expected_size_cap=1 << 20)
    receiver.receive_frame(encode_header(2 * C, C))
    with pytest.raises(ProtocolError, match="short frames"):
        receiver.receive_frame(b"x" * (C - 1))


def test_receiver_refuses_frames_after_the_end() -> None:
    receiver = BlobReceiver(expected_size_cap=10)
    feed(receiver, b"0123456789")
    with pytest.raises(ProtocolError, match="too many frames"):
        receiver.receive_frame(b"extra")
    receiver = BlobReceiver(expected_size_cap=10)
    receiver.receive_frame(encode_error("busy", "later"))
    with pytest.raises(ProtocolError):
        receiver.receive_frame(encode_header(1, C))


def test_receiver_stays_failed() -> None:
    receiver = BlobReceiver(expected_size_cap=10)
    with pytest.raises(ProtocolError):
        receiver.receive_frame(b"\xc1")
    assert receiver.state is ReceiverState.FAILED
    with pytest.raises(ProtocolError):
        receiver.receive_frame(encode_header(1, C))


def test_receiver_refuses_data_where_the_header_belongs() -> None:
    receiver = BlobReceiver(expected_size_cap=1 << 20)
    with pytest.raises(ProtocolError):
        receiver.receive_frame(b"\x00" * 100)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=2 * C), max_size=4), st.integers(0, 3 * C))
def test_receiver_never_fails_with_anything_but_protocol_error(frames: list[bytes], size: int) -> None:
    receiver = BlobReceiver(expected_size_cap=2 * C)
    try:
        receiver.receive_frame(encode_header(size, C))
        for frame in frames:
            event = receiver.receive_frame(frame)
            if isinstance(event, BlobComplete):
                assert len(event.data) == size
    except ProtocolError:
        pass
