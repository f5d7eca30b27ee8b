"""Measuring each case in a fresh Python process, the way the benchmark
scripts do.

A script measures one case by running itself again, as ``python <script>.py
--case ...``, in a new process that measures the case once and prints its
numbers as one JSON line (:func:`report`). The script starts these
processes one at a time (:meth:`Script.measure`), usually in rounds, the
order of the cases rotated from round to round (:func:`measure_rounds`).
Timed one after another in one process, the cases disturbed each other
through the heap, the garbage and the threads that earlier cases left
behind; a fresh process gives every case the same start.

A process that fails, prints an error or gives no result in time makes its
case ``n/a`` with the reason (:class:`MeasurementFailed`), and the run goes
on. Each process runs in a process group of its own, so that what it
started (a fork server and its children, an RQ worker) is killed with it
when it hangs or the run is interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
import typing as t
from collections.abc import Hashable

from _tables import describe_error, progress, shorten

#: What names a case in a script's tables: ``"memory"``, or
#: ``("Flask-BGTasks", "app context")``.
Key = t.TypeVar("Key", bound=Hashable)


class MeasurementFailed(Exception):
    """A measuring process gave no result; the message is the ``n/a`` text."""


def failure_text(message: str) -> str:
    """``n/a (message)``, the message cut to one short line."""
    return f"n/a ({shorten(message)})"


# In the measuring process ------------------------------------------------------


def report(measure: t.Callable[[], dict[str, float]]) -> None:
    """Run ``measure`` and print its numbers as one JSON line, or
    ``{"error": text}`` with the ``n/a`` text of what it raised."""
    result: dict[str, float | str]
    try:
        result = dict(measure())
    except Exception as exc:  # noqa: BLE001 - any failure is shown as n/a
        result = {"error": describe_error(exc)}
    print(json.dumps(result), flush=True)


# Starting the measuring processes ----------------------------------------------


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1].strip() if lines else ""


def kill_group(process: subprocess.Popen[str]) -> None:
    """Kill a measuring process and whatever it started, which share its
    process group, and reap it."""
    if hasattr(os, "killpg"):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    else:
        process.kill()
    process.communicate()


@dataclasses.dataclass(frozen=True)
class Script:
    """A benchmark script, as the measuring processes run it."""

    #: The script's absolute path: its ``__file__``.
    path: str
    #: Seconds a measuring process may take before its case is given up as n/a.
    timeout: float
    #: The measuring processes' current folder; ``None`` for this one's.
    cwd: str | None = None

    def measure(self, options: list[str], names: t.Sequence[str]) -> dict[str, float]:
        """Run the script with ``options`` in a fresh Python process and
        return the numbers called ``names`` from the JSON line it prints.

        :raises MeasurementFailed: if the process failed, hung or printed an error.
        """
        command = [sys.executable, self.path, *options]
        # A process group of its own, so that a hung process goes together
        # with what it started.
        process = subprocess.Popen(
            command,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            kill_group(process)
            raise MeasurementFailed(failure_text(f"no result within {self.timeout:g} s")) from None
        except BaseException:  # Ctrl-C too
            kill_group(process)
            raise
        if process.returncode != 0:
            reason = last_line(stderr) or "no error output"
            raise MeasurementFailed(failure_text(f"exit status {process.returncode}: {reason}"))
        output = last_line(stdout)
        try:
            result = json.loads(output)
            if not isinstance(result, dict):
                raise TypeError("The result is not a JSON object.")
            if "error" in result:
                raise MeasurementFailed(str(result["error"]))
            return {name: float(result[name]) for name in names}
        except (ValueError, TypeError, KeyError):
            raise MeasurementFailed(failure_text(f"unreadable result: {output!r}")) from None


# Rounds ------------------------------------------------------------------------


@dataclasses.dataclass
class Samples:
    """One case's numbers over the rounds, by name, or why it has none."""

    numbers: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    error: str | None = None

    def values(self, name: str) -> list[float]:
        """The number called ``name`` from every round; none if the case failed."""
        return [] if self.error else self.numbers.get(name, [])

    def median(self, name: str) -> float | None:
        values = self.values(name)
        return statistics.median(values) if values else None


def rotated(cases: list[Key], by: int) -> list[Key]:
    by %= len(cases)
    return cases[by:] + cases[:by]


def measure_rounds(
    cases: list[Key],
    rounds: int,
    measure: t.Callable[[Key], dict[str, float]],
    failed: t.Mapping[Key, str] | None = None,
) -> dict[Key, Samples]:
    """Measure every case once per round with ``measure``, which runs it in a
    fresh process (:meth:`Script.measure`), in an order rotated from round to
    round. A case that failed once, or is in ``failed`` with its ``n/a``
    text, is not run again.
    """
    samples = {case: Samples(error=(failed or {}).get(case)) for case in cases}
    for round_index in range(rounds):
        progress(f"round {round_index + 1}/{rounds}")
        for case in rotated(cases, round_index):
            record = samples[case]
            if record.error:
                continue
            try:
                numbers = measure(case)
            except MeasurementFailed as exc:
                record.error = str(exc)
                continue
            for name, value in numbers.items():
                record.numbers.setdefault(name, []).append(value)
    return samples
