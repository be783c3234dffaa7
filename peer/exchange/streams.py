"""Reading and writing length-prefixed frames on a p2pd stream, with caps and timeouts.

Wire format is the one hivemind's ``P2P.send_raw_data`` uses (8-byte big-endian length,
then the body), so either side may be a plain hivemind peer. It is reimplemented here
because hivemind's ``receive_raw_data`` reads whatever length the peer declares (a
hostile peer could make us allocate gigabytes) and p2pd streams have no timeouts of
their own (docs/hivemind.md).
"""

from __future__ import annotations

import asyncio

from swarmtrain.protocol.framing import FRAME_PREFIX_LEN, decode_frame_prefix, encode_frame_prefix


async def read_frame(reader: asyncio.StreamReader, max_length: int, timeout: float | None) -> bytes:
    """One frame body of at most ``max_length`` bytes, read within ``timeout`` seconds.

    Raises ProtocolError for a longer declared length (before reading the body),
    TimeoutError when the peer stalls, IncompleteReadError when the stream ends.
    """
    # asyncio.timeout rather than wait_for: no extra task per frame on the hot path.
    async with asyncio.timeout(timeout):
        prefix = await reader.readexactly(FRAME_PREFIX_LEN)
        length = decode_frame_prefix(prefix, max_length)
        if length == 0:
            return b""
        return await reader.readexactly(length)


async def write_frame(writer: asyncio.StreamWriter, body: bytes | memoryview, timeout: float | None) -> int:
    """Write one frame and wait (at most ``timeout``) until the transport takes it.

    Returns the number of bytes put on the stream, prefix included. Without the drain
    timeout a client that stops reading would pin the sender's buffers forever.
    """
    writer.write(encode_frame_prefix(len(body)))
    if len(body):
        writer.write(body)
    async with asyncio.timeout(timeout):
        await writer.drain()
    return FRAME_PREFIX_LEN + len(body)


def close_quietly(writer: asyncio.StreamWriter) -> None:
    """Close a stream without waiting: the peer learns of it as end of stream.

    Not awaiting ``wait_closed`` is deliberate: on a dead connection it can hang, and
    there is nothing left to flush that the other side still needs.
    """
    if not writer.is_closing():
        writer.close()
