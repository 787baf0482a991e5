"""Secure aggregation (SecAgg+, Bonawitz et al. 2017 / Bell et al. 2020) for one group.

The coordinator (:class:`SecAggServer`) learns the sum of its members' fixed-point encoded
vectors, never an individual vector: each member masks its input with a self mask and
pairwise masks agreed with its neighbours (X25519 + HKDF-SHA256, ChaCha20 keystreams),
and Shamir-shares its mask secrets among its neighbours so the sum of the survivors can be
unmasked when members drop out. Pure library: no gRPC, no torch.

Threat model. The coordinator is honest but curious: it relays every message faithfully
(public keys included; there is no PKI between members, so a coordinator substituting keys
would defeat any protocol of this family) and tries to learn individual inputs from what
it sees. A minority of members below the Shamir threshold may collude with it. Under that
model it learns only the sum over ``U3`` (at least ``min_survivors`` members). Members also
refuse the requests an actively misbehaving coordinator would need for the simple attacks
(both secrets of one member, inconsistent lists, keys or shares outside the neighbourhood,
too few holders), but without the signed consistency round of Bonawitz et al. (which needs
member signing keys) this is defence in depth, not a proof against an active coordinator.
Members may send wrong shares or inputs: wrong shares are detected when spare shares exist
or when a reconstructed key does not match its public key; wrong inputs can only be bounded
after unmasking (the coordinator's norm check).
"""

from fedprompt.secagg.encoding import FixedPoint, Layout, layout_of
from fedprompt.secagg.errors import (
    EncodingRangeError,
    NotEnoughSharesError,
    SecAggError,
    SecAggRefusedError,
)
from fedprompt.secagg.graph import (
    degree_for_dropout,
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
    "degree_for_dropout",
    "harary_neighbours",
    "layout_of",
    "min_survivors",
    "secagg_plus_degree",
    "share_threshold",
]
