from __future__ import annotations

import threading
import typing as t

from flask import Flask, current_app

from flask_bgtasks import BGTasks, TaskCancelled, current_task, signals


def test_signals_in_order_with_the_app_as_sender(app: Flask, bg: BGTasks, gate: t.Any) -> None:
    events: list[tuple[str, str, t.Any]] = []
    lock = threading.Lock()

    def recorder(name: str) -> t.Callable[..., None]:
        def receive(sender: Flask, task: t.Any, **extra: t.Any) -> None:
            assert sender is app
            with lock:
                events.append((name, task.name, extra))

        return receive

    receivers = {
        signal: recorder(name)
        for name, signal in [
            ("submitted", signals.task_submitted),
            ("started", signals.task_started),
            ("succeeded", signals.task_succeeded),
            ("failed", signals.task_failed),
            ("cancelled", signals.task_cancelled),
        ]
    }
    for signal, receiver in receivers.items():
        signal.connect(receiver, app)

    @bg.task(name="ok")
    def ok() -> str:
        return current_app.name

    @bg.task(name="bad")
    def bad() -> None:
        raise KeyError("x")

    @bg.task(name="stop")
    def stop() -> None:
        gate()
        current_task.check_cancelled()

    try:
        with app.app_context():
            ok.submit().result(5)
            bad.submit().exception(5)
            stopping = stop.submit()
            gate.wait_entered()
            stopping.cancel()
            gate.open()
            assert bg.join(5)
    finally:
        for signal, receiver in receivers.items():
            signal.disconnect(receiver, app)

    by_task: dict[str, list[str]] = {}
    for name, task, _ in events:
        by_task.setdefault(task, []).append(name)
    # "submitted" is sent once the pool accepted the task, so a fast worker
    # may send "started" first; the rest of the order is fixed.
    for task, outcome in [("ok", "succeeded"), ("bad", "failed"), ("stop", "cancelled")]:
        names = by_task[task]
        assert sorted(names) == sorted(["submitted", "started", outcome])
        assert names.index("started") < names.index(outcome)
    extras = {(name, task): extra for name, task, extra in events}
    assert extras[("succeeded", "ok")] == {"result": "test_app"}
    assert isinstance(extras[("failed", "bad")]["exception"], KeyError)
    assert isinstance(extras[("cancelled", "stop")]["exception"], TaskCancelled)


def test_cancelled_while_queued_sends_task_cancelled(
    make_app: t.Callable[..., Flask], bg: BGTasks, gate: t.Any
) -> None:
    app = make_app(BGTASKS_MAX_WORKERS=1)
    seen: list[tuple[str, t.Any]] = []

    def receive(sender: Flask, task: t.Any, exception: t.Any) -> None:
        seen.append((current_app.name, exception))

    with signals.task_cancelled.connected_to(receive, app), app.app_context():
        bg.submit(gate)
        gate.wait_entered()
        queued = bg.submit(int)
        assert queued.cancel()
    gate.open()
    assert seen == [("test_app", None)]
