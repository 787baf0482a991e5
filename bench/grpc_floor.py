"""Transport ceiling for context: raw gRPC client streaming of 1 MiB chunks on loopback.

Usage: ``.venv/bin/python -m bench.grpc_floor [--mib 256]``

A trivial aio servicer (it only counts bytes) receives ``--mib`` pre-built 1 MiB chunk
messages, in the same process, with fedprompt's server and channel options. No CRC,
hashing, file writes or interceptors of the coordinator: what this prints is the most an
upload can reach on this machine at this moment (run it beside bench/upload_1gb.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import AsyncIterator

import grpc

from fedprompt.server import create_channel, start_server
from fedprompt.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc

MIB = 1024 * 1024


class _CountingServicer(coordinator_pb2_grpc.CoordinatorServicer):
    async def UploadUpdate(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[coordinator_pb2.UploadUpdateRequest],
        context: grpc.aio.ServicerContext[
            coordinator_pb2.UploadUpdateRequest, coordinator_pb2.UploadUpdateResponse
        ],
    ) -> coordinator_pb2.UploadUpdateResponse:
        n = 0
        async for message in request_iterator:
            n += len(message.chunk.data)
        return coordinator_pb2.UploadUpdateResponse(received_bytes=n)


async def _run(mib: int, repeats: int) -> list[float]:
    handle = await start_server(
        register=lambda s: coordinator_pb2_grpc.add_CoordinatorServicer_to_server(
            _CountingServicer(), s
        ),
        service_names=["fedprompt.v1.Coordinator"],
        address="127.0.0.1:0",
    )
    data = os.urandom(MIB)
    messages = [
        coordinator_pb2.UploadUpdateRequest(chunk=common_pb2.Chunk(seq=i, data=data))
        for i in range(mib)
    ]
    rates = []
    async with create_channel(f"127.0.0.1:{handle.port}") as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        for _ in range(repeats):

            async def requests() -> AsyncIterator[coordinator_pb2.UploadUpdateRequest]:
                for m in messages:
                    yield m

            t0 = time.perf_counter()
            await stub.UploadUpdate(requests())  # type: ignore[arg-type]
            rates.append(mib * MIB / (time.perf_counter() - t0) / 1e6)
    await handle.stop(0)
    return rates


def main() -> int:
    """Run the bench and print its figures."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    rates = asyncio.run(_run(args.mib, args.repeats))
    print(f"raw gRPC client streaming, {args.mib} x 1 MiB, same process: "
          f"{max(rates):.0f} MB/s best, runs {[round(r) for r in rates]}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
