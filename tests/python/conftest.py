"""A real milkglass server process on free loopback ports, with Titanic published."""

import json
import os
import pathlib
import socket
import subprocess
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("MILKGLASS_BIN", str(ROOT / "target" / "debug" / "milkglass"))
TITANIC = ROOT / "crates" / "milkglass-sample" / "data" / "titanic.csv"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def milkglass(*args: str) -> str:
    return subprocess.run([BIN, *args], check=True, capture_output=True, text=True).stdout


class Server:
    """A server with olivia (owner) and sam (scientist); Titanic published by the CLI unless ``handling`` is None."""

    def __init__(self, handling, review_wait_secs=0):
        self.dir = tempfile.mkdtemp(prefix="milkglass-pytest-")
        self.tokens = {
            name: milkglass("user", "add", name, "--role", role, "--data-dir", self.dir).strip().splitlines()[-1]
            for name, role in [("olivia", "owner"), ("sam", "scientist")]
        }
        http, flight = free_port(), free_port()
        self.http = f"http://127.0.0.1:{http}"
        self.flight = f"grpc://127.0.0.1:{flight}"
        self.process = subprocess.Popen(
            [BIN, "serve", "--data-dir", self.dir, "--http-addr", f"127.0.0.1:{http}",
             "--flight-addr", f"127.0.0.1:{flight}", "--review-wait-secs", str(review_wait_secs)],
            stdout=subprocess.PIPE, text=True,
        )
        assert self.process.stdout.readline().startswith("milkglass serving")
        if handling is None:
            return
        policy = pathlib.Path(self.dir) / "policy.json"
        policy.write_text(json.dumps({
            "safe_zone": {"aggregation": {"min_agg_size": 10}},
            "unsafe_handling": handling,
            "sanitized_columns": ["Name"],
        }))
        milkglass("table", "upload", str(TITANIC), "--name", "titanic", "--policy", str(policy),
                  "--server", self.http, "--token", self.tokens["olivia"])

    def stop(self):
        self.process.kill()
        self.process.wait()


@pytest.fixture
def server_reject():
    server = Server("reject")
    yield server
    server.stop()


@pytest.fixture
def server_log():
    server = Server("log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server_empty():
    """No table yet: the SDK tests publish their own."""
    server = Server(None)
    yield server
    server.stop()


@pytest.fixture
def server_review_slow():
    """Held queries wait 120 s on the server unless the client asks otherwise."""
    server = Server("review", review_wait_secs=120)
    yield server
    server.stop()


@pytest.fixture
def server_review():
    server = Server("review")
    yield server
    server.stop()
