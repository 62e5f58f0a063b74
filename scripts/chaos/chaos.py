"""Chaos run of corral: random faults for a set time, then a check that every job line has
exactly one result.

Two kinds of rounds alternate on the same machine:

- resume rounds: `corral run JOBS -o RESULTS --resume` on a job file full of hostile lines,
  while workers are SIGKILLed at random; each round ends by a SIGKILL of corral, a SIGTERM,
  or by finishing; some rounds run with stderr closed. After a SIGKILL, nothing of the run may
  be left (workers, their children, the keeper).
- stdout rounds: a smaller job file run to a pipe whose reader stalls for random spells, with
  workers SIGKILLed at random; the captured output must hold exactly one result per line.

Whenever a resume round runs to its end, its results file must hold exactly one result per job
line, and the next round starts a new file; at the end a last `--resume` run finishes the file
in progress, which is checked the same way. Prints the counts of everything done; exits 1 on any violation.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

SPIN_US = 200


def job_lines(n, rng, repeats):
    """Job lines with their expected result keys: ("id", id) for a job that runs, ("line", L)
    for a line answered without running (malformed, too large, unknown task, and with
    `repeats` a repeated id, which only `--resume` answers by line)."""
    lines, keys, plain_ids = [], [], []
    exotic_ids = [
        "1e400",
        '"\\ud800"',
        "18446744073709551616",
        "18446744073709551617",
        '"\\u00e9t\\u00e9"',
    ]
    for i in range(n):
        line_no = i + 1
        r = rng.random()
        if i < len(exotic_ids):
            raw = exotic_ids[i]
            lines.append('{"id": %s, "task": "echo", "input": 1, "meta": 1e999}' % raw)
            keys.append(("id", json.loads(raw)))
            continue
        if r < 0.80:
            job_id = "j%d" % i
            lines.append(
                '{"id": "%s", "task": "square", "input": {"n": %d, "spin_us": %d}}'
                % (job_id, i % 1000, SPIN_US)
            )
        elif r < 0.82:
            job_id = "p%d" % i
            lines.append('{"id": "%s", "task": "segfault"}' % job_id)
        elif r < 0.8205:
            job_id = "t%d" % i
            lines.append(
                '{"id": "%s", "task": "square", "input": {"n": 1, "spin_us": 3000000}}' % job_id
            )
        elif r < 0.86:
            lines.append(
                rng.choice(
                    [
                        "{not json",
                        '{"id": [1], "task": "echo"}',
                        "[1, 2]",
                        '{"id": 1,}',
                        '"just a string"',
                    ]
                )
            )
            job_id = None
        elif r < 0.88:
            lines.append('{"id": "big%d", "task": "echo", "input": "%s"}' % (i, "x" * 5000))
            job_id = None
        elif r < 0.90:
            lines.append('{"id": "u%d", "task": "no_such_task"}' % i)
            job_id = None
        elif r < 0.92 and plain_ids and repeats:
            # A repeated id: answered by its line under --resume.
            lines.append('{"id": "%s", "task": "echo", "input": 1}' % rng.choice(plain_ids))
            job_id = None
        else:
            job_id = "e%d" % i
            lines.append(
                '{"id": "%s", "task": "echo", "input": {"k": "\\u2603", "v": [%d]}}' % (job_id, i)
            )
        if job_id is None:
            keys.append(("line", line_no))
        else:
            keys.append(("id", job_id))
            plain_ids.append(job_id)
    return lines, keys


def result_key(result):
    if "line" in result:
        return ("line", result["line"])
    return ("id", result["id"])


def check_exactly_once(results, keys, what):
    expected = {}
    for key in keys:
        expected[key] = expected.get(key, 0) + 1
    problems = []
    got = {}
    for result in results:
        k = result_key(result)
        got[k] = got.get(k, 0) + 1
    for k, n in got.items():
        if n > 1:
            problems.append("%s: %r has %d results" % (what, k, n))
        if k not in expected:
            problems.append("%s: %r is no job line" % (what, k))
    for k in expected:
        if k not in got:
            problems.append("%s: %r has no result" % (what, k))
    return problems


def parse_results(text, what):
    results = []
    for line in text.splitlines():
        try:
            results.append(json.loads(line))
        except ValueError as err:
            raise SystemExit("%s: malformed result line %r: %s" % (what, line[:200], err)) from err
    return results


def children(pid):
    out = []
    try:
        for task in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, task)) as f:
                out.extend(int(p) for p in f.read().split())
    except OSError:
        pass
    return out


def is_keeper(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().split(b"\0")[1:2] == [b"keeper"]
    except OSError:
        return False


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


def descendants(pid):
    out, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


class Killer(threading.Thread):
    """SIGKILLs a random worker of `corral` every so often until told to stop."""

    def __init__(self, corral, rng, mean_gap, counts):
        super().__init__(daemon=True)
        self.corral, self.rng, self.mean_gap, self.counts = corral, rng, mean_gap, counts
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(self.rng.expovariate(1 / self.mean_gap)):
            workers = [p for p in children(self.corral) if not is_keeper(p)]
            if workers:
                try:
                    os.kill(self.rng.choice(workers), signal.SIGKILL)
                    self.counts["worker_kills"] += 1
                except ProcessLookupError:
                    pass


def corral_args(bin_dir, extra):
    return [
        os.path.join(bin_dir, "corral"),
        "run",
        "-q",
        "-j",
        "2",
        "--worker",
        os.path.join(bin_dir, "corral-fault-worker"),
        "--timeout",
        "500ms",
        "--retries",
        "1",
        "--max-job-bytes",
        "4KiB",
        "--max-restarts",
        "1000",
        *extra,
    ]


def resume_round(bin_dir, jobs, results, rng, counts, problems):
    ending = rng.choice(["sigkill", "sigkill", "sigkill", "sigterm", "finish"])
    close_stderr = rng.random() < 0.3
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        corral_args(bin_dir, [jobs, "-o", results, "--resume"]),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE if close_stderr else log,
    )
    if close_stderr:
        proc.stderr.close()
        counts["stderr_closed"] += 1
    killer = Killer(proc.pid, rng, 0.15, counts)
    killer.start()
    deadline = time.monotonic() + rng.uniform(0.3, 2.5)
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    seen = [p for p in descendants(proc.pid)] if proc.poll() is None else []
    if proc.poll() is None:
        if ending == "sigkill":
            proc.send_signal(signal.SIGKILL)
            counts["corral_sigkills"] += 1
        elif ending == "sigterm":
            proc.send_signal(signal.SIGTERM)
            counts["corral_sigterms"] += 1
    try:
        status = proc.wait(timeout=60 if ending == "finish" else 20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        problems.append("a resume round (%s) did not end" % ending)
        status = None
    killer.stop.set()
    killer.join()
    counts["resume_rounds"] += 1
    finished = proc.poll() is not None and ending == "finish" and status in (0, 1)
    log.seek(0)
    said = log.read().decode(errors="replace")
    if status == 2 and "died before finishing any work" in said:
        # Three fresh workers in a row were killed before finishing a batch and with no job to
        # blame: corral stops as it does for a broken worker. A defined outcome, counted.
        counts["start_failure_stops"] += 1
    elif status is not None and status not in (0, 1, 143, -9):
        problems.append("a resume round ended with status %s: %s" % (status, said[-1500:]))
    if ending == "sigkill" and seen:
        # Everything of the run is gone within a second: workers, their children, the keeper.
        until = time.monotonic() + 2
        while time.monotonic() < until and any(alive(p) for p in seen):
            time.sleep(0.02)
        left = [p for p in seen if alive(p)]
        if left:
            problems.append("processes %s outlived a SIGKILLed corral" % left)
            for p in left:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    return finished


def check_file(results, keys, what, problems):
    with open(results) as f:
        final = parse_results(f.read(), what)
    problems.extend(check_exactly_once(final, keys, what))
    return final


def stdout_round(bin_dir, jobs, keys, rng, counts, problems):
    proc = subprocess.Popen(
        corral_args(bin_dir, [jobs]),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    killer = Killer(proc.pid, rng, 0.3, counts)
    killer.start()
    chunks = []
    fd = proc.stdout.fileno()
    while True:
        if rng.random() < 0.05:
            time.sleep(rng.uniform(0.2, 1.5))
            counts["stdout_stalls"] += 1
        data = os.read(fd, 1 << 16)
        if not data:
            break
        chunks.append(data)
    status = proc.wait()
    killer.stop.set()
    killer.join()
    counts["stdout_rounds"] += 1
    if status not in (0, 1):
        problems.append("a stdout round ended with status %s" % status)
    results = parse_results(b"".join(chunks).decode(), "stdout round")
    counts["stdout_results"] += len(results)
    problems.extend(check_exactly_once(results, keys, "stdout round"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", required=True, help="directory of corral and corral-fault-worker")
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--jobs", type=int, default=60_000)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    rng = random.Random(seed)
    counts = {
        k: 0
        for k in [
            "resume_rounds",
            "stdout_rounds",
            "corral_sigkills",
            "corral_sigterms",
            "worker_kills",
            "stdout_stalls",
            "stderr_closed",
            "stdout_results",
            "files_completed",
            "start_failure_stops",
        ]
    }
    problems = []
    with tempfile.TemporaryDirectory(prefix="corral-chaos-") as tmp:
        lines, keys = job_lines(args.jobs, rng, repeats=True)
        jobs = os.path.join(tmp, "jobs.jsonl")
        with open(jobs, "w") as f:
            f.write("\n".join(lines) + "\n")
        small_lines, small_keys = job_lines(4_000, rng, repeats=False)
        small = os.path.join(tmp, "small.jsonl")
        with open(small, "w") as f:
            f.write("\n".join(small_lines) + "\n")
        results = os.path.join(tmp, "results.jsonl")
        started = time.monotonic()
        while time.monotonic() - started < args.seconds and not problems:
            if rng.random() < 0.8:
                if resume_round(args.bin, jobs, results, rng, counts, problems):
                    # A run went to the end: the file must be complete; start a new one.
                    check_file(
                        results, keys, "results file %d" % counts["files_completed"], problems
                    )
                    counts["files_completed"] += 1
                    os.remove(results)
            else:
                stdout_round(args.bin, small, small_keys, rng, counts, problems)
        proc = subprocess.run(
            corral_args(args.bin, [jobs, "-o", results, "--resume"]),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=600,
        )
        if proc.returncode not in (0, 1):
            problems.append(
                "the last run ended with status %d: %s"
                % (proc.returncode, proc.stderr.decode()[-2000:])
            )
        final = check_file(results, keys, "last results file", problems)
        counts["files_completed"] += 1
        kinds = {}
        for r in final:
            kind = "ok" if r["ok"] else r["error"]["kind"]
            kinds[kind] = kinds.get(kind, 0) + 1
    print("seed %d, %.0f s" % (seed, time.monotonic() - started))
    print(
        "job lines: %d; results in the last file: %d; by kind: %s"
        % (len(lines), len(final), json.dumps(kinds, sort_keys=True))
    )
    print("; ".join("%s %d" % kv for kv in counts.items()))
    if problems:
        print("FAILED: %d problems" % len(problems))
        for p in problems[:50]:
            print("  " + p)
        sys.exit(1)
    print("every job line has exactly one result")


if __name__ == "__main__":
    main()
