"""Secure aggregation (SecAgg+, Bonawitz et al. 2017 / Bell et al. 2020) for one group.

The coordinator (:class:`SecAggServer`) learns the sum of its members' fixed-point encoded
vectors, never an individual vector: each member masks its input with a self mask and
pairwise masks agreed with its neighbours (X25519 + HKDF-SHA256, ChaCha20 keystreams),
and Shamir-shares its mask secrets among its neighbours so the sum of the survivors can be
unmasked when members drop out. Pure library: no gRPC, no torch.
"""

from fedprompt.secagg.encoding import FixedPoint, Layout, layout_of
from fedprompt.secagg.errors import (
    EncodingRangeError,
    NotEnoughSharesError,
    SecAggError,
    SecAggRefusedError,
)
from fedprompt.secagg.graph import (
    harary_neighbours,
    min_survivors,
    secagg_plus_degree,
    share_threshold,
)
from fedprompt.secagg.member import SecAggMember
from fedprompt.secagg.messages import GroupSetup, PublicKeys, UnmaskReply, UnmaskRequest
from fedprompt.secagg.server import SecAggServer

__all__ = [
    "EncodingRangeError",
    "FixedPoint",
    "GroupSetup",
    "Layout",
    "NotEnoughSharesError",
    "PublicKeys",
    "SecAggError",
    "SecAggMember",
    "SecAggRefusedError",
    "SecAggServer",
    "UnmaskReply",
    "UnmaskRequest",
    "harary_neighbours",
    "layout_of",
    "min_survivors",
    "secagg_plus_degree",
    "share_threshold",
]
