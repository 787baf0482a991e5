"""Coverage-guided fuzzing (atheris) of the upload decoding path: protobuf, chunks, safetensors.

Each input is cut into wire messages that go exactly where a coordinator sends them: parsed
as ``UploadUpdateRequest`` protobufs, the header's payload info into a
:class:`~fedprompt.chunking.ChunkAssembler`, chunks into it, the assembled bytes (and, so
that the codec is reached without a valid SHA-256, the raw input too) into
:func:`~fedprompt.codec.decode_tensors`. A coded :class:`~fedprompt.errors.FedPromptError`
or a protobuf ``DecodeError`` is the expected answer to garbage; any other exception is a
finding and stops the run.

    .venv/bin/python tools/fuzz_chunks.py -max_total_time=30      # (make fuzz)
    .venv/bin/python tools/fuzz_chunks.py -runs=5000              # what the test runs

atheris is optional: without it the script says so and exits 0.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

try:
    import atheris
except ImportError:  # pragma: no cover - depends on the machine
    atheris = None

from google.protobuf.message import DecodeError

import fedprompt.chunking
import fedprompt.codec
import fedprompt.transfer
from fedprompt.chunking import ChunkAssembler
from fedprompt.errors import FedPromptError
from fedprompt.v1 import coordinator_pb2

MAX_TOTAL_BYTES = 1 << 20


def split_records(data: bytes) -> list[bytes]:
    """Cut an input into records: a 2-byte little-endian length, then that many bytes."""
    out, i = [], 0
    while i + 2 <= len(data) and len(out) < 16:
        n = int.from_bytes(data[i : i + 2], "little")
        out.append(data[i + 2 : i + 2 + n])
        i += 2 + n
    return out


def join_records(records: list[bytes]) -> bytes:
    """The inverse of :func:`split_records` (used to build the seed corpus)."""
    return b"".join(len(r).to_bytes(2, "little") + r for r in records)


def seed_inputs() -> list[bytes]:
    """Well-formed uploads (one and two chunks) that the fuzzer starts from."""
    import numpy as np

    from fedprompt.codec import encode_tensors
    from fedprompt.transfer import payload_messages

    seeds = []
    for tensors in (
        {"prompt.global": np.arange(12, dtype=np.float32).reshape(3, 4)},
        {"a": np.zeros(3, np.float16), "b": np.ones((2, 2), np.int64)},
    ):
        payload = encode_tensors(tensors)
        header, chunks = payload_messages(payload)
        records = [
            coordinator_pb2.UploadUpdateRequest(
                header=coordinator_pb2.UpdateHeader(client_id="c", round=1, payload=header)
            ).SerializeToString()
        ]
        records += [
            coordinator_pb2.UploadUpdateRequest(chunk=c).SerializeToString() for c in chunks
        ]
        seeds.append(join_records(records))
    return seeds


def one_input(data: bytes) -> None:
    """Feed one fuzzer input through the upload decoding path."""
    assembler: ChunkAssembler | None = None
    for raw in split_records(data):
        try:
            message = coordinator_pb2.UploadUpdateRequest.FromString(raw)
        except DecodeError:
            continue
        try:
            which = message.WhichOneof("message")
            if which == "header":
                info = fedprompt.transfer.payload_info_from_proto(message.header.payload)
                assembler = fedprompt.chunking.ChunkAssembler(info, max_total_bytes=MAX_TOTAL_BYTES)
            elif which == "chunk" and assembler is not None:
                assembler.add(fedprompt.transfer.chunk_from_proto(message.chunk))
                # the codec sees every chunk's bytes too: a checksum does not stop the fuzzer
                fedprompt.codec.decode_tensors(message.chunk.data)
        except FedPromptError:
            if which == "header":
                assembler = None
    if assembler is not None:
        with contextlib.suppress(FedPromptError):
            fedprompt.codec.decode_tensors(assembler.finish())


def instrument_modules(*names: str) -> None:
    """Add coverage instrumentation to every function and method defined in ``names``."""
    import inspect

    for name in names:
        module = sys.modules[name]
        for value in list(vars(module).values()):
            if inspect.isfunction(value) and value.__module__ == name:
                setattr(module, value.__name__, atheris.instrument_func(value))
            elif inspect.isclass(value) and value.__module__ == name:
                for attr, member in list(vars(value).items()):
                    if inspect.isfunction(member):
                        setattr(value, attr, atheris.instrument_func(member))


def main() -> int:
    """Run libFuzzer over :func:`one_input` with the command line's options."""
    if atheris is None:
        print("atheris is not installed: nothing to fuzz (pip install atheris)")
        return 0
    # editable installs load fedprompt through their own finder, which instrument_imports
    # does not see: instrument the decoding modules' functions and methods explicitly
    instrument_modules("fedprompt.chunking", "fedprompt.codec", "fedprompt.transfer")
    atheris.instrument_func(one_input)
    argv = list(sys.argv)
    if not any(not a.startswith("-") for a in argv[1:]):  # no corpus folder given: seed one
        corpus = Path(tempfile.mkdtemp(prefix="fuzz-chunks-"))
        for i, seed in enumerate(seed_inputs()):
            (corpus / f"seed-{i}").write_bytes(seed)
        argv.append(str(corpus))
    atheris.Setup(argv, one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
