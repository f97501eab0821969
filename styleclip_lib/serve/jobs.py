"""A small bounded job runner: worker threads, a bounded queue, cancellation, expiry.

No web framework here; the app maps :class:`QueueFull` to ``429`` and unknown ids to ``404``.

* ``submit(kind, fn, total=...)`` queues ``fn(job)``; :class:`QueueFull` when ``max_queue`` jobs
  already wait (the caller answers 429 + Retry-After).  ``fn`` reports progress with
  ``job.update(step, **info)`` and polls ``job.cancelled`` (e.g. an optimisation callback returns
  ``not job.cancelled``); its return value becomes ``job.result``.
* ``cancel(id)``: a queued job is cancelled at once; a running one when its function next looks
  at ``job.cancelled``.
* Finished jobs (succeeded / failed / cancelled) are kept ``ttl_s`` seconds and at most
  ``max_jobs`` of them (oldest dropped first), so memory stays bounded whether or not a client
  ever comes back for the result.
"""
from __future__ import annotations

import atexit
import collections
import logging
import secrets
import threading
import time
import traceback
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

__all__ = ["Job", "JobManager", "QueueFull", "JobCancelled", "ACTIVE", "FINISHED"]

log = logging.getLogger("styleclip_lib.serve.jobs")

ACTIVE = ("queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")


class QueueFull(RuntimeError):
    """Every worker is busy and the waiting queue is full."""


class JobCancelled(Exception):
    """Raised inside a job function to stop because the job was cancelled."""


@dataclass
class Job:
    id: str
    kind: str
    total: int = 0
    params: dict = field(default_factory=dict)
    status: str = "queued"
    step: int = 0
    info: dict = field(default_factory=dict)
    result: Any = None
    error: Optional[dict] = None
    created_at: float = field(default_factory=time.time)
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    expires_at: Optional[float] = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _fn: Optional[Callable[["Job"], Any]] = field(default=None, repr=False)

    @property
    def cancelled(self) -> bool:
        """True once cancellation was asked for (job functions poll this)."""
        return self._cancel.is_set()

    def update(self, step: int, **info: Any) -> bool:
        """Record progress; returns ``False`` when the job should stop (cancelled)."""
        self.step = int(step)
        if info:
            self.info = {**self.info, **info}
        return not self._cancel.is_set()

    def check(self) -> None:
        """Raise :class:`JobCancelled` if the job was cancelled."""
        if self._cancel.is_set():
            raise JobCancelled()

    def to_dict(self) -> dict:
        d = {
            "id": self.id, "kind": self.kind, "status": self.status, "step": self.step, "total": self.total,
            "progress": round(min(1.0, self.step / self.total), 4) if self.total else (1.0 if self.status == "succeeded" else 0.0),
            "params": self.params, "info": self.info, "created_at": self.created_at, "started_at": self.started_at,
            "finished_at": self.finished_at, "expires_at": self.expires_at,
        }
        if self.status == "running" and self.cancelled:
            d["status"] = "cancelling"
        if self.status == "succeeded":
            d["result"] = self.result
        if self.error is not None:
            d["error"] = self.error
        return d


