"""corral.ProcessPoolExecutor: concurrent.futures.ProcessPoolExecutor's API on one corral
supervisor, so it works with concurrent.futures.wait, as_completed and asyncio's
run_in_executor.

Where the stdlib executor breaks for good when a worker is killed (every pending future fails
with BrokenProcessPool), corral replaces the worker and retries the job it held; only a job that
kills its worker on every attempt fails, alone, with JobCrashed, which is also a
BrokenProcessPool (so existing except clauses still catch it), and the executor goes on. An
initializer that raises breaks the executor as the stdlib's does: calls fail with
BrokenProcessPool, caused by the initializer's own exception.

As in the stdlib, a future is running (and can no longer be cancelled) once it has been sent to
the workers; only a few per worker are sent ahead, the rest wait here and can be cancelled.
"""

import concurrent.futures
import sys
import threading
import time

from corral import _supervisor
from corral._calls import StreamCall, StreamedItems
from corral._errors import TimeoutError as PoolTimeoutError
from corral._pool import cpu_count, retries_option, timeout_option
from corral._supervisor import Supervisor

# Jobs sent ahead per worker; the rest wait in the executor, cancellable.
SENT_PER_WORKER = 2


class _Job(concurrent.futures.Future):
    """A future that is also the target of its job (see StreamCall)."""

    def start(self):
        return self.set_running_or_notify_cancel()

    def finish(self, ok, value):
        if self.done():
            return
        if ok:
            self.set_result(value)
        else:
            self.set_exception(value)


class ProcessPoolExecutor(concurrent.futures.Executor):
    """A concurrent.futures executor on a pool of corral-supervised worker processes.

    ProcessPoolExecutor(max_workers=None, mp_context=None, initializer=None, initargs=(), *,
    max_tasks_per_child=None) as in the stdlib (mp_context is accepted and not needed: workers
    are always fresh processes); corral's own keyword-only options: timeout (a job running
    longer has its worker killed, is retried, then fails as JobTimedOut) and retries (extra
    attempts for a job that crashed or timed out).
    """

    def __init__(
        self,
        max_workers=None,
        mp_context=None,
        initializer=None,
        initargs=(),
        *,
        max_tasks_per_child=None,
        timeout=None,
        retries=2,
    ):
        self._shutdown = False
        self._supervisor = None
        if max_workers is None:
            max_workers = cpu_count()
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
            if mp_context is not None and mp_context.get_start_method(allow_none=False) == "fork":
                raise ValueError(
                    "max_tasks_per_child is incompatible with the 'fork' multiprocessing start "
                    "method; supply a different mp_context."
                )
        self._max_workers = max_workers
        self._shutdown_lock = threading.Lock()
        self._supervisor = Supervisor(
            max_workers,
            initializer,
            initargs,
            max_tasks_per_child,
            timeout_option(timeout),
            retries_option(retries),
            executor=True,
        )
        submits = StreamCall(self._supervisor, window=SENT_PER_WORKER * max_workers + 1)
        submits.executor = True
        self._submits = self._supervisor.open(submits)

    def submit(self, fn, /, *args, **kwargs):
        with self._shutdown_lock:
            if self._submits.broken is not None:
                raise self._submits.broken(executor=True)
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _supervisor.interpreter_exiting or sys.is_finalizing():
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            future = _Job()
            self._submits.add(future, fn, args, kwargs)
            return future

    submit.__doc__ = concurrent.futures.Executor.submit.__doc__

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        """Results of fn over the iterables, in order, as the stdlib's map: a failure is
        raised where it stands, and ends the iteration; timeout (seconds from this call) raises
        TimeoutError. chunksize items go to a worker as one job."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end = None if timeout is None else time.monotonic() + timeout
        with self._shutdown_lock:
            if self._submits.broken is not None:
                raise self._submits.broken(executor=True)
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            call = StreamedItems(self._supervisor, fn, zip(*iterables), chunksize, True, True)
            call.executor = True
            self._supervisor.open(call)
        return _results(self._supervisor, call, end)

    def shutdown(self, wait=True, *, cancel_futures=False):
        with self._shutdown_lock:
            self._shutdown = True
            if cancel_futures:
                self._submits.cancel_pending()
        if self._supervisor is not None:
            self._supervisor.close()
            if wait:
                self._supervisor.join()

    shutdown.__doc__ = concurrent.futures.Executor.shutdown.__doc__

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            # Ctrl-C means stop: where the stdlib's executor waits for every job it was given
            # (and the program does not end), corral's drops them and stops its workers now;
            # the futures not done fail with JobCancelled.
            self.shutdown(wait=False, cancel_futures=True)
            self._supervisor.terminate()
            return False
        return super().__exit__(exc_type, exc, traceback)

    def __del__(self):
        supervisor = getattr(self, "_supervisor", None)
        if supervisor is not None and not self._shutdown:
            supervisor.close()


def _results(supervisor, call, end):
    """The generator of map's results (a generator, so that closing it cancels the call)."""
    try:
        while True:
            left = None if end is None else end - time.monotonic()
            try:
                values, failed = call.next(left)
            except StopIteration:
                return
            except PoolTimeoutError:
                raise concurrent.futures.TimeoutError from None
            values.reverse()
            position = 0
            while values:
                # Held by nothing here once handed out (the stdlib's test_free_reference).
                if failed is not None and position in failed:
                    raise values.pop()
                position += 1
                yield values.pop()
    finally:
        supervisor.cancel(call)


ProcessPoolExecutor.__module__ = "corral"
