"""Chaos run of corral: random faults for a set time, then a check that every job line has
exactly one result.

Two kinds of rounds alternate on the same machine:

- resume rounds: `corral run JOBS -o RESULTS --resume` on a job file full of hostile lines,
  while workers are SIGKILLed at random; each round ends by a SIGKILL of corral, a SIGTERM,
  or by finishing; some rounds run with stderr closed. After a SIGKILL, nothing of the run may
  be left (workers, their children, the keeper).
- stdout rounds: a smaller job file run to a pipe whose reader stalls for random spells, with
  workers SIGKILLed at random; the captured output must hold exactly one result per line.
- service rounds: `corral serve` with several clients at once, each with its own ids: clients
  that `corral submit JOBS -o RESULTS --resume` (some SIGKILLed and run again), clients whose
  reader stalls or whose writer trickles, and hostile connections that stay idle, send half a
  line or garbage (each must be closed by the first-line timeout); workers are SIGKILLed at
  random, and the service is SIGKILLed (nothing of it may be left) or SIGTERMed, then started
  again on the same socket, a few times, until a last life lets every client finish. Each
  client's file must hold exactly one result per line of its own job file; a stream that ends
  with the service must hold no result twice and none that is not its own.

Whenever a resume round runs to its end, its results file must hold exactly one result per job
line, and the next round starts a new file; at the end a last `--resume` run finishes the file
in progress, which is checked the same way. Prints the counts of everything done; exits 1 on any violation.
"""

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

SPIN_US = 200


def job_lines(n, rng, repeats, prefix=""):
    """Job lines with their expected result keys: ("id", id) for a job that runs, ("line", L)
    for a line answered without running (malformed, too large, unknown task, and with
    `repeats` a repeated id, which only `--resume` answers by line). Ids start with `prefix`
    (one per client of a service, so that a result sent to the wrong client is noticed);
    without one, the first lines have ids that are hard to compare."""
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
        tag = "%s%d" % (prefix, i)
        if not prefix and i < len(exotic_ids):
            raw = exotic_ids[i]
            lines.append('{"id": %s, "task": "echo", "input": 1, "meta": 1e999}' % raw)
            keys.append(("id", json.loads(raw)))
            continue
        if r < 0.80:
            job_id = "j%s" % tag
            lines.append(
                '{"id": "%s", "task": "square", "input": {"n": %d, "spin_us": %d}}'
                % (job_id, i % 1000, SPIN_US)
            )
        elif r < 0.82:
            job_id = "p%s" % tag
            lines.append('{"id": "%s", "task": "segfault"}' % job_id)
        elif r < 0.8205:
            job_id = "t%s" % tag
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
            lines.append('{"id": "big%s", "task": "echo", "input": "%s"}' % (tag, "x" * 5000))
            job_id = None
        elif r < 0.90:
            lines.append('{"id": "u%s", "task": "no_such_task"}' % tag)
            job_id = None
        elif r < 0.92 and plain_ids and repeats:
            # A repeated id: answered by its line under --resume.
            lines.append('{"id": "%s", "task": "echo", "input": 1}' % rng.choice(plain_ids))
            job_id = None
        else:
            job_id = "e%s" % tag
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
        nothing_left(seen, "corral", problems)
    return finished


def nothing_left(seen, what, problems):
    """Everything of a SIGKILLed `what` (the processes `seen` under it: workers, their
    children, the keeper) is gone within a second or two; what is left is a problem, killed."""
    until = time.monotonic() + 2
    while time.monotonic() < until and any(alive(p) for p in seen):
        time.sleep(0.02)
    left = [p for p in seen if alive(p)]
    if left:
        problems.append("processes %s outlived a SIGKILLed %s" % (left, what))
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


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


# Exit status of `corral submit` when the service went away before every result came.
TEMPFAIL = 75
# The service's --first-line-timeout: a hostile connection must be closed within it (and slack).
FIRST_LINE_S = 1


def serve_args(bin_dir, sock):
    return [
        os.path.join(bin_dir, "corral"),
        "serve",
        "--socket",
        sock,
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
        "--first-line-timeout",
        "%ds" % FIRST_LINE_S,
    ]


def serving(bin_dir, sock):
    """Whether the service on `sock` answers `corral status` with a worker ready."""
    out = subprocess.run(
        [os.path.join(bin_dir, "corral"), "status", "--json", "--socket", sock],
        capture_output=True,
        text=True,
    )
    return out.returncode == 0 and json.loads(out.stdout).get("ready", 0) >= 1


