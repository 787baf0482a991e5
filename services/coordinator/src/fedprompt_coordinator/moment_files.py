"""The server optimizer's moments as files of a round's snapshot, and back.

One safetensors file per level that has moments, beside the model's files in the snapshot
folder (so they are hashed, committed and renamed into place with the model, see
:mod:`~fedprompt_coordinator.model_store`):

* ``optimizer-global.safetensors``: the global level's moments;
* ``optimizer-cluster-<k>.safetensors``: cluster k's moments.

Each file holds ``first.<tensor>`` (m) and ``second.<tensor>`` (v) in float64 for every
tensor of its level that has moments, and names the optimizer that wrote it in its header
metadata (``optimizer``). A snapshot without such files (an earlier version's, a fresh
federation's, or plain sgd's) means no moments.

Reading checks the structure as well as the SHA-256 (which the model store checks first):
a file whose tensors are not pairs of float64 arrays of one shape, hold a non-finite or
(second moment) negative value, or whose optimizer is missing or differs from the other
files' is refused with :class:`MomentFileError`, naming the file; moments are never silently
taken as zero.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fedprompt.codec import DecodedPayload
from fedprompt_coordinator.domain import ServerMoments, TensorMoments

#: The global level's moment file.
GLOBAL_FILE = "optimizer-global.safetensors"
#: Cluster k's moment file (``str.format`` with ``cluster``).
CLUSTER_FILE = "optimizer-cluster-{cluster}.safetensors"
#: Header metadata key naming the optimizer that wrote a file.
OPTIMIZER_META = "optimizer"

_CLUSTER_FILE = re.compile(r"^optimizer-cluster-(-?\d+)\.safetensors$")
_FIRST = "first."
_SECOND = "second."


class MomentFileError(Exception):
    """A moment file of a snapshot is not what the coordinator writes."""


def is_moment_file(name: str) -> bool:
    """Whether a snapshot file name is a moment file."""
    return name == GLOBAL_FILE or _CLUSTER_FILE.match(name) is not None


def moment_files(moments: ServerMoments) -> dict[str, tuple[dict[str, np.ndarray], dict[str, str]]]:
    """File name -> (tensors, header metadata) of every level that has moments."""
    meta = {OPTIMIZER_META: moments.optimizer}
    levels: list[tuple[str, Mapping[str, TensorMoments]]] = [(GLOBAL_FILE, moments.global_moments)]
    levels += [
        (CLUSTER_FILE.format(cluster=c), m) for c, m in sorted(moments.cluster_moments.items())
    ]
    files = {}
    for name, level in levels:
        if not level:
            continue
        if not moments.optimizer:
            raise ValueError("moments without the name of their optimizer cannot be saved")
        tensors: dict[str, np.ndarray] = {}
        for tensor, tm in sorted(level.items()):
            tensors[_FIRST + tensor] = np.asarray(tm.first, dtype=np.float64)
            tensors[_SECOND + tensor] = np.asarray(tm.second, dtype=np.float64)
        files[name] = (tensors, dict(meta))
    return files


def _level_of(path: Path, payload: DecodedPayload) -> dict[str, TensorMoments]:
    """The moments of one file, checked."""
    first = {k[len(_FIRST) :]: v for k, v in payload.tensors.items() if k.startswith(_FIRST)}
    second = {k[len(_SECOND) :]: v for k, v in payload.tensors.items() if k.startswith(_SECOND)}
    stray = sorted(k for k in payload.tensors if not k.startswith((_FIRST, _SECOND)))
    if stray or not payload.tensors:
        what = f"unexpected tensors {stray}" if stray else "no tensors"
        raise MomentFileError(f"moment file {path} holds {what}")
    unpaired = sorted(set(first) ^ set(second))
    if unpaired:
        raise MomentFileError(f"moment file {path} lacks a first or second moment of {unpaired}")
    level = {}
    for name in sorted(first):
        m, v = first[name], second[name]
        if m.dtype != np.float64 or v.dtype != np.float64 or m.shape != v.shape:
            raise MomentFileError(
                f"moment file {path}: the moments of {name} are not two float64 arrays of one "
                f"shape ({m.dtype}{list(m.shape)}, {v.dtype}{list(v.shape)})"
            )
        if not (np.isfinite(m).all() and np.isfinite(v).all()):
            raise MomentFileError(f"moment file {path}: the moments of {name} are not finite")
        if (v < 0).any():
            raise MomentFileError(f"moment file {path}: the second moment of {name} is negative")
        level[name] = TensorMoments(first=m.copy(), second=v.copy())
    return level


def read_moment_files(payloads: Mapping[Path, DecodedPayload]) -> ServerMoments:
    """The moments of a snapshot's moment files (decoded, by path; none: no moments).

    Raises
    ------
    MomentFileError
        When a file is not one this module writes (naming it and what is wrong).
    """
    optimizers = set()
    global_moments: dict[str, TensorMoments] = {}
    clusters: dict[int, dict[str, TensorMoments]] = {}
    for path, payload in sorted(payloads.items()):
        optimizer = payload.metadata.get(OPTIMIZER_META, "")
        if not optimizer:
            raise MomentFileError(f"moment file {path} does not name its optimizer")
        optimizers.add(optimizer)
        level = _level_of(path, payload)
        match = _CLUSTER_FILE.match(path.name)
        if match is not None:
            clusters[int(match.group(1))] = level
        elif path.name == GLOBAL_FILE:
            global_moments = level
        else:
            raise MomentFileError(f"{path} is not a moment file")
    if len(optimizers) > 1:
        raise MomentFileError(
            f"the moment files of {next(iter(payloads)).parent} were written by different "
            f"optimizers: {', '.join(sorted(optimizers))}"
        )
    return ServerMoments(
        optimizer=optimizers.pop() if optimizers else "",
        global_moments=global_moments,
        cluster_moments=clusters,
    )
