"""``fedprompt certs``: a federation CA and one certificate per role.

Writes PEM files into one folder:

    ca.crt, ca.key                      the federation CA (keep ca.key offline)
    coordinator.crt, coordinator.key    the coordinator: server-auth, and client-auth for
                                        its calls to the clusterer and its health probe
    clusterer.crt, clusterer.key        the clusterer: server-auth, and client-auth for its
                                        own health probe
    operator.crt, operator.key          with ``--operator``: the operator, client-auth only;
                                        the one identity that reads the full GetStatus
    <silo-id>.crt, <silo-id>.key        one per silo: client-auth only

A certificate's subject CN is the identity its holder has in the federation: the
coordinator treats a silo's CN as its client id. Service certificates name ``localhost``,
``127.0.0.1``, ``::1`` and the service's name (``coordinator``/``clusterer``) plus any
``--san``; clients verify the name ``coordinator`` whatever address they dial
(:func:`fedprompt.tls.expected_server_name`). A silo certificate carries only the silo's
id as its SAN and cannot serve TLS, so no silo can pose as the coordinator: silo ids that
name the CA, a service or the operator, ``localhost``, an IP address or any ``--san`` are
refused. An existing CA in the folder is reused, so silos can be added later; existing leaf
certificates are kept unless ``--force``. Private keys are written with mode 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedprompt.client_input import check_client_id
from fedprompt.errors import InvalidArgumentError
from fedprompt.tls import (
    CLUSTERER_IDENTITY,
    COORDINATOR_IDENTITY,
    OPERATOR_IDENTITY,
    RESERVED_IDENTITIES,
)

SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
#: The service certificates: name (CN and DNS SAN) -> extended key usages. Both serve, and
#: both dial: the coordinator calls the clusterer, and each service's container health probe
#: (``fedprompt-healthcheck``, the charts' exec probes) presents the service's own
#: certificate to it. Neither identity gains anything as a client (the clusterer admits only
#: the coordinator; at the coordinator a service certificate sees no silo's record).
SERVICES: dict[str, tuple[x509.ObjectIdentifier, ...]] = {
    COORDINATOR_IDENTITY: (SERVER_AUTH, CLIENT_AUTH),
    CLUSTERER_IDENTITY: (SERVER_AUTH, CLIENT_AUTH),
}
#: Usages of the certificates that only ever dial out: silos and the operator.
CLIENT_ONLY: tuple[x509.ObjectIdentifier, ...] = (CLIENT_AUTH,)
#: Host names a service certificate always carries (probes and loopback runs dial them).
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
#: Client ids a silo may not take: they name the CA, the services, the operator or loopback.
RESERVED_IDS = RESERVED_IDENTITIES | {"localhost"}
DEFAULT_VALID_DAYS = 365


class CertError(ValueError):
    """A certificate cannot be issued (bad silo id, unreadable CA, ...)."""


@dataclass(frozen=True)
class Authority:
    """The federation CA: its key and self-signed certificate."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedprompt federation"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """The CA signs certificates and CRLs; a leaf only signs its TLS handshakes (EC keys)."""
    return x509.KeyUsage(
        digital_signature=not signs_certificates,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def create_authority(*, days: int = DEFAULT_VALID_DAYS * 5) -> Authority:
    """A new self-signed CA (P-256) that may sign leaf certificates only."""
    key = _new_key()
    name = _name("fedprompt federation CA")
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(key=key, cert=cert)


def _san_entries(names: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    seen: set[str] = set()
    for raw in names:
        name = raw.strip()
        if not name or name in seen:
            continue
        seen.add(name)
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def issue(
    authority: Authority,
    common_name: str,
    *,
    sans: Sequence[str],
    usages: Sequence[x509.ObjectIdentifier],
    days: int = DEFAULT_VALID_DAYS,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new key and a CA-signed certificate for ``common_name``.

    Parameters
    ----------
    authority
        The CA that signs.
    common_name
        The holder's identity (subject CN).
    sans
        DNS names and IP addresses of the holder (the subject alternative names).
    usages
        Extended key usages: server-auth for a certificate that may serve TLS, client-auth
        for one that may dial (both for the coordinator).
    days
        Validity.
    """
    if not usages:
        raise CertError(f"the certificate of {common_name!r} needs at least one usage")
    key = _new_key()
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(list(usages)),
            critical=False,
        )
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
            critical=False,
        )
    )
    entries = _san_entries(sans)
    if entries:
        builder = builder.add_extension(x509.SubjectAlternativeName(entries), critical=False)
    return key, builder.sign(authority.key, hashes.SHA256())


def load_or_create_authority(out: Path) -> tuple[Authority, bool]:
    """The CA in ``out`` (ca.crt + ca.key), or a new one written there; (CA, created)."""
    crt, key_path = out / "ca.crt", out / "ca.key"
    if crt.exists() and key_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(crt.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise CertError(f"cannot load the CA in {out}: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertError(f"{key_path} is not an EC private key made by `fedprompt certs`")
        return Authority(key=key, cert=cert), False
    if crt.exists() or key_path.exists():
        raise CertError(f"{out} holds only one of ca.crt and ca.key")
    authority = create_authority()
    crt.write_bytes(authority.cert.public_bytes(serialization.Encoding.PEM))
    _write_private(key_path, _key_pem(authority.key))
    return authority, True


def check_silo_id(silo: str, *, extra_sans: Sequence[str] = ()) -> None:
    """Refuse a silo id that is not a client id or could name a server.

    Raises
    ------
    CertError
        For an id that is not 1-128 letters, digits, '.', '_' or '-'; that names the CA, a
        service or the operator; that is ``localhost`` or an IP address; or that equals one
        of the service certificates' ``--san`` names (case-insensitively, as DNS names
        compare).
    """
    try:
        check_client_id(silo, field="silo id")  # the coordinator's rule for a client id
    except InvalidArgumentError as exc:
        raise CertError(exc.message) from None
    if silo.lower() in RESERVED_IDS:
        raise CertError(
            f"silo id {silo!r} is reserved: it names the CA, a service, the operator or "
            "loopback, and a silo certificate must never name a server"
        )
    try:
        ipaddress.ip_address(silo)
    except ValueError:
        pass
    else:
        raise CertError(f"silo id {silo!r} is an IP address: a silo certificate must not name one")
    if silo.lower() in {san.strip().lower() for san in extra_sans}:
        raise CertError(
            f"silo id {silo!r} is a --san of the service certificates: a silo certificate "
            "must not name a server"
        )


def write_certs(
    out: Path,
    *,
    silos: Sequence[str] = (),
    extra_sans: Sequence[str] = (),
    operator: bool = False,
    force: bool = False,
    days: int = DEFAULT_VALID_DAYS,
) -> list[Path]:
    """Write the CA (if new), the service certificates, one per silo and, if asked, the operator's.

    Returns the files written.

    Raises
    ------
    CertError
        For a silo id :func:`check_silo_id` refuses.
    """
    for silo in silos:
        check_silo_id(silo, extra_sans=extra_sans)
    out.mkdir(parents=True, exist_ok=True)
    authority, created = load_or_create_authority(out)
    written = [out / "ca.crt", out / "ca.key"] if created else []
    wanted: list[tuple[str, list[str], tuple[x509.ObjectIdentifier, ...]]] = [
        (name, [*LOOPBACK_NAMES, name, *extra_sans], usages) for name, usages in SERVICES.items()
    ]
    if operator:
        wanted.append((OPERATOR_IDENTITY, [], CLIENT_ONLY))
    wanted += [(silo, [silo], CLIENT_ONLY) for silo in silos]
    for name, sans, usages in wanted:
        crt, key_path = out / f"{name}.crt", out / f"{name}.key"
        if crt.exists() and key_path.exists() and not force and not created:
            continue
        key, cert = issue(authority, name, sans=sans, usages=usages, days=days)
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_private(key_path, _key_pem(key))
        written += [crt, key_path]
    return written


def subject_common_name(cert_path: Path) -> str:
    """The subject CN of a PEM certificate file (the identity it carries)."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not values:
        raise CertError(f"{cert_path} has no subject common name")
    value = values[0].value
    return value.decode() if isinstance(value, bytes) else value