class Client(threading.Thread):
    """One `corral submit` of a service round: `mode` is "resume" (a job file to `-o FILE
    --resume`), "slow_reader" (results read from a pipe that stalls) or "slow_writer" (job
    lines written to its stdin in trickles). Keeps its exit status and, for a stream, what it
    read."""

    def __init__(self, bin_dir, sock, mode, jobs, results, rng):
        super().__init__(daemon=True)
        self.mode, self.rng = mode, random.Random(rng.random())
        self.jobs = jobs
        args = [os.path.join(bin_dir, "corral"), "submit", "-q", "--socket", sock]
        if mode == "resume":
            args += [jobs, "-o", results, "--resume"]
        elif mode == "slow_reader":
            args.append(jobs)
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if mode == "slow_writer" else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL if mode == "resume" else subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.status, self.output, self.said = None, b"", ""

    def run(self):
        if self.mode == "slow_writer":
            threading.Thread(target=self._trickle, daemon=True).start()
        if self.mode != "resume":
            chunks = []
            fd = self.proc.stdout.fileno()
            while True:
                if self.mode == "slow_reader" and self.rng.random() < 0.1:
                    time.sleep(self.rng.uniform(0.1, 0.8))
                data = os.read(fd, 1 << 14)
                if not data:
                    break
                chunks.append(data)
            self.output = b"".join(chunks)
        self.said = self.proc.stderr.read().decode(errors="replace")
        self.status = self.proc.wait()

    def _trickle(self):
        with open(self.jobs, "rb") as f:
            lines = f.read().splitlines(keepends=True)
        try:
            at = 0
            while at < len(lines):
                n = self.rng.randint(1, 40)
                self.proc.stdin.write(b"".join(lines[at : at + n]))
                self.proc.stdin.flush()
                at += n
                time.sleep(self.rng.uniform(0, 0.05))
            self.proc.stdin.close()
        except (BrokenPipeError, ValueError, OSError):
            pass


