"""Messages of the blob exchange protocol (v1), sans-IO.

A peer asks another peer for one blob (an encoded update or a full model state) over a
byte stream. On that stream every message is one *frame*: an 8-byte big-endian length
followed by that many bytes (the framing hivemind's ``P2P.send_raw_data`` writes). This
module turns frames into values and back and never touches a socket, so every hostile
input can be tested in memory.

Conversation::

    client -> server   request frame   msgpack {"v": 1, "op": "get", "kind": K, "id": HEX}
    server -> client   header frame    msgpack {"v": 1, "ok": true, "size": N, "chunk": C}
    server -> client   ceil(N / C) data frames of at most C bytes, N bytes in all
  or
    server -> client   error frame     msgpack {"v": 1, "ok": false, "error": CODE,
                                                "message": TEXT}

Every length is capped *before* anything is read or allocated: the caller reads the
8-byte prefix, asks :func:`decode_frame_prefix` whether that length is acceptable at this
point of the conversation (:meth:`BlobReceiver.next_frame_cap`), and only then reads the
body. Unknown keys in a map are ignored so that v1 can grow optional fields; a different
``"v"`` is refused.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal, Union

import msgpack

from swarmtrain.protocol.errors import ProtocolError

PROTOCOL_VERSION: Final = 1
# The libp2p protocol name a server registers its stream handler under. A future
# incompatible version gets a new name, so old and new peers can serve side by side.
PROTOCOL_NAME: Final = "swarmtrain.blob.v1"

FRAME_PREFIX_LEN: Final = 8  # bytes of the big-endian length before every frame
KiB: Final = 1 << 10
MiB: Final = 1 << 20

MIN_CHUNK: Final = 64 * KiB
MAX_CHUNK: Final = 4 * MiB
DEFAULT_CHUNK: Final = 1 * MiB

# A request is a handful of short fields; anything longer is not a request.
MAX_REQUEST_FRAME: Final = 256
# A header or error frame carries at most a short code and a message of MAX_MESSAGE_CHARS
# characters (up to 4 bytes each in UTF-8), plus keys.
MAX_MESSAGE_CHARS: Final = 1000
MAX_CODE_CHARS: Final = 32
MAX_RESPONSE_FRAME: Final = 8 * KiB
# Largest blob the protocol can describe at all; callers pass a much smaller cap.
MAX_BLOB_SIZE: Final = 1 << 40

BlobKind = Literal["update", "state", "base"]
# "base": a Hugging Face model's base weights file, for joiners with --fetch-base.
BLOB_KINDS: Final[tuple[str, ...]] = ("update", "state", "base")

# Digests are lowercase hex of 16..64 bytes (BLAKE2b-256 gives 64 hex characters). One
# canonical spelling, so a blob has exactly one key in a store.
_DIGEST_HEX = re.compile(r"(?:[0-9a-f]{2}){16,64}")

# Error codes a server sends. A client maps unknown codes to a generic failure, so new
# codes can be added without breaking old clients.
ERR_NOT_FOUND: Final = "not_found"  # no blob of that kind and id here (any more)
ERR_BAD_REQUEST: Final = "bad_request"  # the request frame was malformed
ERR_BUSY: Final = "busy"  # too many streams in flight; try later or elsewhere
ERR_UNAVAILABLE: Final = "unavailable"  # the blob exists but could not be produced now
ERR_INTERNAL: Final = "internal"  # a bug on the serving peer; its log has the traceback


@dataclass(frozen=True, slots=True)
class BlobRequest:
    """A client's request for one blob."""

    kind: BlobKind
    digest_hex: str


