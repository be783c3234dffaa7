"""Updates that point against the checker's own: rejected before the loss vote.

Peers of one swarm train the same model from the same version on data of one task, so
their updates share a descent direction: the demo model's honest updates have a cosine
of 0.75 on average with each other in a round, dense, and 0.39-0.50 at most compressed
to 1.5 % (`benchmarks/similarity.py`). A sign-flipped update (``--fault sign-flip``, and what
``--fault collude`` sends) has about the negative of that with the checker's own.

The loss vote (the held-out loss with the update at its merge weight, and against its
negation) did not always catch those: in a real-peer run (`benchmarks/attacks_real.py`,
4 colluders against 3 honest peers from round 0) two honest checkers accepted two
colluders' flipped updates in round 1, whose cosines with the checkers' own were -0.31
to -0.43 (the honest updates had +0.40 to +0.44 with each other). The colluders gained
standing, checked from then on, and rejected every honest update: 5 of 18 merged, 2.44x
the all-honest loss. The direction does not depend on the merge weight or on how few
held-out batches a checker has.

A checker's judgement, like near-copies (:mod:`.copies`): cosines of different machines
may differ in the last bits; the decision only counts votes. The threshold leaves room
for honest peers whose data differ (their updates are less aligned, rarely opposed);
an update that really opposes a checker's own descent would raise its held-out loss
anyway, given enough weight.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from swarmtrain.peer.round.copies import cosine, flat

AGAINST_OWN_COSINE = -0.2

Update = Mapping[str, Tensor]


def against_own(updates: Mapping[bytes, Update], own: Update, *,
                threshold: float = AGAINST_OWN_COSINE) -> dict[bytes, str]:
    """Digest -> why, for each of ``updates`` whose cosine with ``own`` (this checker's
    update of the same round, on the same version) is below ``threshold``."""
    mine = flat(own)
    found: dict[bytes, str] = {}
    for digest in sorted(updates):
        if (c := cosine(flat(updates[digest]), mine)) < threshold:
            found[digest] = f"points against this checker's update (cosine {c:.2f})"
    return found
