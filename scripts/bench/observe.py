"""The cost of what a run reports besides its results, and the report's own cost. Alone:

    python3 scripts/bench/observe.py [--runs N]

(after cargo build --release). It rewrites only the "Joblog, metrics and report" section of
BENCHMARKS.md.

Each round runs, in an order that turns each round, the tiny-job benchmark (1,000,000 tiny
`sum_squares` jobs from a file, `corral run -j 2`, results to /dev/null) five ways: plain,
with `--joblog FILE`, with `--joblog /dev/null` (what the joblog costs but its file's writes),
with `--metrics ADDR` (scraped by nothing: the cost of the notes and the counts), and with
both; then plain and `--joblog FILE` again with the results written to a file, as a batch run
writes them. Every output file is removed before its run, untimed: each run writes its files
anew, as a first run does. The instructions of each way are counted once beside the times,
which noise does not move: callgrind counts every process of the run, the supervisor and its
workers. Then the kernel's cost of writing the joblog's bytes to a new file (1 MiB writes),
measured alone, and `corral report` builds the page of a real run's joblog of 1,000,000 and of
10,000,000 jobs: its time (median), its peak RSS and the page's size.
"""

import argparse
import datetime
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench import CORRAL, ROOT, WORK, generate, log, run_measured, run_timed
from datapath import splice

HEADING = "## Joblog, metrics and report"
JOBS = 1_000_000


def ways(joblog, socket, results):
    """name -> (extra arguments, the results' file)"""
    return {
        "plain": ([], os.devnull),
        "--joblog": (["--joblog", joblog], os.devnull),
        "--joblog /dev/null": (["--joblog", os.devnull], os.devnull),
        "--metrics": (["--metrics", socket], os.devnull),
        "both": (["--joblog", joblog, "--metrics", socket], os.devnull),
        "plain, results to a file": ([], results),
        "--joblog, results to a file": (["--joblog", joblog], results),
    }


def command(jobs, extra):
    return [CORRAL, "run", "-q", "-j", "2", *extra, jobs]


def remove(*paths):
    for path in paths:
        if path != os.devnull and os.path.exists(path):
            os.remove(path)


def instructions(cmd, stdout_path):
    """Instructions of every process of `cmd` (the supervisor, all its threads, and the
    workers it starts), by callgrind; None without valgrind."""
    if not shutil.which("valgrind"):
        return None
    out_dir = os.path.join(WORK, "observe-callgrind")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    with open(stdout_path, "wb") as stdout:
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--trace-children=yes",
                f"--callgrind-out-file={out_dir}/callgrind.%p",
                *cmd,
            ],
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            check=True,
        )
    total = 0
    for name in os.listdir(out_dir):
        with open(os.path.join(out_dir, name)) as f:
            for line in f:
                if line.startswith("summary:"):
                    total += int(line.split()[1])
                    break
    shutil.rmtree(out_dir)
    return total


def write_cost(joblog, rounds=5):
    """Median CPU seconds the kernel takes to write `joblog`'s bytes to a new file, 1 MiB at
    a write, alone."""
    with open(joblog, "rb") as f:
        data = f.read()
    copy = os.path.join(WORK, "observe-copy.joblog")
    times = []
    for _ in range(rounds):
        remove(copy)
        before = resource.getrusage(resource.RUSAGE_SELF)
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        view = memoryview(data)
        for at in range(0, len(data), 1 << 20):
            os.write(fd, view[at : at + (1 << 20)])
        os.close(fd)
        after = resource.getrusage(resource.RUSAGE_SELF)
        times.append((after.ru_stime - before.ru_stime) + (after.ru_utime - before.ru_utime))
    remove(copy)
    return statistics.median(times), len(data)


def report_cost(joblog):
    """Median seconds (3 runs), peak RSS and page size of `corral report JOBLOG`."""
    page = os.path.join(WORK, "observe-report.html")
    times, peak = [], 0
    for _ in range(3):
        started = time.perf_counter()
        out = subprocess.run(
            ["/usr/bin/time", "-f", "%M", CORRAL, "report", joblog, "-o", page],
            stderr=subprocess.PIPE,
            text=True,
            check=True,
        )
        times.append(time.perf_counter() - started)
        peak = max(peak, int(out.stderr.strip().splitlines()[-1]) * 1024)
    return statistics.median(times), peak, os.path.getsize(page)