@dataclass(frozen=True, slots=True)
class BlobHeader:
    """A server's promise to send ``size`` bytes in data frames of at most ``chunk``."""

    size: int
    chunk: int

    @property
    def frame_count(self) -> int:
        """Number of data frames that follow: ceil(size / chunk), 0 for an empty blob."""
        return -(-self.size // self.chunk)


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """A server's refusal: a short machine-readable code and a human-readable message."""

    code: str
    message: str


Response = Union[BlobHeader, ErrorResponse]


class OversizedBlob(ProtocolError):
    """The server announced a blob larger than the receiver accepts.

    Separate from other protocol errors because it is not malformed input: the caller
    may legitimately raise its cap (e.g. for a model state) and ask again.
    """

    def __init__(self, size: int, cap: int) -> None:
        super().__init__(
            f"peer announced a blob of {size} bytes, more than the cap of {cap} bytes; "
            "raise max_size if a blob that large is expected"
        )
        self.size = size
        self.cap = cap


# --- frame prefix -------------------------------------------------------------------


def encode_frame_prefix(length: int) -> bytes:
    """The 8-byte big-endian length that precedes a frame of ``length`` bytes."""
    if length < 0 or length >= 1 << (8 * FRAME_PREFIX_LEN):
        raise ValueError(f"frame length must be in [0, 2^64), got {length}")
    return length.to_bytes(FRAME_PREFIX_LEN, "big")


def decode_frame_prefix(prefix: bytes, max_length: int) -> int:
    """Length of the frame that follows ``prefix``, refused when above ``max_length``.

    Called before the body is read, so a peer cannot make us buffer a huge frame.
    """
    if len(prefix) != FRAME_PREFIX_LEN:
        raise ProtocolError(f"frame prefix must be {FRAME_PREFIX_LEN} bytes, got {len(prefix)}")
    length = int.from_bytes(prefix, "big")
    if length > max_length:
        raise ProtocolError(f"frame of {length} bytes exceeds the cap of {max_length} bytes here")
    return length


# --- msgpack helpers -----------------------------------------------------------------


def _unpack_map(frame: bytes, max_frame: int, what: str) -> dict[str, Any]:
    """Decode one small msgpack map with every container and string length bounded."""
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"{what} frame must be bytes, got {type(frame).__name__}")
    if len(frame) > max_frame:
        raise ProtocolError(f"{what} frame of {len(frame)} bytes exceeds the cap of {max_frame}")
    try:
        value = msgpack.unpackb(
            frame,
            raw=False,
            strict_map_key=True,
            max_str_len=max_frame,
            max_bin_len=max_frame,
            max_array_len=16,
            max_map_len=16,
            max_ext_len=0,
        )
    # msgpack signals malformed input with ValueError subclasses (ExtraData, FormatError,
    # StackError, invalid UTF-8, non-str map keys under strict_map_key). TypeError is not
    # caught: it would only mean a bug here, and must not pass for a bad peer.
    except (ValueError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"{what} frame is not valid msgpack: {exc}") from exc
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} frame must be a msgpack map, got {type(value).__name__}")
    version = value.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"{what} has protocol version {version!r}, this peer speaks v{PROTOCOL_VERSION}; "
            "upgrade the older peer"
        )
    return value


