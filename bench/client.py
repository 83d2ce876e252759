"""Load client: unary gRPC calls with pre-serialized requests, bounded in time.

``python -m bench.client --target 127.0.0.1:P --method /pkg.Svc/Method --payloads FILE
--seconds S --concurrency C`` prints ``{"calls": N, "errors": E, "codes": {...}, "seconds": T}``.
Requests are sent as raw bytes (no serialization cost in the loop); the payload file holds
length-prefixed serialized messages, used round robin.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import time
from collections import Counter
from pathlib import Path

import grpc
import uvloop


def read_payloads(path: Path) -> list[bytes]:
    """Length-prefixed (4-byte big-endian) messages from ``path``."""
    data = path.read_bytes()
    out, pos = [], 0
    while pos < len(data):
        (size,) = struct.unpack_from(">I", data, pos)
        out.append(data[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return out


def write_payloads(path: Path, payloads: list[bytes]) -> None:
    """Write messages length-prefixed to ``path``."""
    path.write_bytes(b"".join(struct.pack(">I", len(p)) + p for p in payloads))


async def drive(target: str, method: str, payloads: list[bytes], seconds: float,
                concurrency: int) -> dict[str, object]:
    """Call ``method`` from ``concurrency`` tasks until ``seconds`` have passed."""
    codes: Counter[str] = Counter()
    calls = 0
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        await channel.channel_ready()
        deadline = time.monotonic() + seconds
        start = time.monotonic()

        async def worker(offset: int) -> None:
            nonlocal calls
            i = offset
            while time.monotonic() < deadline:
                try:
                    await call(payloads[i % len(payloads)], timeout=5)
                    calls += 1
                except grpc.aio.AioRpcError as exc:
                    codes[exc.code().name] += 1
                i += 1

        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        elapsed = time.monotonic() - start
    return {"calls": calls, "errors": sum(codes.values()), "codes": dict(codes), "seconds": elapsed}


def main() -> None:
    """Parse flags, drive load, print the JSON result."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--payloads", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    result = uvloop.run(drive(args.target, args.method, read_payloads(args.payloads),
                              args.seconds, args.concurrency))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
