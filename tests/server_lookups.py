"""Submit tasks to a test app over HTTP and look them up until they end,
with several lookups in flight so that any of the server's processes may
answer.

The app (``server_apps/storeapp.py``, ``server_apps/rqapp.py``) answers
``POST`` with ``{"ids": [...], "pid": ...}``, ``GET /tasks/<id>`` with the
task's record as JSON, and says which process served each request in the
``X-Served-By`` header.
"""

from __future__ import annotations

import typing as t
from concurrent.futures import ThreadPoolExecutor

from tests.servers import Server, wait_for

#: Lookups in flight at once, so that busy sync workers leave requests to
#: the others and several processes answer.
CLIENTS = 4

Answer = dict[str, t.Any]


def post(server: Server, path: str) -> tuple[list[str], int]:
    """Submit tasks; return their ids and the pid of the process that took them."""
    status, body, _ = server.request(path, "POST")
    assert status == 200, body
    return list(body["ids"]), int(body["pid"])


def look_up(server: Server, task_id: str, query: str = "") -> Answer:
    """What the app says of the task, never a 404, with the pid of the
    process that answered as ``served_by``."""
    status, body, headers = server.request(f"/tasks/{task_id}{query}")
    assert status == 200, f"The lookup of task {task_id} answered {status}: {body}"
    assert body["id"] == task_id, body
    return {**body, "served_by": int(headers["X-Served-By"])}


def look_up_all(server: Server, clients: ThreadPoolExecutor, ids: t.Iterable[str]) -> list[Answer]:
    return list(clients.map(lambda task_id: look_up(server, task_id), ids))


def wait_until_done(
    server: Server,
    ids: t.Collection[str],
    answers: list[Answer] | None = None,
    *,
    deadline: float,
) -> dict[str, Answer]:
    """Look every unfinished task up, round after round, until all are
    done; return the answer that saw each one done. Every answer is also
    appended to ``answers``. Fail if they are not all done within
    ``deadline`` seconds."""
    final: dict[str, Answer] = {}
    with ThreadPoolExecutor(CLIENTS) as clients:

        def all_done() -> bool:
            for answer in look_up_all(server, clients, sorted(set(ids) - final.keys())):
                if answers is not None:
                    answers.append(answer)
                if answer["status"] in ("succeeded", "failed", "cancelled"):
                    final[answer["id"]] = answer
            return len(final) == len(ids)

        wait_for(all_done, deadline, f"{len(ids)} tasks to end:\n{server.output}")
    return final
