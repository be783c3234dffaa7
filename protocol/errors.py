"""Typed errors of the sans-IO protocol layer."""

from __future__ import annotations


class ProtocolError(ValueError):
    """Bytes from a peer do not form a valid message of this protocol.

    Raised for every malformed, truncated, oversized or hostile payload, so a caller can
    reject the sender's update with one ``except ProtocolError`` and never sees a
    library-internal exception. The message says which field is wrong and what the
    accepted range is.
    """
