"""Python clients head to head: mitto-python through ``mitto server`` beside nats-py through a
nats-server started here, on the same machine in the same run.

    python bench/bench.py            # full run (repetitions, medians)
    python bench/bench.py --quick    # seconds: proves it works, figures mean little

Scenarios: pub->sub (one publisher, one subscriber, one process; messages per second seen by
the subscriber; the mitto subscription uses the BLOCK slow-consumer policy, so that nothing is
dropped) and request/reply (a responder and a requester, sequential round trips; p50 /
p99 and calls per second). Needs nats-py (``pip install -e '.[bench]'``) and the
``nats-server`` binary; the mitto broker comes from ``--mitto-bin`` / ``MITTO_BIN`` or is built
in release mode from this workspace."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nats
import nats.errors

import mitto

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def mitto_server(binary: str, extra: list[str]) -> Iterator[str]:
    p = subprocess.Popen(
        [binary, "server", "--listen", "tcp://127.0.0.1:0", "--monitor", "", "--log", "warn", *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout is not None
        for line in p.stdout:
            if line.startswith("mitto broker listening on "):
                yield line.split()[-1]
                break
        else:
            raise RuntimeError("mitto server exited")
    finally:
        p.terminate()
        p.wait(10)


@contextmanager
def nats_server(binary: str) -> Iterator[str]:
    port = free_port()
    p = subprocess.Popen([binary, "-a", "127.0.0.1", "-p", str(port)], stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.02)
        yield f"nats://127.0.0.1:{port}"
    finally:
        p.terminate()
        p.wait(10)


# ---- pub -> sub


async def mitto_pubsub(url: str, n: int, size: int) -> float:
    pub = await mitto.connect(url)
    sub_conn = await mitto.connect(url)
    # BLOCK: a subscriber that falls behind pushes back on the publisher (in one process the
    # publishing loop runs ahead); the default policy would drop, counted, and the run would
    # never see its last message.
    sub = await sub_conn.subscribe("bench.ps", policy=mitto.Policy.BLOCK)
    await sub_conn.flush()
    payload = b"x" * size
    done = asyncio.get_running_loop().create_future()

    async def consume() -> None:
        k = 0
        async for _ in sub:
            k += 1
            if k == n:
                done.set_result(time.perf_counter())
                return

    task = asyncio.ensure_future(consume())
    t0 = time.perf_counter()
    for _ in range(n):
        await pub.publish("bench.ps", payload)
    t1: float = await asyncio.wait_for(done, 120)
    await task
    await pub.close()
    await sub_conn.close()
    return n / (t1 - t0)


async def nats_pubsub(url: str, n: int, size: int) -> float:
    pub = await nats.connect(url)
    sub_conn = await nats.connect(url)
    sub = await sub_conn.subscribe("bench.ps", pending_msgs_limit=n + 1)
    await sub_conn.flush()
    payload = b"x" * size
    done = asyncio.get_running_loop().create_future()

    async def consume() -> None:
        k = 0
        async for _ in sub.messages:
            k += 1
            if k == n:
                done.set_result(time.perf_counter())
                return

    task = asyncio.ensure_future(consume())
    t0 = time.perf_counter()
    for _ in range(n):
        await pub.publish("bench.ps", payload)
    t1: float = await asyncio.wait_for(done, 120)
    await task
    await pub.close()
    await sub_conn.close()
    return n / (t1 - t0)


# ---- request / reply


async def mitto_reqrep(url: str, n: int, size: int) -> list[float]:
    svc_conn = await mitto.connect(url)
    req_conn = await mitto.connect(url)

    async def echo(req: mitto.Request) -> bytes:
        return req.data

    await svc_conn.service("bench.rr", echo)
    payload = b"x" * size
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        await req_conn.request("bench.rr", payload, timeout=5)
        lat.append(time.perf_counter() - t)
    await req_conn.close()
    await svc_conn.close()
    return lat


async def nats_reqrep(url: str, n: int, size: int) -> list[float]:
    svc_conn = await nats.connect(url)
    req_conn = await nats.connect(url)

    async def echo(msg: Any) -> None:
        await msg.respond(msg.data)

    await svc_conn.subscribe("bench.rr", cb=echo)
    await svc_conn.flush()
    for _ in range(100):
        try:
            await req_conn.request("bench.rr", b"", timeout=5)
            break
        except nats.errors.NoRespondersError:
            await asyncio.sleep(0.05)
    payload = b"x" * size
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        await req_conn.request("bench.rr", payload, timeout=5)
        lat.append(time.perf_counter() - t)
    await req_conn.close()
    await svc_conn.close()
    return lat


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))]


async def repeat(reps: int, f: Callable[[], Awaitable[float]]) -> tuple[float, float, float]:
    vals = [await f() for _ in range(reps)]
    return statistics.median(vals), min(vals), max(vals)


async def scenarios(name: str, murl: str, nurl: str, n_ps: int, n_rr: int, reps: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size in (16, 128):
        m = await repeat(reps, functools.partial(mitto_pubsub, murl, n_ps, size))
        k = await repeat(reps, functools.partial(nats_pubsub, nurl, n_ps, size))
        out[f"pubsub_{size}"] = {"mitto": m, "nats": k, "ratio": m[0] / k[0]}
        print(f"{name:<24} pub->sub {size:>4} B  mitto-python {m[0]:>9,.0f} msg/s  "
              f"nats-py {k[0]:>9,.0f} msg/s  {m[0] / k[0]:.2f}x")  # fmt: skip
    ml: list[float] = []
    kl: list[float] = []
    for _ in range(reps):
        ml += await mitto_reqrep(murl, n_rr, 16)
        kl += await nats_reqrep(nurl, n_rr, 16)
    mp50, mp99, kp50, kp99 = (
        pct(ml, 0.5) * 1e6,
        pct(ml, 0.99) * 1e6,
        pct(kl, 0.5) * 1e6,
        pct(kl, 0.99) * 1e6,
    )
    out["reqrep_16"] = {
        "mitto": {"p50_us": mp50, "p99_us": mp99, "calls_per_s": len(ml) / sum(ml)},
        "nats": {"p50_us": kp50, "p99_us": kp99, "calls_per_s": len(kl) / sum(kl)},
        "p50_ratio": mp50 / kp50,
    }
    print(f"{name:<24} req/rep    16 B  mitto-python p50 {mp50:>6.1f} us p99 {mp99:>7.1f} us  "
          f"nats-py p50 {kp50:>6.1f} us p99 {kp99:>7.1f} us  p50 {mp50 / kp50:.2f}x")  # fmt: skip
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few thousand messages, one repetition")
    ap.add_argument("--mitto-bin", default=os.environ.get("MITTO_BIN"))
    ap.add_argument("--nats-bin", default=os.environ.get("NATS_SERVER_BIN", "nats-server"))
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    a = ap.parse_args()
    binary = a.mitto_bin
    if binary is None:
        build = await asyncio.create_subprocess_exec(
            "cargo", "build", "-q", "--release", "-p", "mitto-cli", cwd=ROOT
        )
        if await build.wait() != 0:
            raise SystemExit("cargo build failed")
        binary = str(ROOT / "target" / "release" / "mitto")
    n_ps, n_rr, reps = (5_000, 500, 1) if a.quick else (100_000, 10_000, 5)
    results: dict[str, Any] = {"quick": a.quick, "python": sys.version.split()[0]}
    # The broker as it ships, and with spin-then-park off (on a machine with fewer cores than
    # busy threads, spinning costs the Python processes their CPU).
    for name, extra in (("mitto server", []), ("mitto server --spin-us 0", ["--spin-us", "0"])):
        with mitto_server(binary, extra) as murl, nats_server(a.nats_bin) as nurl:
            results[name] = await scenarios(name, murl, nurl, n_ps, n_rr, reps)
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