class JobManager:
    """``workers`` threads, at most ``max_queue`` waiting jobs, finished jobs kept ``ttl_s`` s (≤ ``max_jobs``).

    ``error_mapper(exc) -> dict`` turns a job's exception into the public error document
    (default: the exception type and message for ``ValueError``, a generic text otherwise).
    """

    def __init__(self, workers: int = 1, max_queue: int = 8, ttl_s: float = 3600.0, max_jobs: int = 256,
                 error_mapper: Optional[Callable[[BaseException], dict]] = None, name: str = "styleclip-job"):
        self.workers, self.max_queue, self.ttl_s, self.max_jobs = int(workers), int(max_queue), float(ttl_s), int(max_jobs)
        self.error_mapper = error_mapper or _default_error
        self.name = name
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._jobs: dict[str, Job] = {}
        self._queue: collections.deque[Job] = collections.deque()
        self._finished: collections.deque[str] = collections.deque()
        self._threads: list[threading.Thread] = []
        self._running = 0
        self._stopped = False
        _MANAGERS.add(self)

    # ------------------------------------------------------------------ threads
    def _ensure_threads(self) -> None:
        self._threads = [t for t in self._threads if t.is_alive()]
        while len(self._threads) < self.workers:
            t = threading.Thread(target=self._worker, name=f"{self.name}-{len(self._threads)}", daemon=True)
            t.start()
            self._threads.append(t)

    def _worker(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopped:
                    self._wake.wait(timeout=5.0)
                    self._sweep_locked()
                if self._stopped:
                    return
                job = self._queue.popleft()
                if job.status != "queued":  # cancelled while waiting
                    continue
                job.status, job.started_at = "running", time.time()
                self._running += 1
            self._run(job)

    def _run(self, job: Job) -> None:
        status, result, error = "succeeded", None, None
        try:
            job.check()
            result = job._fn(job)
            if job.cancelled:
                status = "cancelled"
        except JobCancelled:
            status = "cancelled"
        except BaseException as e:  # noqa: BLE001 - a job must never kill its worker
            status, error = "failed", self.error_mapper(e)
            if not isinstance(e, (ValueError, FileNotFoundError)):
                log.error("job %s (%s) failed:\n%s", job.id, job.kind, traceback.format_exc())
        with self._lock:
            self._running -= 1
            job.status = status
            job.result = result if status == "succeeded" else None
            job.error = error
            self._finish_locked(job)

    def _finish_locked(self, job: Job) -> None:
        job._fn = None  # drop the closure (and what it holds: images, tensors)
        job.finished_at = time.time()
        job.expires_at = job.finished_at + self.ttl_s
        self._finished.append(job.id)
        self._sweep_locked()

    def _sweep_locked(self, now: Optional[float] = None) -> None:
        now = time.time() if now is None else now
        # finished ids are in finishing order, so expiry and the count cap both drop from the left
        while self._finished:
            jid = self._finished[0]
            job = self._jobs.get(jid)
            if job is None:
                self._finished.popleft()
                continue
            if len(self._finished) > self.max_jobs or (job.expires_at is not None and job.expires_at <= now):
                self._finished.popleft()
                del self._jobs[jid]
                continue
            break

    # ------------------------------------------------------------------ API
    def start(self) -> None:
        """(Re)open the runner after :meth:`shutdown` (an app served again); threads start on demand."""
        with self._lock:
            self._stopped = False

    def submit(self, kind: str, fn: Callable[[Job], Any], total: int = 0, params: Optional[dict] = None) -> Job:
        """Queue ``fn(job)``; raises :class:`QueueFull` beyond capacity."""
        with self._lock:
            if self._stopped:
                raise QueueFull("the job runner is shutting down")
            self._sweep_locked()
            waiting = sum(1 for j in self._queue if j.status == "queued")
            if self._running + waiting >= self.workers + self.max_queue:
                raise QueueFull(f"{self._running} jobs running and {waiting} waiting (max_queue={self.max_queue})")
            job = Job(id=secrets.token_urlsafe(12), kind=kind, total=int(total), params=dict(params or {}), _fn=fn)
            self._jobs[job.id] = job
            self._queue.append(job)
            self._ensure_threads()
            self._wake.notify()
            return job

    def get(self, job_id: str) -> Optional[Job]:
        with self._lock:
            self._sweep_locked()
            return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> Optional[Job]:
        """Ask ``job_id`` to stop (a queued job stops at once).  None when unknown."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            job._cancel.set()
            if job.status == "queued":
                job.status = "cancelled"
                try:
                    self._queue.remove(job)
                except ValueError:
                    pass
                self._finish_locked(job)
            return job

    def delete(self, job_id: str) -> bool:
        """Forget a finished job now (its result is freed).  False when unknown or still active."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status in ACTIVE:
                return False
            del self._jobs[job_id]
            try:
                self._finished.remove(job_id)
            except ValueError:
                pass
            return True

    def stats(self) -> dict:
        with self._lock:
            self._sweep_locked()
            queued = sum(1 for j in self._queue if j.status == "queued")
            return {"running": self._running, "queued": queued, "stored": len(self._jobs), "workers": self.workers,
                    "max_queue": self.max_queue, "max_jobs": self.max_jobs, "ttl_s": self.ttl_s}

    def sweep(self, now: Optional[float] = None) -> None:
        with self._lock:
            self._sweep_locked(now)

    def shutdown(self, cancel: bool = True, timeout: float = 5.0) -> None:
        """Stop the workers (cancelling running and queued jobs by default)."""
        with self._lock:
            self._stopped = True
            if cancel:
                for job in list(self._jobs.values()):
                    if job.status in ACTIVE:
                        job._cancel.set()
                for job in list(self._queue):
                    if job.status == "queued":
                        job.status = "cancelled"
                        self._finish_locked(job)
                self._queue.clear()
            self._wake.notify_all()
        deadline = time.time() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.time()))


_MANAGERS: "weakref.WeakSet[JobManager]" = weakref.WeakSet()


@atexit.register
def _shutdown_all() -> None:
    # Stop worker threads before the interpreter tears down: a daemon thread killed inside
    # torch's C++ code aborts the process ("terminate called without an active exception").
    for m in list(_MANAGERS):
        try:
            m.shutdown(cancel=True, timeout=10.0)
        except Exception:  # noqa: BLE001
            pass


def _default_error(e: BaseException) -> dict:
    if isinstance(e, ValueError):
        return {"code": "invalid_request", "message": str(e)}
    return {"code": "internal_error", "message": f"the job failed ({type(e).__name__}); see the server log"}