def hostile(sock, kind, counts, problems):
    """A connection that is no client: `idle` sends nothing and `half` half a line, and the
    service must close it within its first-line timeout; `garbage` sends lines that are not
    JSON and ends its input, and must get a `bad_input` result for each, and the end. A
    connection refused or reset by a dying service is fine too."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(FIRST_LINE_S + 4)
        conn.connect(sock)
        if kind == "half":
            conn.sendall(b'{"id": 1, "task": "squ')
        elif kind == "garbage":
            conn.sendall(b"\x00\xff not a job\n" * 3)
            conn.shutdown(socket.SHUT_WR)
        answers = []
        while data := conn.recv(4096):
            answers.append(data)
        lines = b"".join(answers).splitlines()
        if kind == "garbage" and not all(b'"kind":"bad_input"' in line for line in lines):
            problems.append("garbage got other answers than bad_input: %r" % lines[:3])
        counts["hostile_closed"] += 1
    except socket.timeout:
        problems.append("a hostile connection (%s) was held past the first-line timeout" % kind)
    except OSError:
        counts["hostile_closed"] += 1
    finally:
        conn.close()


def at_most_once(results, keys, what):
    """What a stream cut short by the service may not hold: a result twice, or one not its own."""
    return [p for p in check_exactly_once(results, keys, what) if "has no result" not in p]


def service_round(bin_dir, tmp, rng, counts, problems):
    """One service round (see the module's doc): returns when every resume client's file is
    complete, or on a problem."""
    sock = os.path.join(tmp, "corral.sock")
    resume = []
    for c in range(3):
        lines, keys = job_lines(1_500, rng, repeats=True, prefix="c%d-" % c)
        jobs = os.path.join(tmp, "client%d.jsonl" % c)
        with open(jobs, "w") as f:
            f.write("\n".join(lines) + "\n")
        results = os.path.join(tmp, "client%d.results.jsonl" % c)
        if os.path.exists(results):
            os.remove(results)
        resume.append({"jobs": jobs, "keys": keys, "results": results, "done": False})
    stream_lines, stream_keys = job_lines(400, rng, repeats=False, prefix="s-")
    stream_jobs = os.path.join(tmp, "stream.jsonl")
    with open(stream_jobs, "w") as f:
        f.write("\n".join(stream_lines) + "\n")
    lives = rng.randint(1, 3)
    for life in range(lives + 1):
        last = life == lives
        ending = "finish" if last else rng.choice(["sigkill", "sigkill", "sigterm"])
        log = tempfile.TemporaryFile()
        service = subprocess.Popen(
            serve_args(bin_dir, sock), stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
        counts["service_starts"] += 1
        until = time.monotonic() + 20
        while not serving(bin_dir, sock):
            if time.monotonic() > until or service.poll() is not None:
                log.seek(0)
                problems.append("the service did not start: %s" % log.read().decode()[-1500:])
                service.kill()
                service.wait()
                return
            time.sleep(0.05)
        clients = [
            (entry, Client(bin_dir, sock, "resume", entry["jobs"], entry["results"], rng))
            for entry in resume
            if not entry["done"]
        ]
        streams = [
            Client(bin_dir, sock, mode, stream_jobs, None, rng)
            for mode in ("slow_reader", "slow_writer")
        ]
        for _, client in clients:
            client.start()
        for client in streams:
            client.start()
        hostiles = [
            threading.Thread(target=hostile, args=(sock, kind, counts, problems), daemon=True)
            for kind in rng.sample(["idle", "idle", "half", "garbage"], rng.randint(1, 4))
        ]
        for h in hostiles:
            h.start()
        killer = Killer(service.pid, rng, 0.3, counts)
        killer.start()
        ending_at = time.monotonic() + rng.uniform(0.5, 3)
        dying = False
        seen = []
        while not last and time.monotonic() < ending_at:
            time.sleep(0.02)
            # A client SIGKILLed now and then; it resumes in the next life, or right away.
            if rng.random() < 0.01:
                victims = [c for _, c in clients if c.proc.poll() is None]
                if victims:
                    rng.choice(victims).proc.kill()
                    counts["client_sigkills"] += 1
        if not last:
            seen = descendants(service.pid)
            dying = True
            if ending == "sigkill":
                service.send_signal(signal.SIGKILL)
                counts["service_sigkills"] += 1
            else:
                service.send_signal(signal.SIGTERM)
                counts["service_sigterms"] += 1
        deadline = time.monotonic() + (240 if last else 60)
        for _, client in clients:
            client.join(max(0, deadline - time.monotonic()))
        for client in streams:
            client.join(max(0, deadline - time.monotonic()))
        killer.stop.set()
        killer.join()
        for h in hostiles:
            h.join(FIRST_LINE_S + 6)
        stuck = [c for _, c in clients if c.is_alive()] + [c for c in streams if c.is_alive()]
        for client in stuck:
            problems.append("a %s client did not end (%s)" % (client.mode, ending))
            client.proc.kill()
            client.join()
        if last:
            service.send_signal(signal.SIGTERM)
            counts["service_sigterms"] += 1
        try:
            status = service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            problems.append("the service did not end after %s" % ("SIGTERM" if last else ending))
            service.kill()
            status = service.wait()
        log.seek(0)
        said = log.read().decode(errors="replace")
        if ending != "sigkill" and status != 0:
            problems.append("the service ended with status %s: %s" % (status, said[-1500:]))
        if ending == "sigkill" and seen:
            nothing_left(seen, "service", problems)
        for entry, client in clients:
            counts["client_runs"] += 1
            if client.status in (0, 1):
                what = "service client file %s" % os.path.basename(entry["jobs"])
                check_file(entry["results"], entry["keys"], what, problems)
                entry["done"] = True
                counts["client_files_completed"] += 1
            elif client.status == -signal.SIGKILL:
                pass
            elif client.status != TEMPFAIL or not dying:
                problems.append(
                    "a resume client ended with status %s (%s): %s"
                    % (client.status, ending, client.said[-800:])
                )
        for client in streams:
            counts["stream_clients"] += 1
            results = parse_results(client.output.decode(), "stream client")
            counts["stream_results"] += len(results)
            what = "%s client" % client.mode
            if client.status in (0, 1):
                problems.extend(check_exactly_once(results, stream_keys, what))
                counts["streams_completed"] += 1
            elif client.status == TEMPFAIL and dying:
                problems.extend(at_most_once(results, stream_keys, what))
            else:
                problems.append(
                    "a %s ended with status %s: %s" % (what, client.status, client.said[-800:])
                )
        if problems:
            return
    missing = [e["jobs"] for e in resume if not e["done"]]
    if missing:
        problems.append("service clients never finished: %s" % missing)
    counts["service_rounds"] += 1


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
            "service_rounds",
            "service_starts",
            "service_sigkills",
            "service_sigterms",
            "client_runs",
            "client_sigkills",
            "client_files_completed",
            "stream_clients",
            "streams_completed",
            "stream_results",
            "hostile_closed",
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
            r = rng.random()
            if counts["service_rounds"] == 0 or r < 0.25:
                service_round(args.bin, tmp, rng, counts, problems)
            elif r < 0.85:
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
