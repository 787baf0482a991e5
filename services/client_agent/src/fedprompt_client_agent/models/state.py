"""The state API of every adapted model: named tensor views, validated import, personal files.

Prompt, visual prompt, LoRA and full fine-tuning models all exchange their trainable
state as named float32 numpy arrays and keep it at home as one safetensors file. The
models differ only in which tensors they expose; :class:`TensorStateMixin` owns
everything else once:

- ``shared_state`` / ``load_shared_state``: the travelling tensors (``shared_tensors``: the
  live ones, for a loss term);
- ``local_state`` / ``load_local_state``: the private tensors (may be none; ``local_tensors``:
  the live ones);
- ``personal_state`` / ``load_personal_state``: everything kept at home;
- ``save_personal`` / ``load_personal``: an atomically written safetensors file whose
  metadata carries a format tag (``personal_format``) and the model's sizes.

Incoming tensors are validated before anything is copied (``checked_tensor``): known
key, exact shape, floating dtype, finite values; a rejected mapping changes nothing.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Final

import ml_dtypes
import numpy as np
import safetensors.numpy
import torch

from fedprompt.codec import decode_payload
from fedprompt.errors import InvalidArgumentError
from fedprompt.files import atomic_write
from fedprompt.tensor_names import (
    HEAD_BIAS,
    HEAD_WEIGHT,
    LOCAL_PROMPT_KEYS,
    SHARED_PROMPT_KEYS,
    prompt_key,
)

__all__ = [
    "FLOAT_DTYPES",
    "PromptStateMixin",
    "TensorMap",
    "TensorStateMixin",
    "checked_tensor",
    "export_tensors",
    "import_tensors",
    "preview_keys",
    "read_safetensors",
    "select_views",
]

TensorMap = Mapping[str, np.ndarray]

#: numpy dtypes accepted for incoming tensors (converted to float32 on arrival).
FLOAT_DTYPES: Final = frozenset(
    {np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64), np.dtype(ml_dtypes.bfloat16)}
)
_MAX_KEYS_IN_ERRORS: Final = 8


def checked_tensor(key: str, value: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """Validate one incoming array and return it as a float32 tensor.

    Parameters
    ----------
    key : str
        The tensor's name, for error messages.
    value : numpy.ndarray
        The incoming array.
    shape : tuple of int
        The shape it must have.

    Returns
    -------
    torch.Tensor
        A contiguous float32 CPU tensor owning its memory.

    Raises
    ------
    ValueError
        For a non-floating dtype, another shape or a NaN or infinite value.
    """
    array = np.asarray(value)
    if array.dtype not in FLOAT_DTYPES:
        raise ValueError(f"tensor {key!r} must be floating point, got dtype {array.dtype}")
    if tuple(array.shape) != shape:
        raise ValueError(f"tensor {key!r} has shape {tuple(array.shape)}, expected {shape}")
    as_float = array.astype(np.float32)
    if not np.isfinite(as_float).all():
        raise ValueError(f"tensor {key!r} contains NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(as_float))


def preview_keys(keys: Sequence[str]) -> str:
    """Render a possibly long key list shortly, for error messages.

    Parameters
    ----------
    keys : sequence of str
        The keys.

    Returns
    -------
    str
        The list as Python prints it, cut after eight keys with ``" and N more"``.
    """
    shown = list(keys[:_MAX_KEYS_IN_ERRORS])
    more = len(keys) - len(shown)
    return f"{shown}" + (f" and {more} more" if more > 0 else "")


def select_views(views: Mapping[str, torch.Tensor], keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """Pick the named entries of ``views``, in the order of ``keys``.

    Parameters
    ----------
    views : mapping of str to torch.Tensor
        All tensors of a model by name.
    keys : sequence of str
        The names wanted; those missing from ``views`` (e.g. empty segments) are skipped.

    Returns
    -------
    dict of str to torch.Tensor
        The selection.
    """
    return {key: views[key] for key in keys if key in views}


def export_tensors(views: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Copy tensors to float32 numpy arrays, keeping the key order.

    Parameters
    ----------
    views : mapping of str to torch.Tensor
        The tensors by name.

    Returns
    -------
    dict of str to numpy.ndarray
        float32 copies that own their memory.
    """
    return {
        key: tensor.detach().to("cpu", torch.float32).numpy().copy()
        for key, tensor in views.items()
    }


