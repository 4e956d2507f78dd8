"""A real `hpo serve` process on a loopback port, for tests that talk HTTP to it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """`hpo serve` in a child process; ``url`` is its base URL, ``client`` an httpx client."""

    def __init__(
        self,
        database_url: str,
        work_dir: Path,
        data_roots: list[Path],
        port: int | None = None,
        **env: str,
    ) -> None:
        self.database_url = database_url
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.work_dir = work_dir
        self.log_path = work_dir / f"server-{self.port}.log"
        self.env = {
            **os.environ,
            "HPO_DATABASE_URL": database_url,
            "HPO_WORK_DIR": str(work_dir),
            "HPO_DATA_ROOTS": os.pathsep.join(str(p) for p in data_roots),
            "HPO_PORT": str(self.port),
            "HPO_SCHEDULER_INTERVAL_S": "0.5",
            **env,  # the caller's settings win
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def start(self, timeout: float = 60) -> Service:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [BIN / "hpo", "serve"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.work_dir,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"hpo serve exited: {self.log_path.read_text()[-3000:]}")
            try:
                if self.client.get("/healthz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"hpo serve did not answer: {self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()

    def wait_for(self, name: str, statuses: set[str], timeout: float = 300) -> dict:
        """Poll a study until its status is one of ``statuses``; returns the last answer."""
        deadline = time.monotonic() + timeout
        while True:
            study = self.client.get(f"/v1/studies/{name}").json()
            if study.get("status") in statuses:
                return study
            if time.monotonic() > deadline:
                raise TimeoutError(f"study {name} still {study.get('status')}: {study}")
            time.sleep(0.5)

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self.client.close()


class RayHead:
    """A Ray head of its own (`ray start --head --block`) on free ports, killed with its process
    group. ``address`` is its GCS address; ``jobs_url`` its job server, if it runs one; ``env``
    joins the environment its processes (and its jobs) get."""

    def __init__(self, folder: Path, jobs: bool = False, **env: str) -> None:
        from ray._private.services import get_node_ip_address

        self.port = free_port()
        self.address = f"{get_node_ip_address()}:{self.port}"
        jobs_port = free_port()
        self.jobs_url = f"http://127.0.0.1:{jobs_port}" if jobs else None
        ports = {  # every port free, so it never meets another Ray on this machine
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--runtime-env-agent-port": free_port(),
            "--metrics-export-port": free_port(),
            "--ray-client-server-port": free_port(),
        }
        command = [
            BIN / "ray",
            "start",
            "--head",
            f"--port={self.port}",
            "--num-cpus=2",
            "--object-store-memory=200000000",
            "--disable-usage-stats",
            "--block",
            *(f"{flag}={port}" for flag, port in ports.items()),
            *(
                [
                    "--include-dashboard=true",
                    "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={jobs_port}",
                ]
                if jobs
                else ["--include-dashboard=false"]
            ),
        ]
        env = dict(
            os.environ,
            RAY_USAGE_STATS_ENABLED="0",
            PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",  # jobs run this venv's python
            **env,
        )
        self.process = subprocess.Popen(
            command,
            env=env,
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def wait(self, timeout: float = 120) -> RayHead:
        """Until the GCS port (and the job server) answer and a driver can connect."""
        deadline = time.monotonic() + timeout
        while not (self._up() and self._accepts_drivers()):
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.kill()
                raise RuntimeError("`ray start --head` did not come up")
            time.sleep(0.5)
        return self

    def _accepts_drivers(self) -> bool:
        probe = "import ray, sys; ray.init(address=sys.argv[1]); ray.shutdown()"
        env = dict(os.environ, RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0")
        try:
            connected = subprocess.run(
                [sys.executable, "-c", probe, self.address],
                env=env,
                capture_output=True,
                timeout=60,
            )
        except subprocess.TimeoutExpired:
            return False
        return connected.returncode == 0

    def _up(self) -> bool:
        host = self.address.rsplit(":", 1)[0]
        with socket.socket() as s:
            if s.connect_ex((host, self.port)) != 0:
                return False
        if self.jobs_url is None:
            return True
        try:
            httpx.get(f"{self.jobs_url}/api/version", timeout=2)  # any answer: it is up
        except httpx.TransportError:
            return False
        return True

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
