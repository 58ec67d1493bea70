"""The consumer's handler threads, fed in chunks.

The ORM must not run on the event loop, so every delivery crosses to a handler
thread and back. One hand-off per message costs more than a no-op handler: a
thread wake-up, a future, a GIL switch, a database health check. The pool keeps
what is waiting in one queue and gives each idle thread its share in one go: with
more messages in flight than threads (CATGA["PREFETCH_MULTIPLIER"]), a thread runs
a few deliveries for one hand-off. Jobs submitted with the same `group` callable
run through it together (the dispatcher's group commit: one transaction for them).

A job that runs past its timeout keeps its thread (Python cannot stop it); the
jobs queued behind it in that thread go back to the queue for the other threads.
"""

import collections
import functools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from django.db import close_old_connections, connection, reset_queries

from apps.mediator.storage.hygiene import hygiene

logger = logging.getLogger("catga.worker")

FAST_JOB = 0.002  # seconds per job under which one thread takes every job waiting


class Job:
    """One call, queued for a handler thread; `future` resolves on the event loop."""

    __slots__ = ("args", "func", "future", "group", "kwargs", "owner", "started", "withdrawn")

    def __init__(self, func, args, kwargs, future, group=None):
        self.func, self.args, self.kwargs, self.future, self.group = func, args, kwargs, future, group
        self.started: float | None = None  # time.monotonic() when its thread began it
        self.owner: list | None = None  # the chunk that may run it
        self.withdrawn = False  # timed out before its group reached it: not to be started


class HandlerPool:
    def __init__(self, loop, threads: int):
        self.loop = loop
        self.threads = threads
        self.idle = threads
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="catga-handler")
        self._queue: collections.deque[Job] = collections.deque()
        self._lock = threading.Lock()  # who runs a job: its chunk's thread, or the queue again
        self._scheduled = False
        self.job_seconds = 1.0  # until measured: assume slow jobs, spread over the threads
        self.jobs_done = 0

    def submit(self, func, *args, group=None, **kwargs) -> Job:
        """Queue `func(*args, **kwargs)`; with `group`, jobs of the same group that one thread
        takes together run as `group([(args, kwargs), ...])`, which returns their results."""
        job = Job(func, args, kwargs, self.loop.create_future(), group)
        self._queue.append(job)
        self._schedule()
        return job

    def requeue_waiting(self, job: Job) -> None:
        """`job` ran past its timeout: the jobs waiting behind it in its thread go to other threads."""
        with self._lock:
            job.withdrawn = True  # in a group, waiting behind a stuck group-mate: never to start
            chunk = job.owner or []
            waiting = [j for j in chunk if j.started is None and j.owner is chunk]
            for j in waiting:
                j.owner = None
        self._queue.extendleft(reversed(waiting))
        self._schedule()

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- on the loop -------------------------------------------------------------

    def _schedule(self) -> None:
        # Once per loop iteration, so a fetched batch is split in one go.
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._scheduled = False
        while self._queue and self.idle:
            share = -(-len(self._queue) // self.idle)
            if self.job_seconds < FAST_JOB:
                # Threads running fast jobs side by side only take turns on the GIL; one
                # thread taking them all commits them in one transaction (a bigger group).
                share = len(self._queue)
            chunk = [self._queue.popleft() for _ in range(min(share, len(self._queue)))]
            with self._lock:
                for job in chunk:
                    job.owner = chunk
            self.idle -= 1
            self.loop.run_in_executor(self.executor, self._run_chunk, chunk).add_done_callback(
                functools.partial(self._chunk_done, len(chunk), time.monotonic())
            )

    def _chunk_done(self, jobs: int, began: float, future) -> None:
        self.idle += 1
        self.jobs_done += jobs
        # A moving average of the time per job (hand-off included), which sizes the chunks.
        self.job_seconds += 0.2 * ((time.monotonic() - began) / jobs - self.job_seconds)
        if not future.cancelled() and future.exception() is not None:
            logger.error("a handler thread failed outside any handler", exc_info=future.exception())
        self._dispatch()

    # -- in a handler thread -------------------------------------------------------

    def _run_chunk(self, chunk: list[Job]) -> None:
        """Run a chunk's jobs one after another, with Django's connection hygiene around them.

        close_old_connections() is what Django does around a request; it also makes the next
        query a health check (a round trip to the database), so a busy thread does it at most
        every HYGIENE_INTERVAL, and at once after a database error.
        """
        reset_queries()
        hygiene()
        try:
            index = 0
            while index < len(chunk):
                job = chunk[index]
                together = [job]
                if job.group is not None:
                    while index + len(together) < len(chunk) and chunk[index + len(together)].group == job.group:
                        together.append(chunk[index + len(together)])
                index += len(together)
                with self._lock:
                    # Not those handed to another thread while this one was stuck.
                    together = [j for j in together if j.owner is chunk]
                    now = time.monotonic()
                    for j in together:
                        j.started = now
                if together and job.group is not None:
                    self._run_group(together)  # one alone too: the group's path is the shorter one
                elif together:
                    self._run_one(together[0])
                if connection.errors_occurred:
                    close_old_connections()  # a broken connection is not handed to the next job
        finally:
            if connection.errors_occurred:
                close_old_connections()

    def _run_one(self, job: Job) -> None:
        try:
            result = job.func(*job.args, **job.kwargs)
        except BaseException as exc:  # delivered to the awaiting coroutine
            self.loop.call_soon_threadsafe(_resolve, job.future, None, exc)
        else:
            self.loop.call_soon_threadsafe(_resolve, job.future, result, None)

    def _run_group(self, jobs: list[Job]) -> None:
        try:
            results = jobs[0].group([(job.args, job.kwargs) for job in jobs], lambda i: not jobs[i].withdrawn)
        except Exception:
            # One job's failure is its own: the others run alone, as if never grouped.
            logger.exception("a group of %d jobs failed; running them one by one", len(jobs))
            for job in jobs:
                if not job.withdrawn:
                    self._run_one(job)
        except BaseException as exc:
            for job in jobs:
                self.loop.call_soon_threadsafe(_resolve, job.future, None, exc)
        else:
            for job, result in zip(jobs, results, strict=True):
                self.loop.call_soon_threadsafe(_resolve, job.future, result, None)


def _resolve(future, result, exc) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