def import_tensors(targets: Mapping[str, torch.Tensor], tensors: TensorMap, *, what: str) -> None:
    """Validate every incoming tensor first, then copy them all into ``targets``.

    Parameters
    ----------
    targets : mapping of str to torch.Tensor
        The tensors (parameters or views of them) that may be overwritten, by name.
    tensors : mapping of str to numpy.ndarray
        Incoming arrays; a subset of the keys of ``targets``.
    what : str
        What the tensors are (``shared``, ``local``, ``personal``), for error messages.

    Raises
    ------
    ValueError
        On an unknown key or an array rejected by ``checked_tensor``; nothing is
        changed in that case.
    """
    checked: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        target = targets.get(key)
        if target is None:
            raise ValueError(
                f"unknown {what} tensor {key!r}; expected keys among {preview_keys(list(targets))}"
            )
        checked[key] = checked_tensor(key, value, tuple(target.shape))
    with torch.no_grad():
        for key, tensor in checked.items():
            targets[key].copy_(tensor.to(targets[key].device, targets[key].dtype))


def read_safetensors(source: Path, *, what: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file: its arrays and its ``__metadata__``, parsing the header once.

    Parameters
    ----------
    source : Path
        The file.
    what : str
        What the file holds (e.g. ``personal prompt``), for error messages.

    Returns
    -------
    tuple
        ``(arrays, metadata)``; the arrays own their memory, the metadata is empty when the
        file has none.

    Raises
    ------
    ValueError
        ``"<file>: cannot read <what>: ..."`` if the file cannot be read or is not a
        valid safetensors file.
    """
    try:
        decoded = decode_payload(source.read_bytes())
    except OSError as exc:
        raise ValueError(f"{source}: cannot read {what}: {exc}") from exc
    except InvalidArgumentError as exc:
        raise ValueError(
            f"{source}: cannot read {what}: not a valid safetensors file: {exc}"
        ) from exc
    tensors = {key: np.array(value, copy=True) for key, value in decoded.tensors.items()}
    return tensors, decoded.metadata


class TensorStateMixin(abc.ABC):
    """The shared/local/personal state API over named tensor views.

    A model defines which tensors it exposes (``_shared_views``, ``_local_views``,
    ``_personal_views``: name to parameter or view of one, in export order) and the
    sizes written into a personal file (``_personal_metadata``); everything else is
    here. Mix it in before ``torch.nn.Module``.

    Attributes
    ----------
    personal_format : str
        Format tag written into (and checked in) personal files.
    personal_noun : str
        What a personal file holds, for log and error messages.
    personal_label : str or None
        How a format mismatch names the expected file (``"not <label> ('<format>')"``);
        ``None`` names the format alone.
    checks_personal_format : bool
        Whether ``load_personal`` rejects a file with another format tag (a file
        without a tag is always accepted).
    """

    personal_format: ClassVar[str]
    personal_noun: ClassVar[str] = "personal state"
    personal_label: ClassVar[str | None] = None
    checks_personal_format: ClassVar[bool] = True

    @abc.abstractmethod
    def _shared_views(self) -> dict[str, torch.Tensor]:
        """Map each travelling key to the tensor that holds it."""

    @abc.abstractmethod
    def _local_views(self) -> dict[str, torch.Tensor]:
        """Map each private key to the tensor that holds it (may be empty)."""

    @abc.abstractmethod
    def _personal_views(self) -> dict[str, torch.Tensor]:
        """Map each key kept in the personal file to the tensor that holds it."""

    @abc.abstractmethod
    def _personal_metadata(self) -> dict[str, str]:
        """Sizes written into the personal file's metadata, after the format tag."""

    # ----------------------------------------------------------------- state exchange

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Return the shape of every personal tensor, in export order.

        Returns
        -------
        dict of str to tuple of int
            Personal key to shape.
        """
        return {key: tuple(t.shape) for key, t in self._personal_views().items()}

    def shared_tensors(self) -> dict[str, torch.Tensor]:
        """Return the live federated tensors, keyed as ``shared_state``, for a loss term.

        Returns
        -------
        dict of str to torch.Tensor
            The parameters that travel, or views of them (a prompt segment is a row range
            of the prompt table): differentiable, never copies.
        """
        return self._shared_views()

    def local_tensors(self) -> dict[str, torch.Tensor]:
        """Return the live private tensors, keyed as ``local_state`` (empty when none).

        Returns
        -------
        dict of str to torch.Tensor
            The parameters that never leave the silo, or views of them: never copies.
        """
        return self._local_views()

    def shared_state(self) -> dict[str, np.ndarray]:
        """Copy the federated tensors as float32 numpy arrays.

        Returns
        -------
        dict of str to numpy.ndarray
            float32 copies in export order (see the model for the keys and shapes).
        """
        return export_tensors(self._shared_views())

    def load_shared_state(self, tensors: TensorMap) -> None:
        """Overwrite some or all federated tensors (see ``shared_state``).

        Parameters
        ----------
        tensors : mapping of str to numpy.ndarray
            A subset of the keys of ``shared_state``; floating dtypes only.

        Raises
        ------
        ValueError
            On an unknown key, a wrong shape, a non-floating dtype or a
            non-finite value; nothing is changed in that case.
        """
        import_tensors(self._shared_views(), tensors, what="shared")

    def local_state(self) -> dict[str, np.ndarray]:
        """Copy the private tensors (float32); empty when the model has none.

        Returns
        -------
        dict of str to numpy.ndarray
            float32 copies.
        """
        return export_tensors(self._local_views())

    def load_local_state(self, tensors: TensorMap) -> None:
        """Overwrite the private tensors; validated like ``load_shared_state``.

        Parameters
        ----------
        tensors : mapping of str to numpy.ndarray
            A subset of the keys of ``local_state``.

        Raises
        ------
        ValueError
            On an unknown key, a wrong shape, dtype or a non-finite value.
        """
        import_tensors(self._local_views(), tensors, what="local")

    def personal_state(self) -> dict[str, np.ndarray]:
        """Copy everything kept at home (float32).

        Returns
        -------
        dict of str to numpy.ndarray
            float32 copies keyed as ``expected_shapes``.
        """
        return export_tensors(self._personal_views())

    def load_personal_state(self, tensors: TensorMap) -> None:
        """Overwrite the whole personal state; every tensor must be present.

        Parameters
        ----------
        tensors : mapping of str to numpy.ndarray
            Exactly the keys of ``expected_shapes``.

        Raises
        ------
        ValueError
            On a missing or unknown key, a wrong shape, dtype or a non-finite value.
        """
        views = self._personal_views()
        missing = sorted(set(views) - set(tensors))
        if missing:
            raise ValueError(f"personal state is missing {preview_keys(missing)}")
        import_tensors(views, tensors, what="personal")

    def save_personal(self, path: str | Path) -> Path:
        """Write the personal state to one safetensors file, atomically.

        The bytes go to a fsynced temporary file in the same folder that is then
        renamed over ``path``: a crash leaves the old or the new file, never a torn one.

        Parameters
        ----------
        path : str or Path
            Target file; its folder is created if needed.

        Returns
        -------
        Path
            The file written.
        """
        target = Path(path)
        metadata = {"format": self.personal_format, **self._personal_metadata()}
        payload = safetensors.numpy.save(self.personal_state(), metadata=metadata)
        atomic_write(target, payload)
        logging.getLogger(type(self).__module__).debug("saved %s to %s", self.personal_noun, target)
        return target

    def load_personal(self, path: str | Path) -> None:
        """Load a file written by ``save_personal``, validating format, keys and shapes.

        Parameters
        ----------
        path : str or Path
            The safetensors file.

        Raises
        ------
        ValueError
            If the file cannot be read or parsed, was written by another kind of
            model (when ``checks_personal_format``) or does not match this model's
            shapes.
        """
        source = Path(path)
        tensors, metadata = read_safetensors(source, what=self.personal_noun)
        found = metadata.get("format")
        if self.checks_personal_format and found is not None and found != self.personal_format:
            expected = repr(self.personal_format)
            if self.personal_label is not None:
                expected = f"{self.personal_label} ({expected})"
            raise ValueError(f"{source}: a {found!r} file, not {expected}")
        try:
            self.load_personal_state(tensors)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from exc


class PromptStateMixin(TensorStateMixin):
    """The views of a segmented prompt model: its non-empty segments and its linear head.

    ``prompt.global`` and ``prompt.cluster`` travel with the head, ``prompt.local`` stays
    private, and all of them are kept at home (see :mod:`fedprompt.tensor_names`). A model
    says where each segment lives (``_segment_views``) and has a ``head``.
    """

    head: torch.nn.Linear

    @abc.abstractmethod
    def _segment_views(self) -> dict[str, torch.Tensor]:
        """Map each non-empty segment (``global``, ``cluster``, ``local``) to its tensor."""

    def _shared_views(self) -> dict[str, torch.Tensor]:
        """``prompt.global``, ``prompt.cluster`` (non-empty segments) and the head."""
        return select_views(self._personal_views(), SHARED_PROMPT_KEYS)

    def _local_views(self) -> dict[str, torch.Tensor]:
        """``prompt.local``, if that segment is not empty."""
        return select_views(self._personal_views(), LOCAL_PROMPT_KEYS)

    def _personal_views(self) -> dict[str, torch.Tensor]:
        """Every non-empty segment as ``prompt.<segment>``, then ``head.weight``, ``head.bias``."""
        views = {prompt_key(segment): t for segment, t in self._segment_views().items()}
        views[HEAD_WEIGHT] = self.head.weight
        views[HEAD_BIAS] = self.head.bias
        return views
