"""A lean HTTP load generator for the benchmarks: many client processes, raw HTTP/1.1.

Each client process runs an asyncio loop with its own keep-alive connections and writes
pre-encoded requests (headers + multipart body built once); a full httpx client costs
several times more CPU per request, which would cap the offered load on the very cores
the server needs. Every request's bytes differ (a JPEG comment segment carries a
counter), so the server's per-batch image de-duplication (by content hash) never merges
two requests into one backbone pass; the decoded pixels are the same.

* ``closed_loop``: ``procs`` x ``conns`` clients, each sending its next request when the
  previous answer arrives (a 429 waits its ``retry_after_s``, at most 1 s).
* ``open_loop``: arrivals at fixed intervals at ``rate`` req/s in all (whatever the
  answers; a connection is opened when none is idle); latency counts from the *scheduled*
  send time, so a client that falls behind does not hide queueing.

Both count answers by status (0 = connection error or timeout), keep the latencies of
the 200s, and measure only the answers that arrive inside the window after a warm-up.
Client CPU seconds are reported, so a reader can see whether the client was the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import statistics
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection as PipeEnd

BOUNDARY = "clipsegbenchboundary7f3a"
COUNTER_DIGITS = 16
REQUEST_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Body:
    """A multipart body split at its per-request counter: ``head + counter + tail``."""

    head: bytes
    tail: bytes

    @property
    def length(self) -> int:
        return len(self.head) + COUNTER_DIGITS + len(self.tail)


def _comment_at(jpeg: bytes) -> int:
    """Where a COM segment may go: after SOI and a leading APP0 (JFIF) segment."""
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    at = 2
    if jpeg[2:4] == b"\xff\xe0":
        at += 2 + int.from_bytes(jpeg[4:6], "big")
    return at


def text_request_body(jpeg: bytes, prompt: str, fmt: str = "rle") -> Body:
    """The multipart body of ``POST /v1/segment/text`` for one JPEG, one prompt."""
    at = _comment_at(jpeg)
    comment = b"\xff\xfe" + (2 + COUNTER_DIGITS).to_bytes(2, "big")
    fields = "".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in (("prompt", prompt), ("format", fmt))
    )
    image_head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    )
    head = (fields + image_head).encode() + jpeg[:at] + comment
    tail = jpeg[at:] + f"\r\n--{BOUNDARY}--\r\n".encode()
    return Body(head, tail)


def _request_head(host: str, path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


class Connection:
    """One keep-alive HTTP/1.1 connection (answers with Content-Length or chunked)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        return cls(*await asyncio.open_connection(host, port))

    async def request(self, pieces: list[bytes]) -> tuple[int, bytes, bool]:
        """Send ``pieces``; return (status, body, keep-alive)."""
        self.writer.writelines(pieces)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._chunked()
        else:
            body = await self.reader.read()
        return status, body, headers.get("connection", "").lower() != "close"

    async def _chunked(self) -> bytes:
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    def close(self) -> None:
        self.writer.close()


@dataclass(frozen=True)
class Job:
    """What one client process does (picklable: it crosses into a spawned process)."""

    host: str
    port: int
    path: str
    bodies: tuple[Body, ...]
    worker: int
    warmup_s: float
    seconds: float
    conns: int = 0  # closed loop: concurrent clients of this process
    rate: float = 0.0  # open loop: arrivals per second of this process
    phase: float = 0.0  # open loop: first arrival after this fraction of an interval


