"""Run the code blocks of the docs that say they are complete.

The convention, in ``docs/*.rst``:

``.. complete-example: app.py``
    An RST comment (invisible in the HTML) just before a
    ``.. code-block:: python``: the block is a whole file, named ``app.py``,
    that runs as written. The test writes it to a temporary folder, imports
    it under a fresh module name, builds its app (``app``, or
    ``create_app()``) and exercises it: with its sessions if the page has
    any, else with the exercise named for it in ``EXERCISES``, else by
    checking that the app has the extension.

``.. complete-example-session: app.py``
    Before a ``.. code-block:: console``: the commands in it run against
    that file, in the order of the page. ``$ flask --app app run`` starts
    it; each ``$ curl [-X METHOD] URL`` sends a request, and the lines up to
    the next ``$`` are its JSON answer. The answer must have the keys and
    values shown, except that the task ids shown stand for the ones the app
    gives, and that under ``progress`` only the keys and types count (the
    task moves on). A ``GET`` is repeated until its answer matches, since
    the task may not have got that far yet; any other method must match at
    once. The sessions run through the test client, and for the quickstart
    also for real: ``flask run`` and ``curl``.

Markers and their code-blocks start at the left margin of the page.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
import typing as t
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from flask import Flask

from flask_bgtasks import BGTasks, TaskStatus, current_task
from tests.servers import BIN, Server

DOCS = Path(__file__).parent.parent / "docs"

MARKER = re.compile(r"^\.\. (complete-example|complete-example-session): (\S+)\s*$")
CODE_BLOCK = re.compile(r"^\.\. code-block:: (\S+)\s*$")
#: The host and port the sessions' URLs name, as ``flask run`` prints them.
DOCUMENTED_ORIGIN = re.compile(r"^http://(?:127\.0\.0\.1|localhost):5000(?=/|$)")
#: How long a GET of a session is repeated until its answer matches.
SESSION_TIMEOUT = 30.0


@dataclasses.dataclass(frozen=True)
class Block:
    page: str
    line: int  # of the marker, 1-based
    kind: str  # "complete-example" or "complete-example-session"
    name: str
    text: str

    @property
    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"


def read_blocks(path: Path) -> list[Block]:
    """The marked blocks of one page, in its order."""
    lines = path.read_text("utf-8").splitlines()
    blocks = []
    for number, line in enumerate(lines):
        marker = MARKER.match(line)
        if marker is None:
            continue
        where = f"docs/{path.name}:{number + 1}"
        index = next((i for i in range(number + 1, len(lines)) if lines[i].strip()), None)
        code = None if index is None else CODE_BLOCK.match(lines[index])
        if index is None or code is None:
            raise ValueError(f"{where}: {marker[0]!r} must come just before a code-block.")
        body = []
        for text in lines[index + 1 :]:
            if text.strip() and not text.startswith((" ", "\t")):
                break
            body.append(text)
        # The block's options (":caption: ...") come before its first blank line.
        while body and body[0].strip().startswith(":"):
            body.pop(0)
        source = textwrap.dedent("\n".join(body)).strip("\n") + "\n"
        expected = {"complete-example": "python", "complete-example-session": "console"}
        if code[1] != expected[marker[1]]:
            raise ValueError(f"{where}: {marker[0]!r} needs a {expected[marker[1]]} code-block.")
        blocks.append(Block(path.name, number + 1, marker[1], marker[2], source))
    return blocks


BLOCKS = [block for page in sorted(DOCS.glob("*.rst")) for block in read_blocks(page)]
EXAMPLES = [block for block in BLOCKS if block.kind == "complete-example"]


def sessions_of(example: Block) -> list[Block]:
    return [
        block
        for block in BLOCKS
        if block.kind == "complete-example-session"
        and (block.page, block.name) == (example.page, example.name)
    ]


# -- sessions ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Step:
    where: str
    command: str  # the line after "$ "
    output: str


def steps_of(sessions: list[Block]) -> list[Step]:
    steps: list[Step] = []
    for block in sessions:
        for text in block.text.splitlines():
            if text.startswith("$ "):
                steps.append(Step(block.where, text[2:].strip(), ""))
            elif steps and steps[-1].where == block.where:
                last = steps[-1]
                steps[-1] = dataclasses.replace(last, output=f"{last.output}{text}\n")
            elif text.strip():
                raise ValueError(f"{block.where}: output before the first '$ ' command.")
    return steps


def parse_curl(step: Step) -> tuple[str, str]:
    """The method and the URL of a ``curl`` command."""
    args = shlex.split(step.command)
    method, urls = "GET", []
    options = iter(args[1:])
    for arg in options:
        if arg in ("-X", "--request"):
            method = next(options)
        elif arg.startswith("-"):
            raise ValueError(f"{step.where}: the test can't run curl's {arg!r} option.")
        else:
            urls.append(arg)
    if len(urls) != 1 or not DOCUMENTED_ORIGIN.match(urls[0]):
        raise ValueError(f"{step.where}: give curl one URL on http://127.0.0.1:5000.")
    return method, urls[0]


def matches(expected: object, actual: object, in_progress: bool = False) -> bool:
    """Whether an answer has the documented keys and values; see the module
    docstring for what may differ."""
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and expected.keys() == actual.keys()
            and all(
                matches(value, actual[key], in_progress or key == "progress")
                for key, value in expected.items()
            )
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(matches(e, a, in_progress) for e, a in zip(expected, actual))
        )
    if in_progress:
        return type(expected) is type(actual)
    return expected == actual


def learn_ids(expected: object, actual: object, ids: dict[str, str]) -> None:
    """Map each documented task id to the one the app gave in its place."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key, value in expected.items():
            if key == "id" and isinstance(value, str) and isinstance(actual.get(key), str):
                ids[value] = actual[key]
            learn_ids(value, actual.get(key), ids)