def _field(message: dict[str, Any], key: str, kind: type, what: str) -> Any:
    """``message[key]`` checked to be exactly of type ``kind`` (bool is not an int)."""
    if key not in message:
        raise ProtocolError(f"{what} lacks the field {key!r}")
    value = message[key]
    if type(value) is not kind:
        raise ProtocolError(f"{what} field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def check_digest_hex(digest_hex: str) -> str:
    """``digest_hex`` if it is lowercase hex of 16 to 64 bytes, else ProtocolError."""
    if not isinstance(digest_hex, str) or _DIGEST_HEX.fullmatch(digest_hex) is None:
        raise ProtocolError(
            f"blob id must be lowercase hex of 32 to 128 characters, got {str(digest_hex)[:80]!r}"
        )
    return digest_hex


def check_kind(kind: str) -> BlobKind:
    """``kind`` if it is a known blob kind, else ProtocolError."""
    if kind not in BLOB_KINDS:
        raise ProtocolError(f"blob kind must be one of {BLOB_KINDS}, got {str(kind)[:40]!r}")
    return kind  # type: ignore[return-value]


def check_chunk(chunk: int) -> int:
    """``chunk`` if it is an allowed data frame size, else ProtocolError."""
    if type(chunk) is not int or not MIN_CHUNK <= chunk <= MAX_CHUNK:
        raise ProtocolError(f"chunk size must be in [{MIN_CHUNK}, {MAX_CHUNK}] bytes, got {chunk!r}")
    return chunk


# --- request -------------------------------------------------------------------------


def encode_request(kind: str, digest_hex: str) -> bytes:
    """The request frame body asking for blob ``digest_hex`` of ``kind``."""
    request = {"v": PROTOCOL_VERSION, "op": "get", "kind": check_kind(kind), "id": check_digest_hex(digest_hex)}
    return msgpack.packb(request)


def decode_request(frame: bytes) -> BlobRequest:
    """Parse a request frame body; ProtocolError on anything but a valid v1 get."""
    message = _unpack_map(frame, MAX_REQUEST_FRAME, "request")
    op = _field(message, "op", str, "request")
    if op != "get":
        raise ProtocolError(f"request op must be 'get', got {op[:40]!r}")
    kind = check_kind(_field(message, "kind", str, "request"))
    digest_hex = check_digest_hex(_field(message, "id", str, "request"))
    return BlobRequest(kind=kind, digest_hex=digest_hex)


# --- response ------------------------------------------------------------------------


def encode_header(size: int, chunk: int = DEFAULT_CHUNK) -> bytes:
    """The header frame body announcing ``size`` bytes in data frames of ``chunk``."""
    if type(size) is not int or not 0 <= size <= MAX_BLOB_SIZE:
        raise ProtocolError(f"blob size must be in [0, {MAX_BLOB_SIZE}], got {size!r}")
    return msgpack.packb({"v": PROTOCOL_VERSION, "ok": True, "size": size, "chunk": check_chunk(chunk)})


def encode_error(code: str, message: str) -> bytes:
    """The error frame body; the message is truncated so the frame stays small."""
    if not isinstance(code, str) or not 0 < len(code) <= MAX_CODE_CHARS:
        raise ProtocolError(f"error code must be 1 to {MAX_CODE_CHARS} characters, got {code!r}")
    return msgpack.packb(
        {"v": PROTOCOL_VERSION, "ok": False, "error": code, "message": str(message)[:MAX_MESSAGE_CHARS]}
    )


def decode_response(frame: bytes) -> Response:
    """Parse a header or error frame body; ProtocolError on anything else."""
    message = _unpack_map(frame, MAX_RESPONSE_FRAME, "response")
    if _field(message, "ok", bool, "response"):
        size = _field(message, "size", int, "header")
        if not 0 <= size <= MAX_BLOB_SIZE:
            raise ProtocolError(f"header size must be in [0, {MAX_BLOB_SIZE}], got {size}")
        chunk = check_chunk(_field(message, "chunk", int, "header"))
        return BlobHeader(size=size, chunk=chunk)
    code = _field(message, "error", str, "error response")
    if not 0 < len(code) <= MAX_CODE_CHARS:
        raise ProtocolError(f"error code must be 1 to {MAX_CODE_CHARS} characters, got {len(code)}")
    text = _field(message, "message", str, "error response")
    if len(text) > MAX_MESSAGE_CHARS:
        raise ProtocolError(f"error message of {len(text)} characters exceeds {MAX_MESSAGE_CHARS}")
    return ErrorResponse(code=code, message=text)


def iter_chunks(data: bytes | memoryview, chunk: int) -> Iterator[memoryview]:
    """The data frame bodies for ``data``: zero-copy slices of at most ``chunk`` bytes."""
    view = memoryview(data).cast("B")
    for offset in range(0, len(view), check_chunk(chunk)):
        yield view[offset : offset + chunk]


# --- receiver state machine ----------------------------------------------------------


class ReceiverState(enum.Enum):
    AWAIT_HEADER = "await_header"
    RECEIVING = "receiving"
    DONE = "done"  # the blob is complete, or the server sent an error frame
    FAILED = "failed"  # a frame broke the protocol; the stream must be dropped


@dataclass(frozen=True, slots=True)
class HeaderReceived:
    """The header arrived and was accepted; ``size`` bytes will follow."""

    size: int
    chunk: int


@dataclass(frozen=True, slots=True)
class ChunkReceived:
    """A data frame arrived; ``received`` of ``size`` bytes are in."""

    received: int
    size: int


@dataclass(frozen=True, slots=True)
class BlobComplete:
    """All bytes arrived. Returned instead of the last ChunkReceived (or instead of
    HeaderReceived for an empty blob)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class RemoteError:
    """The server answered with an error frame."""

    code: str
    message: str


ReceiverEvent = Union[HeaderReceived, ChunkReceived, BlobComplete, RemoteError]


class BlobReceiver:
    """Client side of one response: feed it frame bodies, get events back.

    Checks, frame by frame, that the server keeps its header's promise: at most
    ceil(size / chunk) data frames, none longer than ``chunk``, exactly ``size`` bytes in
    all, and never more than the caller's ``expected_size_cap``. Any violation raises
    ProtocolError (OversizedBlob for a too-large announcement) and moves to FAILED, after
    which every further frame is refused too.
    """

    def __init__(self, expected_size_cap: int) -> None:
        if expected_size_cap < 0:
            raise ValueError(f"expected_size_cap must be >= 0, got {expected_size_cap}")
        self.expected_size_cap = expected_size_cap
        self.state = ReceiverState.AWAIT_HEADER
        self.header: BlobHeader | None = None
        self.received = 0
        self.frames_received = 0
        self._chunks: list[bytes] = []

    def next_frame_cap(self) -> int:
        """Largest acceptable length of the next frame; check the prefix against it."""
        if self.state is ReceiverState.AWAIT_HEADER:
            return MAX_RESPONSE_FRAME
        if self.state is ReceiverState.RECEIVING:
            assert self.header is not None
            return min(self.header.chunk, self.header.size - self.received)
        return 0

    def receive_frame(self, frame: bytes) -> ReceiverEvent:
        """Consume one frame body and return what it meant."""
        if self.state is ReceiverState.AWAIT_HEADER:
            return self._guard(self._on_header, frame)
        if self.state is ReceiverState.RECEIVING:
            return self._guard(self._on_data, frame)
        raise ProtocolError(f"no frame expected after the response ended (state {self.state.value}); "
                            "the peer sent too many frames")

    def _guard(self, step: Callable[[bytes], ReceiverEvent], frame: bytes) -> ReceiverEvent:
        # One place that moves to FAILED, so no half-updated state survives an error.
        try:
            return step(frame)
        except ProtocolError:
            self.state = ReceiverState.FAILED
            self._chunks = []
            raise

    def _on_header(self, frame: bytes) -> ReceiverEvent:
        response = decode_response(frame)
        if isinstance(response, ErrorResponse):
            self.state = ReceiverState.DONE
            return RemoteError(code=response.code, message=response.message)
        if response.size > self.expected_size_cap:
            raise OversizedBlob(response.size, self.expected_size_cap)
        self.header = response
        if response.size == 0:
            self.state = ReceiverState.DONE
            return BlobComplete(data=b"")
        self.state = ReceiverState.RECEIVING
        return HeaderReceived(size=response.size, chunk=response.chunk)

    def _on_data(self, frame: bytes) -> ReceiverEvent:
        header = self.header
        assert header is not None
        n = len(frame)
        if n > header.chunk:
            raise ProtocolError(f"data frame of {n} bytes exceeds the announced chunk of {header.chunk}")
        if self.received + n > header.size:
            raise ProtocolError(
                f"data frames carry more than the announced {header.size} bytes "
                f"({self.received} received, frame of {n})"
            )
        self.frames_received += 1
        self.received += n
        frames_left = header.frame_count - self.frames_received
        # The bytes still owed must fit into the frames still allowed; checking this on
        # every frame catches short or empty frames as soon as they make the promise
        # impossible, not only at the end.
        if header.size - self.received > frames_left * header.chunk:
            raise ProtocolError(
                f"{header.size - self.received} bytes still owed cannot fit into {frames_left} "
                f"more frames of {header.chunk}; the peer sent short frames"
            )
        self._chunks.append(bytes(frame))
        if self.received == header.size:
            self.state = ReceiverState.DONE
            data = b"".join(self._chunks)
            self._chunks = []
            return BlobComplete(data=data)
        return ChunkReceived(received=self.received, size=header.size)
