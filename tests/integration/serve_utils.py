"""Start a real `pangu serve` subprocess on 127.0.0.1 and stop it again (used by the server tests).

The server binds port 0 itself and writes the port it got to `--port-file` once it is ready, so no
port is ever found free here and bound later by someone else (the find-release-bind race)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

START_GUARD_S = 600  # hang guard only: paddle + paddlenlp import on a loaded 2-core machine takes 20-240 s


class Server:
    def __init__(self, model: str, *extra: str, log_path: str, env: dict | None = None):
        self.port_file = log_path + ".port"
        self.log = open(log_path, "w")
        cmd = [sys.executable, "-m", "paddle_pangu.cli", "serve", "--model", model, "--host", "127.0.0.1",
               "--port", "0", "--port-file", self.port_file, *extra]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self.port = self._wait_for_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if self.health()["status"] != "ok":
            raise RuntimeError(f"pangu serve is not healthy: {self.tail()}")

    def _wait_for_port(self) -> int:
        deadline = time.time() + START_GUARD_S
        while time.time() < deadline:
            if os.path.exists(self.port_file):  # written atomically (rename) after the model loaded
                with open(self.port_file) as f:
                    return int(f.read())
            if self.proc.poll() is not None:
                raise RuntimeError(f"pangu serve exited with {self.proc.returncode}: {self.tail()}")
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"pangu serve wrote no port file within {START_GUARD_S} s: {self.tail()}")

    def health(self) -> dict:
        with urllib.request.urlopen(self.url + "/health", timeout=60) as r:
            return json.loads(r.read())

    def wait_health(self, done, guard_s: float = 300) -> dict:
        """Poll /health until done(health) is true (a hang guard, not a timing assertion)."""
        deadline = time.time() + guard_s
        while True:
            h = self.health()
            if done(h):
                return h
            if time.time() > deadline:
                raise AssertionError(f"/health never reached the expected state; last: {h}")
            time.sleep(0.05)

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
