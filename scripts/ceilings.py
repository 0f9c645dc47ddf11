#!/usr/bin/env python3
"""What this machine allows a broker's bulk data paths, with no broker work at all.

produce: a client process sends 1 MiB buffers over loopback TCP; a server process receives
         them and appends them to a new file (page cache, no fsync). Any broker that takes
         messages over TCP and writes them through the page cache does at least this.
consume: a server process reads a file (already in the page cache) in 1 MiB chunks and
         sends them over loopback TCP; a client process receives and discards them. Any
         broker that serves a log from the page cache through a socket does at least this.

latency: a client process sends 100 bytes every 200 µs (5,000/s) over loopback TCP and a
         server process echoes them: the round trip's percentiles, two thread wake-ups
         each (Python's own cost included, so a floor for a broker is below this).
durable: the disk's part of a durable acknowledgement at 5,000 messages/s, with no
         network and perfect group commit: 100-byte messages fall due every 200 µs; one
         loop appends all that are due to a file and fdatasyncs it, again and again. A
         message is durable when the first fdatasync that began after it fell due ends.
         A broker with fsync `always` cannot acknowledge sooner than this; end-to-end
         latency adds the network and the consumer.

Both ends are separate processes, like `weir bench` and its broker, and share the same
cores. Prints each run and the median in MB/s (10^6 bytes).

    python3 scripts/ceilings.py DIR [--mib 2048] [--runs 5]

DIR must be on the file system of the broker's data directory; the script writes a file
of --mib MiB there and removes it.
"""
import argparse
import os
import socket
import statistics
import sys
import time

CHUNK = 1 << 20


def pair(serve):
    """Forks a server process that runs `serve(conn)` on one loopback connection; returns
    its pid and the client's socket (TCP_NODELAY on both ends)."""
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    pid = os.fork()
    if pid == 0:
        conn, _ = lsock.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        serve(conn)
        os._exit(0)
    lsock.close()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return pid, sock


def produce(path, total):
    def serve(conn):
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        off = 0
        while True:
            n = conn.recv_into(buf)
            if n == 0:
                break
            os.pwrite(fd, view[:n], off)
            off += n
        os.close(fd)
        conn.sendall(b"k")

    start = time.monotonic()
    pid, sock = pair(serve)
    data = b"x" * CHUNK
    sent = 0
    while sent < total:
        sock.sendall(data)
        sent += CHUNK
    sock.shutdown(socket.SHUT_WR)
    sock.recv(1)
    os.waitpid(pid, 0)
    return sent / (time.monotonic() - start) / 1e6


def consume(path, total):
    def serve(conn):
        fd = os.open(path, os.O_RDONLY)
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        off = 0
        while off < total:
            n = os.preadv(fd, [buf], off)
            if n == 0:
                break
            conn.sendall(view[:n])
            off += n
        conn.close()

    start = time.monotonic()
    pid, sock = pair(serve)
    buf = bytearray(CHUNK)
    got = 0
    while True:
        n = sock.recv_into(buf)
        if n == 0:
            break
        got += n
    os.waitpid(pid, 0)
    if got < total:
        sys.exit(f"consume: received {got} of {total} bytes")
    return got / (time.monotonic() - start) / 1e6


def latency(rate=5000, count=25000):
    def serve(conn):
        while True:
            msg = conn.recv(100, socket.MSG_WAITALL)
            if len(msg) < 100:
                return
            conn.sendall(msg)

    pid, sock = pair(serve)
    msg = b"x" * 100
    interval = 1.0 / rate
    start = time.monotonic()
    rtts = []
    for i in range(count):
        wait = start + i * interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        t0 = time.monotonic()
        sock.sendall(msg)
        sock.recv(100, socket.MSG_WAITALL)
        rtts.append(time.monotonic() - t0)
    sock.close()
    os.waitpid(pid, 0)
    rtts.sort()
    pick = lambda q: rtts[min(len(rtts) - 1, int(q * len(rtts)))] * 1e6
    return pick(0.5), pick(0.99), pick(0.999), rtts[-1] * 1e6


def durable(path, rate=5000, count=25000, size=100):
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    interval = 1.0 / rate
    start = time.monotonic()
    lats = []
    synced = 0  # messages made durable so far
    try:
        while synced < count:
            due = min(count, int((time.monotonic() - start) / interval) + 1)
            if due == synced:
                time.sleep(max(0.0, start + synced * interval - time.monotonic()))
                continue
            os.write(fd, b"x" * (size * (due - synced)))
            os.fdatasync(fd)
            done = time.monotonic()
            lats.extend(done - (start + i * interval) for i in range(synced, due))
            synced = due
    finally:
        os.close(fd)
        os.remove(path)
    lats.sort()
    pick = lambda q: lats[min(len(lats) - 1, int(q * len(lats)))] * 1e6
    return pick(0.5), pick(0.99), pick(0.999), lats[-1] * 1e6


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dir")
    p.add_argument("--mib", type=int, default=2048)
    p.add_argument("--runs", type=int, default=5)
    a = p.parse_args()
    if not 1 <= a.mib <= 65536 or not 1 <= a.runs <= 100:
        sys.exit("--mib must be 1..65536 and --runs 1..100")
    path = os.path.join(a.dir, f"weir-ceilings-{os.getpid()}")
    total = a.mib * CHUNK
    try:
        for name, f in (("produce", produce), ("consume", consume)):
            f(path, total)  # warm-up: the file's pages are in the cache from here on
            runs = [f(path, total) for _ in range(a.runs)]
            shown = " ".join(f"{r:.0f}" for r in runs)
            print(f"{name}: median {statistics.median(runs):.0f} MB/s (runs: {shown})")
        p50, p99, p999, top = latency()
        print(f"latency: round trip at 5,000/s p50 {p50:.0f} µs, p99 {p99:.0f}, "
              f"p99.9 {p999:.0f}, max {top:.0f}")
        p50, p99, p999, top = durable(path)
        print(f"durable: appended and fdatasynced at 5,000/s p50 {p50:.0f} µs, p99 {p99:.0f}, "
              f"p99.9 {p999:.0f}, max {top:.0f}")
    finally:
        if os.path.exists(path):
            os.remove(path)


if __name__ == "__main__":
    main()
