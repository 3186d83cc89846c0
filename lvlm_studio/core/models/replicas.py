"""Model replicas on a Ray cluster: spread a dataset's samples over every GPU or CPU slot.

A dataset run (the grounded benchmark, a study) is one independent piece of work per sample on
one model. :class:`ReplicaPool` starts one Ray actor per slot of the cluster (a GPU each where the
cluster has GPUs, else a CPU each); every actor loads its own copy of the model from the model
folder, which must therefore exist at the same path on every node. :meth:`ReplicaPool.map` then
sends one task per sample, to whichever replica is free, and yields each result as it arrives, so
the caller (on the driver) appends it to its results file at once: an interruption loses only the
samples in flight, exactly as in a single-process run.

What travels between the driver and the replicas is small and plain: the model's folder and load
options, a function named by its module (the replicas import it, so LVLM Studio and its plugins
must be installed on every node), and per task an item such as a sample's index; each replica
rebuilds the sample itself and returns a JSON-able result. Ray moves these with its own
serialisation; nothing of ours is written to or read from disk that way.

Use it for any per-sample loop::

    with ReplicaPool(folder, options, address=None) as pool:   # None: start or join a local Ray
        pool.prepare(make_context)           # once per replica: context = make_context(loaded)
        for position, result in pool.map(work, items):   # work(context, item) on a replica
            if position is not None:          # (None: a heartbeat while nothing finished)
                append(result)

Ray is optional (``pip install 'lvlm-studio[ray]'``); without it the pool raises one
``InputError`` that says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from lvlm_studio.core.errors import InputError, LVLMError

INSTALL = "pip install 'lvlm-studio[ray]'"


def import_ray() -> Any:
    """The ``ray`` module, or one ``InputError`` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise InputError(f"--ray needs Ray, which is not installed ({exc}).", f"Install it: {INSTALL}.") from None
    return ray


class _Replica:
    """One model replica, held by a Ray actor: the model loaded once, then one task at a time.

    A failure to load (the folder missing on this node, say) is kept and raised by every call,
    so the driver sees the error itself rather than a dead actor."""

    def __init__(self, folder: str | None, options: Any) -> None:
        from lvlm_studio.core.models.loading import load_model

        self.error: BaseException | None = None
        self.context: Any = None
        try:
            self.loaded = load_model(folder, options)
            self.context = self.loaded
        except Exception as exc:  # noqa: BLE001 - raised again by every call, on the driver
            self.error = exc

    def describe(self) -> dict[str, Any]:
        self._check()
        return self.loaded.describe()

    def prepare(self, setup: Callable[[Any], Any]) -> None:
        self._check()
        self.context = setup(self.loaded)

    def run(self, work: Callable[[Any, Any], Any], item: Any) -> Any:
        self._check()
        return work(self.context, item)

    def _check(self) -> None:
        if self.error is not None:
            raise self.error


class ReplicaPool:
    """One model replica per GPU (or, without GPUs or with ``options.device == "cpu"``, per CPU)
    of the Ray cluster at ``address``, or ``replicas`` of them when given (at most that many).

    ``address`` None starts a new local Ray (or uses the one this process already started); "auto"
    or "HOST:PORT" joins a running cluster. ``folder`` None is the demo model. A pool that started Ray
    shuts it down on :meth:`close`; one that joined a cluster only ends its own actors."""

    def __init__(self, folder: str | None, options: Any, address: str | None = None,
                 replicas: int | None = None) -> None:
        ray = import_ray()
        if options.placement is not None:
            raise InputError("--ray gives each model replica one GPU or one CPU; --placement spreads one model over "
                             "several devices.", "Use one or the other.")
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            try:
                # "local": a new Ray of this machine, never one left behind by an earlier `ray start`
                ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise InputError(f"could not connect to the Ray cluster at {address}: {exc}",
                                 "Check that `ray start --head` runs there; a cluster with token authentication "
                                 "also needs RAY_AUTH_MODE=token and its token in ~/.ray/auth_token here "
                                 "(docs/cluster.md). Without an address, a local Ray starts.") from None
            self._started = True
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0)) if options.device != "cpu" else 0
        slots = gpus or int(resources.get("CPU", 1))
        count = replicas or slots
        if count < 1:
            raise InputError(f"{count} replicas leave nothing to run.", "Use at least 1.")
        if count > slots:  # the replicas beyond the slots would wait for ever, and their samples with them
            raise InputError(f"{count} replicas do not fit: the Ray cluster has {slots} {'GPU' if gpus else 'CPU'} "
                             "slots.", f"Use at most {slots} replicas, or add nodes to the cluster.")
        device = "cuda" if gpus else "cpu"
        self.slot = "GPU" if gpus else "CPU"
        actor = ray.remote(num_gpus=1, num_cpus=0)(_Replica) if gpus else ray.remote(num_cpus=1)(_Replica)
        options = dataclasses.replace(options, device=device)
        self._actors = [actor.remote(folder, options) for _ in range(count)]

    def __len__(self) -> int:
        return len(self._actors)

    def __enter__(self) -> ReplicaPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        """The model as the first replica loaded it (``LoadedModel.describe``); raises its load error."""
        return self._get(self._actors[0].describe.remote())

    def prepare(self, setup: Callable[[Any], Any]) -> None:
        """Run ``setup(loaded)`` once on every replica; what it returns is the ``context`` that
        :meth:`map`'s function receives there (by default the ``LoadedModel`` itself)."""
        self._get([a.prepare.remote(setup) for a in self._actors])

    def map(self, work: Callable[[Any, Any], Any], items: Iterable[Any],
            heartbeat: float = 0.5) -> Iterator[tuple[int | None, Any]]:
        """``(position, work(context, item))`` for every item, in the order they finish, each task on
        the next free replica. ``(None, None)`` every ``heartbeat`` seconds while nothing finishes,
        so the caller can report progress or stop (closing this iterator ends the pool's work).
        An error raised by ``work`` is raised here, as itself when it is one of ours."""
        pending = list(enumerate(items))[::-1]  # popped from the end: first items first
        idle = list(self._actors)
        running: dict[Any, Any] = {}  # task -> its replica
        positions: dict[Any, int] = {}
        while pending or running:
            while pending and idle:
                position, item = pending.pop()
                replica = idle.pop(0)
                task = replica.run.remote(work, item)
                running[task], positions[task] = replica, position
            finished, _ = self._ray.wait(list(running), num_returns=1, timeout=heartbeat)
            if not finished:
                yield None, None
                continue
            task = finished[0]
            idle.append(running.pop(task))
            yield positions.pop(task), self._get(task)

    def close(self) -> None:
        """End the replicas (and the local Ray this pool started)."""
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors = []
        if self._started:
            self._ray.shutdown()
            self._started = False

    def _get(self, tasks: Any) -> Any:
        """``ray.get``, raising the replica's own error (an ``LVLMError`` as itself)."""
        exceptions = self._ray.exceptions
        try:
            return self._ray.get(tasks)
        except exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, LVLMError):
                raise cause from None
            raise LVLMError(f"a model replica failed: {cause!r}" if cause is not None else str(exc)) from None
        except exceptions.RayActorError as exc:
            raise LVLMError(f"a model replica stopped (out of memory, or its node left the cluster): {exc}") from None
