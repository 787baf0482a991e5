"""X25519 key agreement, HKDF-SHA256 derivation and ChaCha20-Poly1305 sealing.

Per round each member holds two X25519 key pairs: ``c`` (encrypts the shares it sends)
and ``s`` (agrees the pairwise mask seeds). A pair's secret is derived as
``HKDF-SHA256(X25519(sk_u, pk_v), info="fedprompt-secagg-<purpose>|round|group|min|max")``
with ``purpose`` ``mask`` or ``enc``, so both ends derive the same key.
"""

from __future__ import annotations

import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedprompt.secagg.errors import SecAggError

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
MASK_PURPOSE = "mask"
ENC_PURPOSE = "enc"


def generate_private() -> X25519PrivateKey:
    """Return a fresh X25519 private key."""
    return X25519PrivateKey.generate()


def private_bytes(key: X25519PrivateKey) -> bytes:
    """Return the raw 32 bytes of a private key (the secret that is Shamir-shared)."""
    return key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


def public_bytes(key: X25519PrivateKey) -> bytes:
    """Return the raw 32-byte public key of a private key."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_private(raw: bytes) -> X25519PrivateKey:
    """Load a raw 32-byte private key."""
    if len(raw) != KEY_BYTES:
        raise SecAggError(f"an X25519 private key is {KEY_BYTES} bytes")
    return X25519PrivateKey.from_private_bytes(raw)


def check_public(raw: bytes) -> X25519PublicKey:
    """Load a raw 32-byte public key.

    Raises
    ------
    SecAggError
        If it is not 32 bytes.
    """
    if not isinstance(raw, bytes) or len(raw) != KEY_BYTES:
        raise SecAggError(f"an X25519 public key must be {KEY_BYTES} bytes")
    return X25519PublicKey.from_public_bytes(raw)


def usable_public(raw: bytes) -> bool:
    """Return whether ``raw`` is a public key an agreement can use (not of low order).

    A low-order key makes every agreement with it fail; the server refuses such keys so
    that one member cannot make its neighbours' key sharing fail.
    """
    try:
        generate_private().exchange(check_public(raw))
    except (ValueError, SecAggError):
        return False
    return True


def agreement_info(purpose: str, round_: int, group: str, a: str, b: str) -> bytes:
    """Return the HKDF info string of a pair (order of ``a``/``b`` irrelevant)."""
    low, high = sorted((a, b))
    return f"fedprompt-secagg-{purpose}|{round_}|{group}|{low}|{high}".encode()


def agree(
    private: X25519PrivateKey,
    peer_public: bytes,
    *,
    purpose: str,
    round_: int,
    group: str,
    a: str,
    b: str,
) -> bytes:
    """Derive the 32-byte pair secret of ``a`` and ``b`` for ``purpose``.

    Raises
    ------
    SecAggError
        If the peer's key is malformed or of low order (all-zero shared secret).
    """
    try:
        shared = private.exchange(check_public(peer_public))
    except ValueError:
        raise SecAggError("X25519 agreement failed (invalid public key)") from None
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_BYTES,
        salt=None,
        info=agreement_info(purpose, round_, group, a, b),
    )
    return hkdf.derive(shared)


def aad(round_: int, group: str, sender: str, recipient: str) -> bytes:
    """Return the associated data of a share ciphertext: ``round|group|sender|recipient``."""
    return f"{round_}|{group}|{sender}|{recipient}".encode()


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """Encrypt with ChaCha20-Poly1305 under a random nonce; return ``nonce || ciphertext``."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    """Decrypt :func:`seal`'s output.

    Raises
    ------
    SecAggError
        If authentication fails (wrong key, sender, recipient, round or tampered bytes).
    """
    if not isinstance(sealed, bytes) or len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise SecAggError("a secagg ciphertext is too short")
    try:
        return ChaCha20Poly1305(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated)
    except InvalidTag:
        raise SecAggError("a secagg ciphertext failed authentication") from None
