"""Long work as generators: yield ``Progress`` as you go, return the result.

A job is any generator that yields ``Progress`` and returns its result (``return value``), or a
plain function result for work too short to report on. ``run_job`` drives it, hands each
``Progress`` to a callback (tqdm in the CLI, a progress bar in the GUI) and stops it at the next
yield once ``cancel`` is set, raising ``Cancelled``. Jobs that yield at least once per forward pass
therefore cancel within one forward pass.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeVar

from lvlm_studio.core.errors import Cancelled

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


Job = Generator[Progress, None, T]


def run_job(
    job: Job[T] | T,
    on_progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
) -> T:
    """Drive a job to its result; raise ``Cancelled`` (after closing the job) when cancelled.

    A job that only finishes after Cancel was pressed (it never yielded in between) is cancelled too:
    the user asked for nothing, so its result is dropped rather than shown or checked."""
    if not inspect.isgenerator(job):
        return job  # type: ignore[return-value]
    try:
        while True:
            if cancel is not None and cancel.is_set():
                job.close()  # runs the job's finally blocks: it can clean up partial work
                raise Cancelled()
            progress = next(job)
            if on_progress is not None:
                on_progress(progress)
    except StopIteration as stop:
        if cancel is not None and cancel.is_set():
            raise Cancelled() from None
        return stop.value


def relay(job: Job[T] | T, report: Callable[[Progress], Progress]) -> Job[T]:
    """Drive a sub-job inside a larger one (``result = yield from relay(sub, report)``), yielding
    ``report(progress)`` for each of its reports (the same step counted in the larger job's terms)
    and returning its result; a plain result passes straight through."""
    if not inspect.isgenerator(job):
        return job  # type: ignore[return-value]
    try:
        while True:
            yield report(next(job))
    except StopIteration as stop:
        return stop.value


def collect(job: Job[T] | T) -> tuple[T, list[Progress]]:
    """Run a job and keep every progress report (handy in tests)."""
    seen: list[Progress] = []
    return run_job(job, seen.append), seen