def measure(runs):
    os.makedirs(WORK, exist_ok=True)
    jobs = generate(os.path.join(WORK, "tiny-1m.jsonl"), "tiny", str(JOBS))
    joblog = os.path.join(WORK, "observe.joblog")
    socket = os.path.join(WORK, "observe-metrics.sock")
    results = os.path.join(WORK, "observe-results.jsonl")
    all_ways = ways(joblog, socket, results)
    found = {name: [] for name in all_ways}
    cpu = {name: [] for name in all_ways}
    for r in range(runs):
        order = list(found)
        order = order[r % len(order) :] + order[: r % len(order)]
        for name in order:
            extra, stdout_path = all_ways[name]
            remove(joblog, results)
            wall, used = run_measured(command(jobs, extra), stdout_path=stdout_path)
            found[name].append(wall)
            cpu[name].append(used)
        log(f"   round {r + 1}: " + ", ".join(f"{n} {found[n][-1]:.3f} s" for n in found))
    counted = {}
    for name, (extra, stdout_path) in all_ways.items():
        remove(joblog, results)
        counted[name] = instructions(command(jobs, extra), stdout_path)
    log(f"   instructions: {counted}")
    remove(joblog, results)
    run_timed(command(jobs, ["--joblog", joblog]))
    writing = write_cost(joblog)
    log(f"   writing the joblog alone: {writing[0] * 1000:.1f} ms of CPU for {writing[1]} bytes")

    # The joblogs of real runs of 1M and 10M tiny jobs.
    big = os.path.join(WORK, "tiny-10m.jsonl")
    if not os.path.exists(big):
        with open(jobs, "rb") as one, open(big, "wb") as out:
            block = one.read()
            for _ in range(10):
                out.write(block)
    reports = {}
    for label, path in (("1,000,000", jobs), ("10,000,000", big)):
        remove(joblog)
        run_timed(command(path, ["--joblog", joblog]))
        joblog_size = os.path.getsize(joblog)
        seconds, peak, size = report_cost(joblog)
        reports[label] = (joblog_size, seconds, peak, size)
        log(f"   report of {label} jobs: {seconds:.2f} s, {peak / 2**20:.1f} MiB, {size} bytes")
    remove(joblog, results)
    return found, cpu, counted, writing, reports


def shown(name):
    """A way's name as the table shows it: its flags as code."""
    flags, _, rest = name.partition(", ")
    text = flags if flags in ("plain", "both") else f"`{flags}`"
    return f"{text}, {rest}" if rest else text


def section(runs, found, cpu, counted, writing, reports):
    med = {name: statistics.median(times) for name, times in found.items()}
    med_cpu = {name: statistics.median(times) for name, times in cpu.items()}
    stamp = datetime.datetime.now(datetime.timezone.utc)
    lines = [
        HEADING,
        "",
        f"Measured {stamp:%Y-%m-%d %H:%M} UTC, interleaved, medians of {runs} rounds: "
        f"`python3 scripts/bench/observe.py --runs {runs}`. The tiny-job benchmark "
        "(1,000,000 tiny `sum_squares` jobs from a file, `corral run -j 2`, results to "
        "/dev/null), without and with what a run can report besides its results; the target "
        "is within 5% of the plain run. Each run writes its files anew (the last run's are "
        "removed first, untimed). CPU is user and system time of every process of the run; "
        "instructions are every process's too, the supervisor's and its workers' "
        "(`valgrind --tool=callgrind --trace-children=yes`, one run each).",
        "",
        "| run | median | / plain | CPU | instructions | / plain |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in found:
        base = "plain, results to a file" if "results to a file" in name else "plain"
        base_i = counted.get(base)
        ratio_i = f"{counted[name] / base_i:.3f}" if counted.get(name) and base_i else "n/a"
        count = f"{counted[name] / 1e6:.0f}M" if counted.get(name) else "n/a"
        lines.append(
            f"| {shown(name)} | {med[name]:.3f} s | {med[name] / med[base]:.3f} | "
            f"{med_cpu[name]:.3f} s | {count} | {ratio_i} |"
        )
    write_cpu, size = writing
    share = write_cpu / med_cpu["plain"]
    lines += [
        "",
        f"A joblog is a second output of one line per job: {size / 2**20:.0f} MiB for these "
        "1,000,000 jobs, more than the results. A block's worker notes its lines for it in "
        "a few bytes per run of lines alike (same task, outcome and millisecond: thousands of "
        "tiny jobs), and the supervisor's joblog thread writes them out, 64 KiB or more at a "
        "time. "
        "`--joblog /dev/null` is that work without the file's writes. Writing the joblog's "
        f"bytes to a new file alone takes the kernel {write_cpu * 1000:.0f} ms of CPU "
        f"(median of 5, 1 MiB writes), {share:.1%} of the whole plain run's CPU: on this "
        "benchmark, whose run is CPU-bound on both cores and writes no other file, that much "
        "of the 5% is spent before a byte is formatted. The metrics are counted in the "
        "workers, a few counts per batch.",
        "",
        "`corral report` of the joblog of a real run of tiny jobs (median of 3 builds; peak RSS "
        "by `/usr/bin/time`):",
        "",
        "| jobs | joblog | build time | peak RSS | page |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, (joblog_size, seconds, peak, size) in reports.items():
        lines.append(
            f"| {label} | {joblog_size / 2**20:.0f} MiB | {seconds:.2f} s | "
            f"{peak / 2**20:.1f} MiB | {size / 1024:.0f} KiB |"
        )
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--output", default=os.path.join(ROOT, "BENCHMARKS.md"))
    args = parser.parse_args()
    found, cpu, counted, writing, reports = measure(args.runs)
    lines = section(args.runs, found, cpu, counted, writing, reports)
    print("\n".join(lines))
    splice(args.output, lines, HEADING)


if __name__ == "__main__":
    main()
