"""Module-level functions for the corral.Pool tests (workers import them by name)."""

import os
import signal
import time

INIT_LOG = "CORRAL_TEST_INIT_LOG"
STATE = {"inits": 0}


def square(x):
    return x * x


def ident(x):
    return x


def fail_on_three(x):
    if x == 3:
        raise ValueError("three is not allowed")
    return x


def die_once(job):
    """SIGKILLs its own worker the first time it sees the marker's job."""
    n, marker = job
    if n == 500 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return n * n


def sleep_for(seconds):
    time.sleep(seconds)
    return os.getpid()


def init(tag):
    STATE["inits"] += 1
    STATE["tag"] = tag
    with open(os.environ[INIT_LOG], "a") as log:
        log.write(f"{os.getpid()}\n")


def who(_):
    return [os.getpid(), STATE["inits"], STATE.get("tag")]


def pid(_):
    return os.getpid()
