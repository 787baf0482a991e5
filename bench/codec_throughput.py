"""Codec throughput: encode plus decode of fp32 tensors (target: >= 1 GB/s).

Usage: ``.venv/bin/python -m bench.codec_throughput [--mib 256] [--repeats 5]``

Encodes a set of fp32 tensors to safetensors bytes and decodes them again (decode is
zero-copy; the bench touches one value per tensor so the views are real), and reports
payload bytes / (encode + decode seconds), best and median over the repeats. It also
times the safetensors library's own ``serialize``/``deserialize`` for reference.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import safetensors

from fedprompt.codec import decode_tensors, encode_tensors


def _time(fn: object, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    """Run the bench and print its figures."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mib", type=int, default=256, help="total fp32 payload in MiB")
    p.add_argument("--tensors", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    total = args.mib * 1024**2
    per = total // args.tensors // 4
    rng = np.random.default_rng(0)
    tensors = {f"t{i}": rng.standard_normal(per, dtype=np.float32) for i in range(args.tensors)}
    nbytes = sum(t.nbytes for t in tensors.values())

    payload = encode_tensors(tensors)

    def decode() -> None:
        out = decode_tensors(payload)
        assert all(float(v[-1]) == float(tensors[k][-1]) for k, v in out.items())

    enc = _time(lambda: encode_tensors(tensors), args.repeats)
    dec = _time(decode, args.repeats)
    both = [e + d for e, d in zip(enc, dec, strict=True)]

    specs = {
        k: safetensors.TensorSpec(
            dtype="float32", shape=v.shape, data_ptr=v.ctypes.data, data_len=v.nbytes
        )
        for k, v in tensors.items()
    }
    ref_enc = _time(lambda: safetensors.serialize(specs), args.repeats)
    ref_dec = _time(lambda: safetensors.deserialize(payload), args.repeats)  # type: ignore[no-untyped-call]

    def gbs(seconds: list[float], f: object = min) -> float:
        return nbytes / f(seconds) / 1e9  # type: ignore[operator]

    print(
        f"payload: {nbytes / 1024**2:.0f} MiB fp32 in {args.tensors} tensors, {args.repeats} repeats"
    )
    print(
        f"fedprompt encode        : {gbs(enc):7.2f} GB/s best, {gbs(enc, statistics.median):7.2f} median"
    )
    print(
        f"fedprompt decode        : {gbs(dec):7.2f} GB/s best, {gbs(dec, statistics.median):7.2f} median"
    )
    print(
        f"fedprompt encode+decode : {gbs(both):7.2f} GB/s best, {gbs(both, statistics.median):7.2f} median  (target >= 1 GB/s)"
    )
    print(
        f"safetensors lib encode+decode (reference): {nbytes / (min(ref_enc) + min(ref_dec)) / 1e9:.2f} GB/s best"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
