"""The Python benchmark's worker for corral: the same task as pool.py, on corral.worker."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))

from corral.worker import run, task


@task
def sum_squares(values):
    return sum(v * v for v in values)


run()
