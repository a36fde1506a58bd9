"""Test support: the real ``mitto`` broker (built from this workspace, or ``MITTO_BIN``) and
the Rust interop example (``MITTO_INTEROP_BIN``), started on free ports and stopped on
teardown."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _cargo_build(*args: str) -> None:
    subprocess.run(["cargo", "build", "-q", *args], cwd=ROOT, check=True, timeout=1800)


@pytest.fixture(scope="session")
def mitto_bin() -> str:
    path = os.environ.get("MITTO_BIN")
    if path:
        return path
    _cargo_build("-p", "mitto-cli")
    return str(ROOT / "target" / "debug" / "mitto")


@pytest.fixture(scope="session")
def interop_bin() -> str:
    path = os.environ.get("MITTO_INTEROP_BIN")
    if path:
        return path
    _cargo_build("-p", "mitto", "--example", "interop")
    return str(ROOT / "target" / "debug" / "examples" / "interop")


class Process:
    """A child process whose stdout is read line by line in the background."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def wait_line(self, prefix: str, timeout: float = 30.0) -> str:
        """The rest of the first stdout line that starts with `prefix`."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"{self.argv[0]}: no {prefix!r} line within {timeout}s") from None
            if line is None:
                raise AssertionError(f"{self.argv}: exited before {prefix!r}: {''.join(self.stderr)[-2000:]}")
            if line.startswith(prefix):
                return line[len(prefix) :]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


class Broker:
    """A running ``mitto server``."""

    def __init__(self, bin_: str, listen: list[str], extra: list[str], workdir: Path) -> None:
        self.bin = bin_
        self.extra = extra
        self.workdir = workdir
        self.listen = listen
        self.process: Process | None = None
        self.urls: list[str] = []
        self.start()

    def start(self) -> None:
        argv = [self.bin, "server", "--monitor", "", "--log", "warn"]
        for u in self.listen:
            argv += ["--listen", u]
        self.process = Process(argv + self.extra)
        self.urls = [self.process.wait_line("mitto broker listening on ") for _ in self.listen]
        # Later restarts listen where this one did.
        self.listen = [u if not u.endswith(":0") else self.urls[i] for i, u in enumerate(self.listen)]

    @property
    def url(self) -> str:
        return self.urls[0]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            self.process.stop(sig)

    def restart(self) -> None:
        self.stop(signal.SIGKILL)
        self.start()


BrokerFactory = Callable[..., Broker]


@pytest.fixture(scope="module")
def start_broker(mitto_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerFactory]:
    """Starts brokers for the module: ``start_broker(*extra_args, listen=[...], config=toml)``."""
    started: list[Broker] = []
    workdir = tmp_path_factory.mktemp("broker")

    def start(*extra: str, listen: list[str] | None = None, config: str | None = None) -> Broker:
        args = list(extra)
        if config is not None:
            path = workdir / f"mitto-{len(started)}.toml"
            path.write_text(config)
            args += ["--config", str(path)]
        b = Broker(mitto_bin, listen or ["tcp://127.0.0.1:0"], args, workdir)
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


@pytest.fixture(scope="module", params=["tcp", "ws"])
def scheme(request: pytest.FixtureRequest) -> str:
    """The transport a module's end-to-end tests run over: each of them runs over both."""
    return str(request.param)


@pytest.fixture(scope="module")
def broker(start_broker: BrokerFactory, scheme: str) -> Broker:
    """A broker with the default configuration listening on ``scheme``, shared by the module's
    tests."""
    return start_broker(listen=[f"{scheme}://127.0.0.1:0"])