def substitute(text: str, ids: dict[str, str]) -> str:
    for documented, real in ids.items():
        text = text.replace(documented, real)
    return text


Send = t.Callable[[Step, str, str], object]  # (step, method, URL) -> the JSON answer


def run_session(steps: list[Step], send: Send, *, app_name: str) -> None:
    """Run the documented commands in order; ``send`` makes each request."""
    ids: dict[str, str] = {}
    assert any(step.command.startswith("curl ") for step in steps), "The session sends nothing."
    for documented in steps:
        step = dataclasses.replace(documented, command=substitute(documented.command, ids))
        if step.command.startswith("flask "):
            assert shlex.split(step.command)[1:] == ["--app", app_name, "run"], (
                f"{step.where}: the example runs with 'flask --app {app_name} run'."
            )
            continue
        assert step.command.startswith("curl "), f"{step.where}: can't run {step.command!r}."
        method, url = parse_curl(step)
        deadline = time.monotonic() + (SESSION_TIMEOUT if method == "GET" else 0)
        pause = threading.Event()
        while True:
            answer = send(step, method, url)
            # A new task's id, shown in the answer, stands for the real one from now on.
            learn_ids(json.loads(step.output), answer, ids)
            expected = json.loads(substitute(step.output, ids))
            if matches(expected, answer):
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{step.where}: '$ {step.command}' answered\n  {answer}\nnot\n  {expected}"
                )
            pause.wait(0.05)  # the polling interval, not a synchronisation


def send_with_client(app: Flask) -> Send:
    client = app.test_client()

    def send(step: Step, method: str, url: str) -> object:
        response = client.open(DOCUMENTED_ORIGIN.sub("", url), method=method)
        assert response.is_json, f"{step.where}: {response.status} {response.data!r}"
        return response.get_json()

    return send


def send_with_curl(server: Server) -> Send:
    def send(step: Step, method: str, url: str) -> object:
        command = shlex.split(step.command)
        real_url = DOCUMENTED_ORIGIN.sub(server.url, url)
        command[command.index(url)] = real_url
        if shutil.which("curl") is not None:
            done = subprocess.run(command, capture_output=True, text=True, timeout=10)
            assert done.returncode == 0, f"{command}: {done.stderr}"
            return json.loads(done.stdout)
        request = urllib.request.Request(real_url, method=method)  # the same request
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            return json.loads(error.read())

    return send


# -- running an example -----------------------------------------------------


def load(example: Block, folder: Path) -> types.ModuleType:
    """Write the example as its file in ``folder`` and import it under a
    fresh module name (remove it from ``sys.modules`` when done)."""
    path = folder / example.name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(example.text, "utf-8")
    name = "docs_" + re.sub(r"\W", "_", f"{example.page}_{example.name}")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # Flask(__name__) finds its folder through it
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def app_of(module: types.ModuleType) -> Flask:
    app = getattr(module, "app", None)
    if isinstance(app, Flask):
        return app
    create_app = getattr(module, "create_app", None)
    assert callable(create_app), "A complete example defines 'app' or 'create_app'."
    app = create_app()
    assert isinstance(app, Flask)
    return app


FINAL = {"succeeded", "failed", "cancelled"}


def wait_for_json(
    fetch: t.Callable[[], t.Any], done: t.Callable[[t.Any], bool], timeout: float = 20
) -> t.Any:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not done(body := fetch()):
        assert time.monotonic() < deadline, f"Still {body} after {timeout} s."
        pause.wait(0.05)  # the polling interval, not a synchronisation
    return body


def exercise_index(module: types.ModuleType) -> None:
    """docs/index.rst: submit a report, then poll its status until it ends."""
    client = app_of(module).test_client()
    response = client.post("/reports/7")
    assert response.status_code == 202
    status_url = f"/tasks/{response.json['id']}"
    body = wait_for_json(lambda: client.get(status_url).json, lambda b: b["status"] in FINAL)
    assert body == {
        "status": "succeeded",
        "progress": {"current": 0, "total": 3, "message": "Loading data"},
    }
    assert client.get("/tasks/unknown").status_code == 404


