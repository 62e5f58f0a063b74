"""corral for Python: process pools that cannot wedge, on the corral supervisor.

    import corral

    with corral.Pool(processes=8, timeout="30s", retries=2) as pool:
        for path, result in pool.imap_unordered(resize, paths, with_input=True):
            ...

corral.Pool has multiprocessing.Pool's API and corral.ProcessPoolExecutor concurrent.futures'
ProcessPoolExecutor's, each on one `corral` supervisor for its whole life: workers start with
the pool (fresh processes, found and prepared as multiprocessing's spawn start method does: a
script's functions are found by running the script again as `__mp_main__`, so its main code
belongs under `if __name__ == "__main__":`), and every call shares them. Arguments and results
travel as JSON, or as pickle where JSON cannot carry them; a task's exception comes back as
itself. A worker that crashes or hangs is replaced and its job retried; a job that fails on
every attempt fails alone (JobCrashed, JobTimedOut), and the other jobs go on. If this process
dies, even by SIGKILL, corral and its workers are gone within a second.

Writing a worker for `corral run --worker-cmd` is corral.worker's job.
"""

__all__ = [
    "AsyncResult",
    "BrokenPool",
    "JobCancelled",
    "JobCrashed",
    "JobFailed",
    "JobTimedOut",
    "JobUnreadable",
    "Pool",
    "ProcessPoolExecutor",
    "RemoteError",
    "TimeoutError",
    "corral_binary",
    "cpu_count",
]

# The pools load on first use: the workers import this package too, and should not pay for
# the pools' imports (subprocess, threading, concurrent.futures) in every process they start.
_LAZY = {
    "AsyncResult": "corral._pool",
    "Pool": "corral._pool",
    "cpu_count": "corral._pool",
    "ProcessPoolExecutor": "corral._futures",
    "BrokenPool": "corral._errors",
    "JobCancelled": "corral._errors",
    "JobCrashed": "corral._errors",
    "JobFailed": "corral._errors",
    "JobTimedOut": "corral._errors",
    "JobUnreadable": "corral._errors",
    "RemoteError": "corral._errors",
    "TimeoutError": "corral._errors",
    "corral_binary": "corral._binary",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'corral' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_LAZY])
