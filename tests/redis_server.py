"""A real ``redis-server`` for the tests, on 127.0.0.1 and a free port.

Debian's ``redis-server`` package provides it (``.ci/run`` and the README's
test command install it when it is missing). Each server keeps its files in
its own folder, saves nothing unless asked, and is always stopped.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import typing as t
from pathlib import Path

from tests.servers import free_port, wait_for


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError(
            "redis-server is missing: as root run 'apt-get install -y redis-server'"
            " (the README's test command does this)."
        )
    return found


class RedisServer:
    """One ``redis-server`` process; :meth:`restart` brings it back on the
    same port, with what it saved (nothing, unless ``appendonly``).

    :param folder: Where its files go.
    :param password: Required of clients, if given.
    :param appendonly: Keep its data across a restart.
    """

    def __init__(
        self, folder: Path, *, password: str | None = None, appendonly: bool = False
    ) -> None:
        self.folder = folder
        self.password = password
        self.appendonly = appendonly
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.folder),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--protected-mode",
            "no",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for(self._answers, 20, f"redis-server on port {self.port}")

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"redis-server exited with {self.process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                auth = f"AUTH {self.password}\r\n" if self.password else ""
                sock.sendall(f"{auth}PING\r\n".encode())
                return b"PONG" in _read_some(sock)
        except OSError:
            return False

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read_some(sock: socket.socket) -> bytes:
    data = b""
    while b"PONG" not in data and b"-" not in data[:1]:
        chunk = sock.recv(100)
        if not chunk:
            break
        data += chunk
    return data


def flush(url: str) -> None:
    """Empty every database of the Redis at ``url``."""
    import redis

    client: t.Any = redis.Redis.from_url(url)
    try:
        client.flushall()
    finally:
        client.close()