def exercise_http(module: types.ModuleType) -> None:
    """docs/http.rst: the status API shows a report, and the result of a
    background view, to the user who started it, and to nobody else."""
    app = app_of(module)

    def client_of(user_id: int | None) -> t.Any:
        client = app.test_client()
        if user_id is not None:  # as the app's log-in would
            with client.session_transaction() as session:
                session["user_id"] = user_id
        return client

    owner = client_of(7)
    response = owner.post("/reports")
    assert response.status_code == 202
    report_url = response.json["status_url"]
    body = wait_for_json(lambda: owner.get(report_url).json, lambda b: b["status"] in FINAL)
    assert (body["status"], body["result"]) == ("succeeded", {"url": "/reports/7.pdf"})

    response = owner.post("/exports/2024")
    assert response.status_code == 202
    export_url, result_url = response.json["status_url"], response.json["result_url"]
    body = wait_for_json(lambda: owner.get(export_url).json, lambda b: b["status"] in FINAL)
    assert body["status"] == "succeeded"
    assert owner.get(result_url).json == {"year": 2024, "url": "/exports/2024.csv"}

    for url in (report_url, export_url, result_url):
        assert client_of(8).get(url).status_code == 404
        assert client_of(None).get(url).status_code == 404


def exercise_backend(module: types.ModuleType) -> None:
    """docs/architecture.rst: the backend runs tasks when chosen by its
    import path."""
    app = Flask("docs_backend_app")
    app.config["BGTASKS_BACKEND"] = f"{module.__name__}:ThreadPerTaskBackend"
    bg = BGTasks(app)

    @bg.task
    def double(number: int) -> int:
        current_task.set_progress(1, 1, "Doubled")
        return 2 * number

    try:
        with app.app_context():
            result = double.submit(21)
            assert result.result(10) == 42
            assert result.status == TaskStatus.SUCCEEDED
            assert result.progress == {"current": 1, "total": 1, "message": "Doubled"}
    finally:
        assert not bg.shutdown(timeout=10).interrupted


#: How to exercise a complete example that has no session, by page and name.
EXERCISES: dict[tuple[str, str], t.Callable[[types.ModuleType], None]] = {
    ("index.rst", "app.py"): exercise_index,
    ("http.rst", "app.py"): exercise_http,
    ("architecture.rst", "myapp/backends.py"): exercise_backend,
}


def test_the_docs_mark_their_complete_examples() -> None:
    """The quickstart is marked, with its session; every session belongs to
    an example of its page; no page names two examples alike; every
    exercise has its example."""
    marked = {(block.page, block.name) for block in EXAMPLES}
    assert len(marked) == len(EXAMPLES), [block.where for block in EXAMPLES]
    assert ("quickstart.rst", "app.py") in marked
    quickstart = next(block for block in EXAMPLES if block.page == "quickstart.rst")
    assert sessions_of(quickstart)
    for block in BLOCKS:
        if block.kind == "complete-example-session":
            assert (block.page, block.name) in marked, f"{block.where}: no such example."
    assert EXERCISES.keys() <= marked


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda block: f"{block.page}:{block.name}")
def test_complete_example_runs(example: Block, tmp_path: Path) -> None:
    """The example, written to its file and imported, runs as the page says."""
    module = load(example, tmp_path)
    try:
        sessions = sessions_of(example)
        if sessions:
            app = app_of(module)
            run_session(steps_of(sessions), send_with_client(app), app_name=Path(example.name).stem)
        elif (example.page, example.name) in EXERCISES:
            EXERCISES[example.page, example.name](module)
        else:
            assert isinstance(app_of(module).extensions.get("bgtasks"), BGTasks)
    finally:
        for value in list(vars(module).values()):
            if isinstance(value, BGTasks):
                assert not value.shutdown(timeout=15).interrupted
        del sys.modules[module.__name__]


def test_quickstart_runs_under_flask_run_with_curl(tmp_path: Path) -> None:
    """As a reader does it: save app.py, start 'flask --app app run', and
    send the page's curl commands to it."""
    example = next(block for block in EXAMPLES if block.page == "quickstart.rst")
    (tmp_path / example.name).write_text(example.text, "utf-8")
    steps = steps_of(sessions_of(example))
    start = [step for step in steps if step.command.startswith("flask ")]
    assert len(start) == 1 and steps[0] == start[0], "The session starts the server first."
    command = [str(BIN / "flask"), *shlex.split(start[0].command)[1:]]
    with Server([*command, "--host", "127.0.0.1", "--port", "{port}"], cwd=tmp_path) as server:
        server.wait_ready()
        run_session(steps, send_with_curl(server), app_name=Path(example.name).stem)
        server.signal(signal.SIGINT)  # Ctrl-C
        code = server.wait_exit(30)
    assert code == 0, server.output
    assert "Traceback" not in server.output, server.output
