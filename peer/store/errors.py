"""Errors of the version store.

Every message names the file or version involved and says what to do about it, because
the person reading it is usually someone resuming a peer after a crash or a full disk.
"""

from __future__ import annotations


class StoreError(RuntimeError):
    """The version store cannot do what was asked; the message names the path and the fix."""


class CommitFormatError(StoreError, ValueError):
    """A commit record (dict from disk or from a peer) has missing fields or wrong types.

    Also a ``ValueError`` so that network code can treat it like any other bad input.
    """
