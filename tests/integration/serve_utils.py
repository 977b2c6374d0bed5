"""Start a real `pangu serve` subprocess on a free 127.0.0.1 port and stop it again (used by the server tests)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

START_TIMEOUT_S = 240  # paddle + paddlenlp import on a loaded 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: str, *extra: str, log_path: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "w")
        cmd = [sys.executable, "-m", "paddle_pangu.cli", "serve", "--model", model, "--host", "127.0.0.1",
               "--port", str(self.port), *extra]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ})
        self._wait()

    def _wait(self) -> None:
        deadline = time.time() + START_TIMEOUT_S
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pangu serve exited with {self.proc.returncode}: {self.tail()}")
            try:
                if self.health()["status"] == "ok":
                    return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"pangu serve did not answer /health within {START_TIMEOUT_S} s: {self.tail()}")

    def health(self) -> dict:
        with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
            return json.loads(r.read())

    def tail(self) -> str:
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()[-2000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        self.log.close()
