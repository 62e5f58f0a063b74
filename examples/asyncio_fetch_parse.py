"""asyncio fetches, corral parses: the I/O waits on the event loop, the CPU work runs in
corral's worker processes, and every step prints the pid it ran in.

It starts its own HTTP server on 127.0.0.1 (no internet needed), fetches its pages
concurrently with asyncio streams, and hands each page to corral.Pool to parse (count its
words and find the most common one, a stand-in for real parsing). Awaiting the pool takes no
thread per call; Ctrl-C cancels the awaiting tasks, which drops their queued jobs.

    pip install ./python        # or: PYTHONPATH=python CORRAL_BIN=target/release/corral
    python3 examples/asyncio_fetch_parse.py [PAGES]
"""

import asyncio
import collections
import os
import random
import sys

import corral

WORDS = "pool worker supervisor job result batch crash retry queue signal".split()


def page(number):
    """The body of page `number`: a few thousand words, the same each time."""
    rng = random.Random(number)
    return " ".join(rng.choice(WORDS) for _ in range(20_000)).encode()


def parse(body):
    """The CPU part, in a worker process: word count and the most common word."""
    counts = collections.Counter(body.decode().split())
    word, times = counts.most_common(1)[0]
    return {"words": sum(counts.values()), "top": word, "top_count": times, "pid": os.getpid()}


async def serve(reader, writer):
    """A tiny HTTP server: GET /N answers page N."""
    request = await reader.readline()
    while (await reader.readline()).strip():
        pass
    number = int(request.split()[1].strip(b"/") or 0)
    body = page(number)
    await asyncio.sleep(random.uniform(0.01, 0.05))  # a server's latency
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    await writer.drain()
    writer.close()


async def fetch(port, number):
    """GET /number from the local server, on the event loop."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % number)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    body = await reader.readexactly(length)
    writer.close()
    print(f"fetched page {number:2} ({len(body):6} bytes) in pid {os.getpid()}", flush=True)
    return body


async def fetch_and_parse(pool, port, number):
    body = await fetch(port, number)
    result = await pool.aapply(parse, (body,))
    print(
        f"parsed  page {number:2}: {result['words']} words, {result['top']!r} "
        f"x{result['top_count']}, in pid {result['pid']}",
        flush=True,
    )
    return result


async def main(pages):
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"event loop and server in pid {os.getpid()}", flush=True)
    with corral.Pool(2) as pool:
        results = await asyncio.gather(*(fetch_and_parse(pool, port, n) for n in range(pages)))
    server.close()
    await server.wait_closed()
    workers = sorted({r["pid"] for r in results})
    print(f"{len(results)} pages parsed by the workers {workers}, not by {os.getpid()}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 12))
