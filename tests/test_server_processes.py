"""Process pools under real Gunicorn: each worker process has its own
children, and SIGTERM while they are busy leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

pytest.importorskip("gunicorn")

from tests.servers import BIN, Server, wait_for

APPS = Path(__file__).parent / "server_apps"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's process now
        return True
    return True


def test_sigterm_with_busy_children_leaves_no_process(tmp_path: Path) -> None:
    settings = {
        "BGTASKS_APP": "procapp:create_app()",
        "BGTASKS_SHUTDOWN_TIMEOUT": 1,
        "BGTASKS_POOLS": {"cpu": {"kind": "process", "max_workers": 2}},
    }
    command = [str(BIN / "gunicorn"), "-b", "127.0.0.1:{port}", "-w", "2"]
    command += ["--graceful-timeout", "20", "procapp:create_app()"]
    with Server(command, cwd=APPS, env={"PROCAPP_SETTINGS": json.dumps(settings)}) as server:
        server.wait_ready("/nowhere")
        # Two busy children and two queued tasks in the worker that takes it.
        status, body, _ = server.request(f"/spin?folder={tmp_path}&count=4", "POST")
        assert status == 200, body
        wait_for(lambda: len(list(tmp_path.iterdir())) >= 2, 60, "two busy children")
        server.signal(signal.SIGTERM)
        assert server.wait_exit(30) == 0, server.output
    seen = [name.split("-") for name in os.listdir(tmp_path)]
    children = {int(child) for child, _ in seen}
    servers = {int(parent) for _, parent in seen}  # the fork servers
    assert len(children) == 2 and body["pid"] not in children
    wait_for(
        lambda: not any(alive(pid) for pid in children | servers),
        10,
        "every child and fork server to be gone",
    )
    assert "was still running at the shutdown deadline" in server.output
