"""One of several processes that write to one SQLite task store at once.

Usage: ``python hammer.py DB TASKS``. Prints ``ready``, waits for a line on
stdin, then submits ``TASKS`` tasks from 4 threads while 2 more threads keep
reading records, waits for them, and prints a JSON line of task id -> number.
"""

from __future__ import annotations

import json
import random
import sys
import threading

from flask import Flask

from flask_bgtasks import BGTasks, current_task

app = Flask("hammer")
app.config.update(
    BGTASKS_STORE="sqlite:///" + sys.argv[1],
    BGTASKS_MAX_WORKERS=4,
    BGTASKS_QUEUE_SIZE=None,
)
bg = BGTasks(app)


@bg.task(durable=True, name="hammer.bump")
def bump(number: int) -> int:
    for step in range(1, 4):
        current_task.set_progress(step, 3, f"step {step}")
    return number * 2


def submit(numbers: range, ids: dict[str, int]) -> None:
    with app.app_context():
        for number in numbers:
            ids[bump.submit(number).id] = number


def read(stop: threading.Event, ids: dict[str, int]) -> None:
    with app.app_context():
        while not stop.is_set():
            bg.store().records(limit=20)
            if ids:
                task = bg.get(random.choice(list(ids)))
                assert task is not None, "a submitted task has no record"
                task.status  # noqa: B018 - a read of the store


def main() -> None:
    count = int(sys.argv[2])
    print("ready", flush=True)
    sys.stdin.readline()
    ids: dict[str, int] = {}
    stop = threading.Event()
    readers = [threading.Thread(target=read, args=(stop, ids)) for _ in range(2)]
    submitters = [
        threading.Thread(target=submit, args=(range(start, count, 4), ids)) for start in range(4)
    ]
    for thread in readers + submitters:
        thread.start()
    for thread in submitters:
        thread.join()
    assert bg.join(120), "the tasks did not finish"
    stop.set()
    for thread in readers:
        thread.join()
    bg.shutdown()
    print(json.dumps(ids), flush=True)


if __name__ == "__main__":
    main()
