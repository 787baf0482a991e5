"""docker/compose-certs.sh, the certs one-shot of the mTLS overlay, run on this machine.

The script runs as it does in the compose one-shot, with the real ``fedprompt certs`` of this
environment, into temporary folders that stand for the volumes (owner: this user instead of
the services' uid 10001).
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .conftest import REPO, run

SCRIPT = REPO / "docker/compose-certs.sh"
SILOS = ["clinic-0", "clinic-1"]
IDENTITIES = ["coordinator", "clusterer", "operator", *SILOS]


def certs(tmp: Path, *silos: str) -> tuple[int, str]:
    """Run the script with ``tmp/ca`` as the CA volume and ``tmp/identities/<id>`` as the rest."""
    env = {
        **os.environ,
        "CA_DIR": str(tmp / "ca"),
        "IDENTITIES_DIR": str(tmp / "identities"),
        "TLS_UID": str(os.getuid()),
        "TLS_GID": str(os.getgid()),
        "FEDPROMPT": str(Path(sys.executable).parent / "fedprompt"),
    }
    result = run(["bash", SCRIPT, *silos], env=env)
    return result.returncode, result.stdout + result.stderr


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("compose-certs")
    code, out = certs(tmp, *SILOS)
    assert code == 0, out
    return tmp


def test_the_ca_key_stays_in_the_ca_volume(issued: Path) -> None:
    ca = issued / "ca"
    assert sorted(p.name for p in ca.iterdir()) == ["ca.crt", "ca.key"]
    assert mode(ca) == 0o700 and mode(ca / "ca.key") == 0o600
    found = [p for p in (issued / "identities").rglob("*") if p.name == "ca.key"]
    assert not found


@pytest.mark.parametrize("identity", IDENTITIES)
def test_each_identity_volume_holds_its_own_certificate_key_and_the_ca(
    issued: Path, identity: str
) -> None:
    folder = issued / "identities" / identity
    assert sorted(p.name for p in folder.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]
    assert mode(folder) == 0o500
    assert mode(folder / "tls.key") == 0o400
    assert (folder / "ca.crt").read_bytes() == (issued / "ca/ca.crt").read_bytes()
    cert = load(folder / "tls.crt")
    assert common_name(cert) == identity
    key = serialization.load_pem_private_key((folder / "tls.key").read_bytes(), password=None)
    assert key.public_key() == cert.public_key()  # the key is the certificate's own
    cert.verify_directly_issued_by(load(issued / "ca/ca.crt"))
    server = ExtendedKeyUsageOID.SERVER_AUTH in usages(cert)
    assert server is (identity in {"coordinator", "clusterer"})  # roles of `fedprompt certs`
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usages(cert)


def test_no_scratch_copy_of_any_key_is_left(issued: Path) -> None:
    keys = sorted(str(p.relative_to(issued)) for p in issued.rglob("*.key"))
    assert keys == ["ca/ca.key", *(f"identities/{i}/tls.key" for i in sorted(IDENTITIES))]


def test_a_second_run_keeps_everything(tmp_path: Path) -> None:
    assert certs(tmp_path, *SILOS)[0] == 0
    before = snapshot(tmp_path)
    code, out = certs(tmp_path, *SILOS)
    assert code == 0 and "every identity has its certificate" in out
    assert snapshot(tmp_path) == before


def test_a_lost_identity_is_issued_again_from_the_same_ca(tmp_path: Path) -> None:
    assert certs(tmp_path, *SILOS)[0] == 0
    before = snapshot(tmp_path)
    lost = tmp_path / "identities/clinic-1"
    lost.chmod(0o700)
    (lost / "tls.key").unlink()
    code, out = certs(tmp_path, *SILOS)
    assert code == 0 and "issued clinic-1" in out and "issued clinic-0" not in out
    after = snapshot(tmp_path)
    assert {k for k in after if after[k] != before.get(k)} == {
        "identities/clinic-1/tls.crt",
        "identities/clinic-1/tls.key",
    }
    load(lost / "tls.crt").verify_directly_issued_by(load(tmp_path / "ca/ca.crt"))


def test_a_new_ca_reissues_every_identity(tmp_path: Path) -> None:
    assert certs(tmp_path, *SILOS)[0] == 0
    old = {i: (tmp_path / "identities" / i / "tls.crt").read_bytes() for i in IDENTITIES}
    for f in (tmp_path / "ca").iterdir():
        f.unlink()
    code, out = certs(tmp_path, *SILOS)
    assert code == 0, out
    ca = load(tmp_path / "ca/ca.crt")
    for identity in IDENTITIES:
        path = tmp_path / "identities" / identity / "tls.crt"
        assert path.read_bytes() != old[identity]
        load(path).verify_directly_issued_by(ca)


@pytest.mark.parametrize("silo", ["coordinator", "localhost", "10.0.0.1", "operator"])
def test_a_silo_id_that_names_a_server_writes_nothing(tmp_path: Path, silo: str) -> None:
    code, out = certs(tmp_path, "clinic-0", silo)
    assert code != 0 and ("reserved" in out or "IP address" in out)
    assert not (tmp_path / "identities").exists() and not (tmp_path / "ca").exists()


def test_no_silo_is_a_usage_error(tmp_path: Path) -> None:
    code, out = certs(tmp_path)
    assert code == 2 and "silo ids" in out
