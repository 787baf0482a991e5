"""Pseudo-random masks: the ChaCha20 keystream of a 32-byte seed as a uint64 vector.

Each seed (a self-mask seed, or a pair seed of one round and group) expands one mask, so
a fixed all-zero nonce is safe.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from fedprompt.secagg.errors import SecAggError

SEED_BYTES = 32
_NONCE = bytes(16)


def expand(seed: bytes, length: int) -> np.ndarray:
    """Return ``length`` uint64 values of the keystream of ``seed`` (little-endian words).

    Parameters
    ----------
    seed
        32 bytes.
    length
        Number of uint64 values (``>= 0``).
    """
    if len(seed) != SEED_BYTES:
        raise SecAggError(f"a mask seed must be {SEED_BYTES} bytes")
    if length < 0:
        raise SecAggError("a mask length must be non-negative")
    encryptor = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
    stream = encryptor.update(bytes(8 * length))
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64)
