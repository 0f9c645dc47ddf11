"""Fixtures for the Kafka client tests: a real `weir server` process with its Kafka
listener on an ephemeral loopback port.

The server binary is $WEIR_BIN, or the newest of target/{release,debug}/weir. The
Python packages come from scripts/kafka-deps. Run with:

    scripts/kafka-deps && cargo build -p weir-cli && python3 -m pytest tests/kafka
"""

import os
import pathlib
import queue
import signal
import subprocess
import tempfile
import threading
import time
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60


def weir_binary():
    explicit = os.environ.get("WEIR_BIN")
    if explicit:
        return explicit
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    found = [p for p in (target / "release" / "weir", target / "debug" / "weir") if p.exists()]
    if not found:
        pytest.fail("no weir binary: build it (cargo build -p weir-cli) or set WEIR_BIN")
    return str(max(found, key=lambda p: p.stat().st_mtime))


class Weir:
    """A running `weir server`."""

    def __init__(self, data_dir, extra_env=None):
        self.data_dir = data_dir
        self.log_path = os.path.join(data_dir, "server.log")
        env = dict(os.environ)
        env.update(
            {
                "WEIR_DATA_DIR": os.path.join(data_dir, "data"),
                "WEIR_NATIVE_ADDR": "127.0.0.1:0",
                "WEIR_KAFKA_ADDR": "127.0.0.1:0",
                "RUST_LOG": env.get("RUST_LOG", "info"),
            }
        )
        env.update(extra_env or {})
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [weir_binary(), "server"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=env,
            text=True,
        )
        lines = queue.Queue()

        def read():
            for line in self.proc.stdout:
                lines.put(line.strip())

        threading.Thread(target=read, daemon=True).start()
        self.native = self.kafka = None
        deadline = time.time() + START_TIMEOUT_S
        while self.kafka is None:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.time()))
            except queue.Empty:
                self.stop()
                pytest.fail("weir server did not start:\n" + self.server_log())
            if line.startswith("weir listening native="):
                self.native = line.split("=", 1)[1]
            elif line.startswith("weir listening kafka="):
                self.kafka = line.split("=", 1)[1]
        self.bootstrap = self.kafka

    def server_log(self):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="session")
def weir():
    with tempfile.TemporaryDirectory(prefix="weir-kafka-") as d:
        server = Weir(d)
        yield server
        server.stop()
        for line in server.server_log().splitlines():
            # A response the listener could not encode is a bug, whatever the client did.
            assert "cannot encode a kafka response" not in line, line


@pytest.fixture
def topic_name():
    """A fresh topic name per test."""
    return "t-" + uuid.uuid4().hex[:12]
