"""``fedprompt shard-silos``: lay out silos and their certificates as one shard per pod.

The silo chart's simulation mode (``k8s/fedprompt-silo``, ``simulation.enabled``) runs a
StatefulSet whose pod *i* hosts every silo of ``shard-<i>`` in one process
(``python -m fedprompt_client_agent.host --silo-root .../silos --tls-dir .../certs``).
This command writes those shards from a folder of silo folders (``fedprompt-make-silos
--out``) and a folder of certificates (``fedprompt certs --out``)::

    <out>/shard-<i>/silos/<client-id>/   a copy of the silo folder (the id is its name)
    <out>/shard-<i>/certs/ca.crt         the federation CA's certificate
    <out>/shard-<i>/certs/<client-id>.crt, .key   of this shard's silos only (keys 0600)
    <out>/shards.json                    which silos each shard holds

Silos are sorted by name and split into contiguous, balanced shards (sizes differ by at
most one), none larger than ``--per-pod``. The CA's key is never copied. Everything is
checked before anything is written: every silo folder holds a training file, every id is
a valid client id, every silo has its certificate and key, the certificate names the silo
(subject CN), was issued by the folder's CA and belongs to the key; the silos fit the pods
(``--replicas``) without leaving one empty; ``--out`` does not exist. The shards are
written to a hidden folder beside ``--out`` and renamed at the end, so a failure leaves
nothing behind.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from fedprompt_cli.certs import CertError, check_silo_id, subject_common_name

__all__ = [
    "CA_CERT",
    "MANIFEST",
    "ShardError",
    "ShardPlan",
    "check_certs",
    "find_silos",
    "plan_shards",
    "shard_name",
    "write_shards",
]

logger = logging.getLogger(__name__)

#: The CA certificate every shard carries (``fedprompt certs`` writes it under this name).
CA_CERT = "ca.crt"
#: The file beside the shards that lists each shard's silos.
MANIFEST = "shards.json"
#: Problems named one by one in an error message; the rest are counted.
LISTED = 5


class ShardError(ValueError):
    """The silos or certificates cannot be sharded as asked (nothing was written)."""


@dataclass(frozen=True)
class ShardPlan:
    """Which silos each pod hosts.

    Attributes
    ----------
    per_pod : int
        The most silos a pod may host (``--per-pod``).
    shards : tuple of tuple of str
        The client ids of shard 0, 1, ... (pod ordinal = shard index).
    """

    per_pod: int
    shards: tuple[tuple[str, ...], ...]

    @property
    def replicas(self) -> int:
        """Pods of the StatefulSet: one per shard (``simulation.replicas``)."""
        return len(self.shards)

    @property
    def largest(self) -> int:
        """Silos of the fullest shard (``simulation.clientsPerPod``)."""
        return max(len(s) for s in self.shards)

    @property
    def silos(self) -> int:
        """Silos over all shards."""
        return sum(len(s) for s in self.shards)

    def manifest(self) -> dict[str, object]:
        """The JSON written to ``shards.json``."""
        return {
            "replicas": self.replicas,
            "per_pod": self.per_pod,
            "clients_per_pod": self.largest,
            "silos": self.silos,
            "shards": {shard_name(i): list(ids) for i, ids in enumerate(self.shards)},
        }


def shard_name(index: int) -> str:
    """The folder of pod ordinal ``index`` (the chart mounts ``shard-$(POD_INDEX)``)."""
    return f"shard-{index}"


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:LISTED])
    return shown if len(names) <= LISTED else f"{shown} and {len(names) - LISTED} more"


def find_silos(root: Path) -> list[Path]:
    """The silo folders under ``root``, sorted by name, as the host finds them.

    A silo folder is what ``fedprompt_client_agent.host --silo-root`` hosts
    (:func:`fedprompt_client_agent.data.silo_files.silo_folders_below`): a sub-folder, not
    hidden, with a training file.

    Raises
    ------
    ShardError
        If ``root`` is not a folder, holds no silo folder, holds a folder without a
        training file (the host would silently leave a half-written silo out), or a folder
        whose name is not a valid silo id.
    """
    # imported here: the other commands of the CLI need none of the client agent
    from fedprompt_client_agent.data.silo_files import TRAIN_FILES, silo_folders_below

    if not root.is_dir():
        what = "not a folder" if root.exists() else "does not exist"
        raise ShardError(f"--silos {root}: {what} (fedprompt-make-silos --out writes one)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ShardError(f"--silos {root} holds no silo folder (one sub-folder per silo)")
    silos = silo_folders_below(root)
    empty = [p.name for p in folders if p not in silos]
    if empty:
        raise ShardError(
            f"{len(empty)} folder(s) under {root} hold no {', '.join(TRAIN_FILES)}: "
            f"{_listed(empty)}; complete or remove them"
        )
    bad: list[str] = []
    for folder in silos:
        try:
            check_silo_id(folder.name)
        except CertError as exc:
            bad.append(str(exc))
    if bad:
        raise ShardError(
            f"{len(bad)} silo folder name(s) cannot be client ids: {_listed(bad)}; rename them"
        )
    return silos


def plan_shards(ids: Sequence[str], *, per_pod: int, replicas: int | None = None) -> ShardPlan:
    """Split sorted client ids into balanced, contiguous shards of at most ``per_pod``.

    Parameters
    ----------
    ids : sequence of str
        The client ids, in the order the shards take them.
    per_pod : int
        The most silos one pod may host.
    replicas : int, optional
        The pods; default: the fewest that hold every silo.

    Raises
    ------
    ShardError
        If ``per_pod`` or ``replicas`` is below 1, there is no silo, the silos do not fit
        ``replicas`` pods of ``per_pod``, or fewer silos than pods would leave a pod empty.
    """
    if per_pod < 1:
        raise ShardError(f"--per-pod must be at least 1, got {per_pod}")
    if replicas is not None and replicas < 1:
        raise ShardError(f"--replicas must be at least 1, got {replicas}")
    count = len(ids)
    if count == 0:
        raise ShardError("no silo to shard")
    needed = math.ceil(count / per_pod)
    pods = needed if replicas is None else replicas
    if pods < needed:
        raise ShardError(
            f"{count} silos do not fit {pods} pod(s) of {per_pod} ({pods * per_pod} places): "
            f"pass --replicas {needed} or --per-pod {math.ceil(count / pods)}"
        )
    if pods > count:
        raise ShardError(
            f"{count} silos for {pods} pods would leave {pods - count} pod(s) without a silo: "
            f"pass --replicas {needed} (at most {count})"
        )
    base, extra = divmod(count, pods)
    shards: list[tuple[str, ...]] = []
    start = 0
    for index in range(pods):
        size = base + (1 if index < extra else 0)
        shards.append(tuple(ids[start : start + size]))
        start += size
    return ShardPlan(per_pod=per_pod, shards=tuple(shards))


def _load_ca(certs: Path) -> x509.Certificate:
    if not certs.is_dir():
        what = "not a folder" if certs.exists() else "does not exist"
        raise ShardError(f"--certs {certs}: {what} (fedprompt certs --out writes one)")
    path = certs / CA_CERT
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise ShardError(
            f"{path} is missing: --certs must be the folder of `fedprompt certs`"
        ) from None
    except (OSError, ValueError) as exc:
        raise ShardError(f"{path} is not a PEM certificate: {exc}") from None


def _cert_problem(certs: Path, silo: str, ca: x509.Certificate) -> str | None:
    """What is wrong with one silo's certificate and key in ``certs``; None: nothing."""
    crt, key_path = certs / f"{silo}.crt", certs / f"{silo}.key"
    missing = [p.name for p in (crt, key_path) if not p.is_file()]
    if missing:
        return f"{silo}: no {' nor '.join(missing)}"
    try:
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        name = subject_common_name(crt)
    except (OSError, ValueError, TypeError, CertError) as exc:
        return f"{silo}: unreadable certificate or key ({exc})"
    if name != silo:
        return f"{silo}: {crt.name} names {name!r}"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return f"{silo}: {crt.name} was not issued by {CA_CERT} (another federation's CA?)"
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    pem = serialization.Encoding.PEM
    if key.public_key().public_bytes(pem, spki) != cert.public_key().public_bytes(pem, spki):
        return f"{silo}: {key_path.name} is not the key of {crt.name}"
    return None


