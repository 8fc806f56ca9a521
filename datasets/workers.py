"""Worker processes that one bad input cannot stall or kill: :class:`IsolatedPool`.

Scanning downloads, computing duplicate features and rendering a dataset all
run untrusted models through native code (our loader, Pillow's decoders, the
GL driver). A model that hangs, exhausts memory or crashes its process must
cost that one task, never the job: each task runs in a worker process with a
wall-clock limit (and optionally an address-space limit); a worker that
overruns is killed, one that dies is reported as ``crashed``, and either is
replaced by a fresh process.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .text import one_line

__all__ = ["IsolatedPool", "TaskOutcome", "WorkerStartError", "default_workers"]

_MAX_WAIT_S = 3600.0


def default_workers() -> int:
    """Worker processes by default: the usable cores (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass
class TaskOutcome:
    """The outcome of one task of an :class:`IsolatedPool`.

    ``ok``: the function returned ``value``. Otherwise ``kind`` says why:
    ``'exception'`` (it raised; ``error`` is ``Type: message``), ``'memory'``
    (MemoryError under the memory limit), ``'timeout'`` (killed at the time
    limit), ``'crashed'`` (the worker died, e.g. killed by the kernel)."""

    key: Any
    ok: bool
    value: Any = None
    error: str = ""
    kind: str = ""
    seconds: float = 0.0


def _limit_memory(memory_mib: int | None) -> None:
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_mib is None:
        return
    try:
        with open("/proc/self/statm") as fh:
            baseline = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        baseline = 0
    limit = baseline + int(memory_mib) * (1 << 20)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _worker_main(conn, memory_mib: int | None, tempdir: str | None) -> None:
    """Worker process loop: receive (fn, args), send ('ok', value) or (kind, message)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if tempdir:
        import tempfile

        os.environ["TMPDIR"] = tempdir
        tempfile.tempdir = tempdir
    _limit_memory(memory_mib)
    conn.send(("ready", None))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        fn, args = msg
        try:
            reply = ("ok", fn(*args))
        except MemoryError:
            reply = ("memory", f"out of memory (limit {memory_mib} MiB over the worker's baseline)")
        except BaseException as exc:  # noqa: BLE001 - report anything, keep the worker
            reply = ("exception", one_line(f"{type(exc).__name__}: {exc}"))
        try:
            conn.send(reply)
        except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable value
            conn.send(("exception", one_line(f"cannot return the result: {type(exc).__name__}: {exc}")))


@dataclass
class _Slot:
    process: Any
    conn: Any
    task: tuple | None = None  # (key, fn, args, timeout)
    started: float = 0.0
    ready: bool = False


class WorkerStartError(RuntimeError):
    """Worker processes die before they are ready (a broken environment):
    nothing can be checked, so the caller stops instead of recording every
    model as failed."""


class IsolatedPool:
    """Worker processes that run one task at a time each, with a time limit per
    task and a memory limit per process; a task that overruns is killed with
    its worker, which is replaced.

    Args:
        workers: processes (0: run tasks inline in this process, without limits,
            for debugging and tests).
        memory_mib: address space each worker may add to its baseline
            (``RLIMIT_AS``; None: unlimited).
        tempdir: the workers' temporary folder (``TMPDIR``).
        start_method: multiprocessing start method (default ``spawn``: no state
            such as a GL context or an SQLite connection is inherited).

    Use :meth:`submit`, then :meth:`wait` until :attr:`pending` is 0; call
    :meth:`close` (or use ``with``). Functions and arguments must be picklable
    (module-level functions).
    """

    def __init__(self, workers: int, memory_mib: int | None = None, tempdir: str | os.PathLike | None = None,
                 start_method: str = "spawn"):
        self.workers = max(0, int(workers))
        self.memory_mib = memory_mib
        self.tempdir = str(tempdir) if tempdir is not None else None
        self._ctx = multiprocessing.get_context(start_method)
        self._queue: list[tuple] = []
        self._slots: list[_Slot] = []
        self._done: list[TaskOutcome] = []
        self.restarts = 0

    def __enter__(self) -> IsolatedPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def pending(self) -> int:
        """Tasks queued or running, plus outcomes not yet returned by :meth:`wait`."""
        return len(self._queue) + sum(1 for s in self._slots if s.task is not None) + len(self._done)

    def submit(self, key: Any, fn: Callable, args: tuple = (), timeout: float | None = None) -> None:
        """Queue ``fn(*args)``; its :class:`TaskOutcome` carries ``key``.
        ``timeout``: seconds of wall-clock time once it starts (None: none)."""
        self._queue.append((key, fn, tuple(args), timeout))
        if self.workers == 0:
            key, fn, args, _ = self._queue.pop(0)
            start = time.perf_counter()
            try:
                self._done.append(TaskOutcome(key, True, fn(*args), seconds=time.perf_counter() - start))
            except MemoryError:
                self._done.append(TaskOutcome(key, False, error="out of memory", kind="memory"))
            except Exception as exc:  # noqa: BLE001
                self._done.append(TaskOutcome(key, False, error=one_line(f"{type(exc).__name__}: {exc}"), kind="exception",
                                              seconds=time.perf_counter() - start))
        else:
            self._dispatch()

    def _start(self) -> _Slot:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_worker_main, args=(child, self.memory_mib, self.tempdir), daemon=True,
                                 name="mmdsynth-worker")
        proc.start()
        child.close()
        slot = _Slot(proc, parent)
        self._slots.append(slot)
        return slot

    def _dispatch(self) -> None:
        while self._queue:
            slot = next((s for s in self._slots if s.task is None), None)
            if slot is None:
                if len(self._slots) >= self.workers:
                    return
                slot = self._start()
            task = self._queue.pop(0)
            try:
                slot.conn.send((task[1], task[2]))
            except (OSError, EOFError, BrokenPipeError):
                self._retire(slot)
                self._queue.insert(0, task)
                continue
            slot.task = task
            slot.started = time.perf_counter()

    def _retire(self, slot: _Slot, kill: bool = False) -> int | None:
        if kill and slot.process.is_alive():
            slot.process.kill()
        slot.process.join(5)
        with contextlib.suppress(OSError):
            slot.conn.close()
        if slot in self._slots:
            self._slots.remove(slot)
        self.restarts += 1
        return slot.process.exitcode

    def wait(self, timeout: float | None = None) -> list[TaskOutcome]:
        """Outcomes that are ready, waiting up to ``timeout`` seconds (None: until
        at least one is) when none is. Kills and replaces workers whose task
        overran its time limit or that died."""
        if self._done:
            out, self._done = self._done, []
            return out
        end = None if timeout is None else time.perf_counter() + timeout
        while True:
            self._dispatch()
            busy = [s for s in self._slots if s.task is not None]
            if not busy:
                return []
            now = time.perf_counter()
            deadlines = [s.started + s.task[3] for s in busy if s.task[3] is not None]
            wait_for = min(deadlines) - now if deadlines else None
            if end is not None:
                wait_for = min(wait_for, end - now) if wait_for is not None else end - now
            if wait_for is not None:  # capped: the OS wait takes at most ~24 days; the loop waits again
                wait_for = min(max(0.0, wait_for), _MAX_WAIT_S)
            handles = [s.conn for s in busy] + [s.process.sentinel for s in busy]
            ready = set(multiprocessing.connection.wait(handles, wait_for))
            now = time.perf_counter()
            out: list[TaskOutcome] = []
            for slot in busy:
                key, _, _, limit = slot.task
                elapsed = now - slot.started
                if slot.conn in ready:
                    try:
                        kind, payload = slot.conn.recv()
                    except (EOFError, OSError):
                        kind, payload = "died", None
                    if kind == "ready":
                        slot.ready = True
                        continue
                    if kind == "died" or not slot.ready:
                        code = self._retire(slot)
                        if not slot.ready:
                            raise WorkerStartError(f"a worker process died while starting ({_death(code)}); "
                                                   "see the messages above")
                        out.append(TaskOutcome(key, False, error=_death(code), kind="crashed", seconds=elapsed))
                        continue
                    slot.task = None
                    if kind == "ok":
                        out.append(TaskOutcome(key, True, payload, seconds=elapsed))
                    else:
                        out.append(TaskOutcome(key, False, error=payload, kind=kind, seconds=elapsed))
                elif slot.process.sentinel in ready:
                    code = self._retire(slot)
                    if not slot.ready:
                        raise WorkerStartError(f"a worker process died while starting ({_death(code)}); "
                                               "see the messages above")
                    out.append(TaskOutcome(key, False, error=_death(code), kind="crashed", seconds=elapsed))
                elif limit is not None and elapsed >= limit:
                    self._retire(slot, kill=True)
                    out.append(TaskOutcome(key, False, error=f"timed out after {limit:g} s (worker stopped)",
                                           kind="timeout", seconds=elapsed))
            if out:
                self._dispatch()
                return out
            if end is not None and time.perf_counter() >= end:
                return []

    def close(self) -> None:
        """Stop every worker (running tasks are abandoned) and drop queued tasks."""
        self._queue.clear()
        for slot in list(self._slots):
            if slot.task is None:
                with contextlib.suppress(OSError, EOFError, BrokenPipeError):
                    slot.conn.send(None)
                slot.process.join(2)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join(5)
            with contextlib.suppress(OSError):
                slot.conn.close()
        self._slots.clear()


def _death(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"worker died (killed by {name}){hint}"
    return f"worker died (exit code {code})"
