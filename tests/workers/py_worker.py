"""A Python worker on corral.worker for the integration tests: tasks that square, spin, print,
raise, hang, and report what the per-worker initializer did."""

import os
import subprocess
import time

from corral.worker import run, task

STATE = {}


def init(tag):
    STATE["initialized_by"] = os.getpid()
    STATE["tag"] = tag
    STATE["calls"] = STATE.get("calls", 0) + 1


@task
def square(n):
    # User code that prints must not disturb the protocol.
    print("squaring", n)
    return n * n


@task
def spin_square(job):
    n, micros = job
    until = time.perf_counter() + micros / 1e6
    while time.perf_counter() < until:
        pass
    return n * n


@task
def whoami(_):
    return {"pid": os.getpid(), **STATE, "slot": os.environ.get("CORRAL_WORKER_SLOT")}


@task
def fail(message):
    raise ValueError(message)


@task
def hang(pidfile):
    child = subprocess.Popen(["sleep", "1000"])
    with open(pidfile, "w") as f:
        f.write(str(child.pid))
    time.sleep(1000)


@task
def poison(n):
    if n == "poison":
        os.abort()
    return n * n


@task(name="echo")
def echo_input(value):
    return value


@task
def fsbytes(line):
    # A line that is not UTF-8 comes with its other bytes as lone surrogates.
    return list(os.fsencode(line))


run(initializer=init, initargs=("ready",))