def check_certs(certs: Path, ids: Sequence[str]) -> None:
    """Refuse unless every silo has its certificate and key, issued by ``certs/ca.crt``.

    Raises
    ------
    ShardError
        Naming the missing CA certificate, or the silos whose certificate or key is
        missing or unreadable, names another id, comes from another CA, or whose key is
        not the certificate's.
    """
    ca = _load_ca(certs)
    problems = [p for silo in ids if (p := _cert_problem(certs, silo, ca)) is not None]
    if problems:
        raise ShardError(
            f"{len(problems)} silo(s) lack a valid certificate in {certs}: {_listed(problems)}; "
            "issue them with `fedprompt certs --out <certs> --silo <id>` (same CA folder)"
        )


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _copy_private(src: Path, dst: Path) -> None:
    """Copy a private key; the copy is readable by its owner only."""
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(src.read_bytes())


def _write_shard(root: Path, ids: Sequence[str], *, silos: Path, certs: Path) -> None:
    silo_dir, cert_dir = root / "silos", root / "certs"
    silo_dir.mkdir(parents=True)
    cert_dir.mkdir()
    shutil.copyfile(certs / CA_CERT, cert_dir / CA_CERT)
    for silo in ids:
        shutil.copytree(silos / silo, silo_dir / silo)
        shutil.copyfile(certs / f"{silo}.crt", cert_dir / f"{silo}.crt")
        _copy_private(certs / f"{silo}.key", cert_dir / f"{silo}.key")


