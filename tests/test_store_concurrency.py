"""Several processes write to one SQLite store at once: nothing is lost and
nobody sees "database is locked"."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

HAMMER = Path(__file__).parent / "server_apps" / "hammer.py"


def test_processes_hammering_one_store(tmp_path: Path) -> None:
    db = str(tmp_path / "tasks.db")
    count = 300
    processes = [
        subprocess.Popen(
            [sys.executable, str(HAMMER), db, str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        for process in processes:  # all started and connected, then all at once
            assert process.stdout is not None and process.stdout.readline() == "ready\n"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=120) for process in processes]
    finally:
        for process in processes:
            process.kill()
            process.wait()
    expected: dict[str, int] = {}
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err
        assert "locked" not in err and "Traceback" not in err, err
        expected.update(json.loads(out.splitlines()[-1]))
    assert len(expected) == 3 * count
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT id, status, outcome, progress, attempt FROM bgtasks_task"
        ).fetchall()
    assert len(rows) == 3 * count
    for task_id, status, outcome, progress, attempt in rows:
        assert (status, attempt) == ("succeeded", 1), task_id
        assert json.loads(outcome) == {"value": expected[task_id] * 2}
        assert json.loads(progress) == {"current": 3, "total": 3, "message": "step 3"}
