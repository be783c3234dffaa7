"""A version a peer's user trusts, to replay from (``join --trust-version``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PinnedVersion:
    """A version this peer's user trusts (``join --trust-version VERSION:CHECKSUM``):
    replay may start from it, and its state is the one state downloaded without being
    recomputed. The checksum is part of the pin because a version id names only the
    parent and the accepted updates; the checksum names the bytes."""

    version: str   # hex, 64
    checksum: str  # hex, 64

    @classmethod
    def parse(cls, text: str) -> PinnedVersion:
        version, sep, checksum = text.strip().partition(":")
        if not sep or not all(len(h) == 64 and all(c in "0123456789abcdef" for c in h) for h in (version, checksum)):
            raise ValueError(f"a pinned version is VERSION:CHECKSUM, two 64-character lowercase hex strings (what "
                             f"`swarmtrain log --pin` prints on a peer you trust), got {text!r}")
        return cls(version, checksum)

    def __str__(self) -> str:
        return f"{self.version}:{self.checksum}"