def write_shards(
    *, silos: Path, certs: Path, out: Path, per_pod: int, replicas: int | None = None
) -> ShardPlan:
    """Check the silos and certificates, then write one shard per pod under ``out``.

    Parameters
    ----------
    silos : Path
        A folder of silo folders (``fedprompt-make-silos --out``).
    certs : Path
        The folder of ``fedprompt certs`` that issued every silo's certificate.
    out : Path
        The new folder of shards; must not exist.
    per_pod : int
        The most silos one pod hosts.
    replicas : int, optional
        The pods; default: the fewest that hold every silo.

    Returns
    -------
    ShardPlan
        The silos of each shard.

    Raises
    ------
    ShardError
        For anything :func:`find_silos`, :func:`plan_shards` or :func:`check_certs`
        refuses, an existing ``out``, an ``out`` inside ``silos`` or ``certs``, or a copy
        that fails midway (nothing is left behind).
    """
    if out.exists() or out.is_symlink():
        raise ShardError(f"--out {out} exists: remove it or name a new folder")
    for name, folder in (("--silos", silos), ("--certs", certs)):
        if folder.is_dir() and _inside(out, folder):
            raise ShardError(f"--out {out} is inside {name} {folder}: name a folder elsewhere")
    ids = [p.name for p in find_silos(silos)]
    plan = plan_shards(ids, per_pod=per_pod, replicas=replicas)
    check_certs(certs, ids)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    done = False
    try:
        for index, members in enumerate(plan.shards):
            _write_shard(staging / shard_name(index), members, silos=silos, certs=certs)
        (staging / MANIFEST).write_text(json.dumps(plan.manifest(), indent=2) + "\n")
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the shards from a copy as another uid
        staging.rename(out)
        done = True
    except shutil.Error as exc:  # copytree's errors, one (source, copy, why) per file
        failed = [f"{source}: {why}" for source, _copy, why in exc.args[0]]
        raise ShardError(f"copying failed, nothing was written: {_listed(failed)}") from None
    except OSError as exc:
        raise ShardError(f"writing {out} failed, nothing was written: {exc}") from None
    finally:
        if not done:
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("wrote %d shards of %d silos to %s", plan.replicas, plan.silos, out)
    return plan
