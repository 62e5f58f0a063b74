"""corral for Python: a process pool that cannot wedge, on the corral supervisor.

    import corral

    with corral.Pool(processes=8, timeout="30s", retries=2) as pool:
        for path, result in pool.imap_unordered(resize, paths, with_input=True):
            ...

Each map call runs `corral run` as a child of this process, with Python workers that find the
function by module and qualified name (as multiprocessing's spawn start method does: a script's
functions are found by running the script again as `__mp_main__`, so its main code belongs under
`if __name__ == "__main__":`). Arguments and results travel as JSON, or as pickle where JSON
cannot carry them. A worker that crashes or hangs is replaced and its job retried; a job that
fails comes back as a JobFailed exception, and the other jobs go on. If this process dies, even
by SIGKILL, corral and its workers are gone within a second.

Writing a worker for `corral run --worker-cmd` is corral.worker's job.
"""

__all__ = ["JobFailed", "Pool", "corral_binary"]

# Pool and JobFailed load on first use: the workers import this package too, and should not pay
# for the pool's imports (subprocess, threading) in every process they start.
_LAZY = {"JobFailed": "corral._pool", "Pool": "corral._pool", "corral_binary": "corral._binary"}


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
