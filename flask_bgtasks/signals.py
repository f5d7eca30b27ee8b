"""Blinker signals sent during a task's life. The sender is always the app.

Every receiver gets the :class:`~flask_bgtasks.TaskResult` as ``task``.
Receivers connected to ``task_started`` and the outcome signals run in the
worker, inside the task's app context; they should be quick.

.. code-block:: python

    from flask_bgtasks.signals import task_failed

    @task_failed.connect_via(app)
    def alert(app, task, exception):
        app.logger.warning("%s failed: %r", task.name, exception)
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

#: Sent by ``submit`` once a pool accepted the task, in the submitting
#: thread. With ``BGTASKS_EAGER`` the task has already finished by then.
task_submitted = _signals.signal("task-submitted")

#: Sent in the worker, inside the task's app context, before the function runs.
task_started = _signals.signal("task-started")

#: Sent after the task returned and its result was published; also gets
#: ``result``, the return value.
task_succeeded = _signals.signal("task-succeeded")

#: Sent after the task raised and the exception was stored; also gets
#: ``exception``.
task_failed = _signals.signal("task-failed")

#: Sent when a task was cancelled; also gets ``exception``: the
#: :class:`~flask_bgtasks.TaskCancelled` a running task stopped with, or
#: ``None`` for a task cancelled while queued (sent then in the thread that
#: called ``cancel()``, in an app context).
task_cancelled = _signals.signal("task-cancelled")