class _Client:
    """One process's share of the load: sends, counts, keeps the 200s' latencies."""

    def __init__(self, job: Job, start_at: float) -> None:
        self.job = job
        self.start_at = start_at  # time.time() when every process starts
        self.sent = 0
        self.idle: list[Connection] = []
        self.statuses: dict[int, int] = {}
        self.latencies: list[float] = []
        self.bad_answers = 0
        self.checked = False
        self.window = (start_at + job.warmup_s, start_at + job.warmup_s + job.seconds)

    def pieces(self) -> list[bytes]:
        job = self.job
        body = job.bodies[self.sent % len(job.bodies)]
        counter = f"{job.worker:04d}{self.sent:012d}"[-COUNTER_DIGITS:].encode()
        self.sent += 1
        return [_request_head(job.host, job.path, body.length), body.head, counter, body.tail]

    async def connection(self) -> Connection:
        if self.idle:
            return self.idle.pop()
        return await Connection.open(self.job.host, self.job.port)

    async def send(self, began: float, by_send: bool = False) -> tuple[int, bytes]:
        """One request; ``began`` (time.time) is when its latency starts. It counts when
        it ends inside the window (closed loop) or, ``by_send``, was due inside it (open
        loop: every request due in the window is waited for, slow ones included)."""
        status, body = 0, b""
        conn = None
        try:
            conn = await self.connection()
            status, body, keep = await asyncio.wait_for(
                conn.request(self.pieces()), REQUEST_TIMEOUT_S
            )
            if keep:
                self.idle.append(conn)
                conn = None
        except (
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            asyncio.TimeoutError,
            ValueError,
        ):
            status = 0
        finally:
            if conn is not None:
                conn.close()
        done = time.time()
        if self.window[0] <= (began if by_send else done) < self.window[1]:
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status == 200:
                self.latencies.append(done - began)
        if status == 200 and not self.checked:
            self.checked = True
            self.bad_answers += not _has_rle_mask(body)
        return status, body

    async def closed(self) -> None:
        async def one_client() -> None:
            while time.time() < self.window[1]:
                status, body = await self.send(time.time())
                if status == 429:
                    await asyncio.sleep(min(1.0, _retry_after(body)))
                elif status == 0:
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(one_client() for _ in range(self.job.conns)))

    async def open(self) -> None:
        job = self.job
        interval = 1.0 / job.rate
        # Staggered phases: the processes' arrivals interleave instead of coinciding.
        due = self.start_at + interval * job.phase
        tasks = set()
        while due < self.window[1]:
            await asyncio.sleep(max(0.0, due - time.time()))
            task = asyncio.ensure_future(self.send(due, by_send=True))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            due += interval
        if tasks:  # each ends by its own timeout at the latest
            await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT_S + 5)

    async def run(self) -> dict:
        await asyncio.sleep(max(0.0, self.start_at - time.time()))
        cpu = time.process_time()
        await (self.closed() if self.job.conns else self.open())
        for conn in self.idle:
            conn.close()
        return {
            "statuses": self.statuses,
            "latencies": self.latencies,
            "bad_answers": self.bad_answers,
            "cpu_s": time.process_time() - cpu,
            "sent": self.sent,
        }


def _retry_after(body: bytes) -> float:
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return float(json.loads(body)["error"].get("retry_after_s", 1.0))
    return 1.0


def _has_rle_mask(body: bytes) -> bool:
    with contextlib.suppress(ValueError, KeyError, TypeError, IndexError):
        return bool(json.loads(body)["masks"][0]["rle"]["counts"])
    return False


def _process(job: Job, pipe: PipeEnd) -> None:
    """A client process: say it is ready, wait for the common start time, run, report."""
    pipe.send("ready")
    start_at = pipe.recv()
    pipe.send(asyncio.run(_Client(job, start_at).run()))


def _wait(pipe: PipeEnd, until: float, what: str):
    if not pipe.poll(max(0.0, until - time.monotonic())):
        raise TimeoutError(f"a load-generator process did not {what} in time")
    return pipe.recv()


def drive(
    url: str,
    bodies: list[Body],
    *,
    procs: int,
    seconds: float,
    warmup_s: float = 1.0,
    conns: int = 0,
    rate: float = 0.0,
    path: str = "/v1/segment/text",
    start_timeout: float = 60.0,
) -> dict:
    """Run a closed loop (``conns`` per process) or an open loop (``rate`` in all) from
    ``procs`` spawned processes; return the merged counts and latency quantiles.

    The load starts when every process has started (spawned interpreters take a moment),
    so each measures the same window; all of them are stopped on the way out."""
    host, _, port = url.removeprefix("http://").partition(":")
    context = multiprocessing.get_context("spawn")
    pipes: list[PipeEnd] = []
    processes = []
    try:
        for worker in range(procs):
            job = Job(
                host,
                int(port),
                path,
                tuple(bodies),
                worker,
                warmup_s,
                seconds,
                conns,
                rate / procs,
                worker / procs,
            )
            ours, theirs = context.Pipe()
            process = context.Process(target=_process, args=(job, theirs), daemon=True)
            process.start()
            pipes.append(ours)
            processes.append(process)
        ready_by = time.monotonic() + start_timeout
        for pipe in pipes:
            _wait(pipe, ready_by, "start")
        start_at = time.time() + 0.2
        for pipe in pipes:
            pipe.send(start_at)
        done_by = time.monotonic() + 0.2 + warmup_s + seconds + REQUEST_TIMEOUT_S + 15
        parts = [_wait(pipe, done_by, "finish") for pipe in pipes]
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join(timeout=5)
    return merge(parts, seconds)


def merge(parts: list[dict], seconds: float) -> dict:
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    for part in parts:
        for status, count in part["statuses"].items():
            statuses[int(status)] = statuses.get(int(status), 0) + count
        latencies += part["latencies"]
    ok = statuses.get(200, 0)
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else None
    cpu = sum(p["cpu_s"] for p in parts)
    sent = sum(p["sent"] for p in parts)
    return {
        "ok": ok,
        "throughput": ok / seconds,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "non_200": sum(v for k, v in statuses.items() if k != 200),
        "p50_ms": None if quantiles is None else 1000 * quantiles[49],
        "p99_ms": None if quantiles is None else 1000 * quantiles[98],
        "bad_answers": sum(p["bad_answers"] for p in parts),
        "client_cpu_ms_per_request": 1000 * cpu / sent if sent else None,
    }
