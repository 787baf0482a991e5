"""Durable tensor files of the federation model, one folder per completed round.

A round's folder is written under a temporary name, every file fsynced, then renamed into
place in one atomic step, so a crash leaves either the whole folder or none of it.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from fedprompt.codec import decode_tensors, encode_tensors
from fedprompt.files import fsync_dir
from fedprompt_coordinator.domain import FederationModel

_ROUND_DIR = re.compile(r"^round-(\d{6})$")


class ModelStore:
    """Reads and writes :class:`FederationModel` snapshots under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)

    def _dir(self, round_id: int) -> Path:
        return self.root / f"round-{round_id:06d}"

    def save(self, round_id: int, model: FederationModel) -> Path:
        """Persist ``model`` as the state after ``round_id`` (0 = initial model)."""
        final = self._dir(round_id)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-round-{round_id:06d}-", dir=self.root))
        files = {
            "global.safetensors": model.global_tensors,
            "template.safetensors": model.cluster_template,
        }
        files.update({f"cluster-{c}.safetensors": t for c, t in model.cluster_tensors.items()})
        for name, tensors in files.items():
            with open(tmp / name, "wb") as fh:
                fh.write(encode_tensors(tensors))
                fh.flush()
                os.fsync(fh.fileno())
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(self.root)
        return final

    def load(self, round_id: int) -> FederationModel:
        """Load the model saved after ``round_id``.

        Raises
        ------
        FileNotFoundError
            When no complete snapshot of that round exists.
        """
        folder = self._dir(round_id)
        if not folder.is_dir():
            raise FileNotFoundError(f"no model snapshot for round {round_id} in {self.root}")

        def read(path: Path) -> dict[str, np.ndarray]:
            return {k: v.copy() for k, v in decode_tensors(path.read_bytes()).items()}

        clusters = {
            int(p.stem.split("-", 1)[1]): read(p)
            for p in sorted(folder.glob("cluster-*.safetensors"))
        }
        return FederationModel(
            global_tensors=read(folder / "global.safetensors"),
            cluster_tensors=clusters,
            cluster_template=read(folder / "template.safetensors"),
        )

    def rounds(self) -> list[int]:
        """Rounds with a complete snapshot, ascending."""
        out = []
        for p in self.root.iterdir():
            m = _ROUND_DIR.match(p.name)
            if m and p.is_dir():
                out.append(int(m.group(1)))
        return sorted(out)

    def prune(self, *, keep_from: int) -> None:
        """Delete snapshots of rounds before ``keep_from``, except the initial model (round 0)."""
        for r in self.rounds():
            if 0 < r < keep_from:
                shutil.rmtree(self._dir(r), ignore_errors=True)
