"""Benchmark of what a run holds per worker: threads and file descriptors of `corral run -j N`
(counted in /proc/PID/task and /proc/PID/fd mid-run, while every worker has a job), and the
start-up time of N workers (launch to the Nth "worker started" line of `-v`), for N = 2, 64
and 256.

Run alone: python3 scripts/bench/threads.py [ROUNDS] (after cargo build --release); it prints
the markdown.
"""

import os
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORRAL = os.path.join(ROOT, "target", "release", "corral")
WORKERS = (2, 64, 256)
# Milliseconds of CPU per job: long enough that every worker holds one while counted.
SPIN_MS = 20


def _count(path):
    try:
        return len(os.listdir(path))
    except OSError:
        return 0


def one_run(workers, corral=CORRAL):
    """(start-up seconds, threads, fds) of one `corral run -j WORKERS` of the binary `corral`."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [corral, "run", "-v", "-j", str(workers)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    up = threading.Event()
    ready_at = []

    def read_log():
        seen = 0
        for line in proc.stderr:
            if b"worker started" in line:
                seen += 1
                if seen == workers:
                    ready_at.append(time.perf_counter())
                    up.set()

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    jobs = "".join('{"task":"spin","input":%d}\n' % SPIN_MS for _ in range(workers * 2))
    proc.stdin.write(jobs.encode())
    proc.stdin.flush()
    if not up.wait(120):
        proc.kill()
        raise SystemExit(f"-j {workers}: the workers did not all start")
    # Mid-run: every worker started and jobs still queued; the most seen over a few samples.
    threads = fds = 0
    for _ in range(5):
        threads = max(threads, _count(f"/proc/{proc.pid}/task"))
        fds = max(fds, _count(f"/proc/{proc.pid}/fd"))
        time.sleep(0.02)
    proc.stdin.close()
    if proc.wait(timeout=300) != 0:
        raise SystemExit(f"-j {workers}: corral failed")
    reader.join()
    return ready_at[0] - started, threads, fds


def measure(rounds, log=print):
    by_workers = {}
    for workers in WORKERS:
        runs = [one_run(workers) for _ in range(rounds)]
        by_workers[workers] = (
            statistics.median(r[0] for r in runs),
            statistics.median(r[1] for r in runs),
            statistics.median(r[2] for r in runs),
        )
        log(f"   threads: -j {workers} done")
    return by_workers


def report(by_workers, rounds):
    lines = [
        "## Threads and file descriptors per worker",
        "",
        "| workers | threads | fds | start-up of the workers |",
        "| --- | --- | --- | --- |",
    ]
    for workers, (startup, threads, fds) in by_workers.items():
        lines.append(f"| -j {workers} | {threads:.0f} | {fds:.0f} | {startup * 1e3:.0f} ms |")
    lines.append("")
    lines.append(
        f"Medians of {rounds} runs each (`python3 scripts/bench/threads.py {rounds}`): threads "
        "and fds of the corral process mid-run, and the time from launch to the last worker's "
        "hello."
    )
    return lines


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    print("\n".join(report(measure(rounds, log=lambda m: print(m, file=sys.stderr)), rounds)))


if __name__ == "__main__":
    main()
