"""A port for a server that another component binds (Paddle's TCPStore, the launcher's master), without the
"find a free port, release it, bind it later" race.

Paddle's `core.TCPStore` must be given its port (port 0 is refused: "listen fd is bound to port N, but
expected port 0") and aborts the whole process (SIGABRT) when the port is taken, so neither "let the OS
pick" nor "retry on collision" is available. Instead the port is held: a socket bound with SO_REUSEADDR
that never listens. On Linux, while no socket listens on the address, another socket that also sets
SO_REUSEADDR may bind it (libuv, which serves the TCPStore, and Python's socketserver, which serves
`paddle.distributed.launch`'s master, both do), whereas the kernel's port-0 autobind and plain binds are
refused. So from the moment the port is chosen until the server listens, no other process is handed it;
the hold is released once the server is up (or kept as long as convenient: it does not disturb the
listener).
"""
from __future__ import annotations

import socket


class HeldPort:
    """A free TCP port on `host`, held (bound, not listening) until `release()` / the end of a `with`."""

    def __init__(self, host: str = "127.0.0.1"):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((host, 0))
        except OSError:
            self._sock.close()
            raise
        self.host, self.port = host, self._sock.getsockname()[1]

    def release(self) -> None:
        self._sock.close()

    def __enter__(self) -> "HeldPort":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
