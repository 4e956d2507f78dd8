"""The service's one local Ray head: started once, shared by every study's driver, and gone with
the service, even a SIGKILLed one.

``ray start --head`` runs under a small supervisor (``python -m hpo_service.service.ray_head``) in
a session of its own. The supervisor is a child subreaper (Ray's daemons become its children)
and gets SIGTERM when the service dies (``PR_SET_PDEATHSIG``). Then, on a clean stop, or when the
head's GCS or raylet dies, it ends every process of its session and every descendant: no
gcs_server, raylet, agent or worker outlives the service.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from hpo_service.core.errors import RayUnavailableError

HEAD_START_TIMEOUT_S = 300.0
STOP_GRACE_S = 2.0
READY = "ready"
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_VITAL = ("gcs_server", "raylet")  # the head is gone when one of these is
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalRayHead:
    """A running head: drivers connect to ``address`` with ``environment()``."""

    supervisor: subprocess.Popen[bytes]
    address: str
    token: str

    @classmethod
    def start(
        cls,
        num_cpus: int,
        object_store_bytes: int,
        log_path: Path,
        timeout: float = HEAD_START_TIMEOUT_S,
    ) -> LocalRayHead:
        """Start the head and wait until it accepts drivers.

        Call it from a thread that lives as long as the head is needed: the supervisor is told
        to stop when the thread that started it ends (that is how PR_SET_PDEATHSIG works).
        """
        port = free_port()
        token = secrets.token_hex(32)
        # A temp folder of its own: Ray's logs and sockets, and its "current cluster" file, which
        # `ray start` would otherwise write over for every other Ray user of the machine. Short,
        # as Ray's socket paths below it must fit in 107 characters.
        temp_dir = tempfile.mkdtemp(prefix="hpo-ray-")
        ports = {  # all free ones, so that this head never meets another Ray on the machine
            "--port": port,
            "--ray-client-server-port": free_port(),
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--runtime-env-agent-port": free_port(),
            "--metrics-export-port": free_port(),
        }
        ray_start = [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            "--head",
            f"--num-cpus={num_cpus}",
            f"--object-store-memory={object_store_bytes}",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
            *(f"{flag}={value}" for flag, value in ports.items()),
        ]
        env = {
            **os.environ,
            **_auth_environment(token),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        env.pop("RAY_ADDRESS", None)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            supervisor = subprocess.Popen(
                [sys.executable, "-m", __name__, str(os.getpid()), temp_dir, *ray_start],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        head = cls(supervisor, f"127.0.0.1:{port}", token)
        answer = head._first_line(timeout)
        if answer != READY:
            head.stop()
            raise RayUnavailableError(
                f"the service's local Ray head did not start ({answer or 'no answer'} within "
                f"{timeout:.0f} s); its output is in {log_path}"
            )
        return head

    def _first_line(self, timeout: float) -> str:
        pipe = self.supervisor.stdout
        assert pipe is not None
        try:
            readable, _, _ = select.select([pipe], [], [], timeout)
            return pipe.readline().decode(errors="replace").strip() if readable else ""
        finally:
            pipe.close()

    def environment(self) -> dict[str, str]:
        """What a driver needs to join this head (``HPO_RAY_ADDRESS`` and Ray's token), and
        that it never gains nodes."""
        return {
            "HPO_RAY_ADDRESS": self.address,
            "HPO_RAY_FIXED_SIZE": "true",
            **_auth_environment(self.token),
        }

    def alive(self) -> bool:
        return self.supervisor.poll() is None

    def stop(self, timeout: float = 30) -> None:
        """End the head and every process it started."""
        if self.supervisor.poll() is None:
            self.supervisor.terminate()
            try:
                self.supervisor.wait(timeout)
            except subprocess.TimeoutExpired:
                self.supervisor.kill()
                self.supervisor.wait()
        # A backstop if the supervisor died first: its session is the head's.
        end_processes(session_processes(self.supervisor.pid), STOP_GRACE_S)


def _auth_environment(token: str) -> dict[str, str]:
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}


def session_processes(session: int) -> list[psutil.Process]:
    """The processes of a session, this one excluded."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid != os.getpid() and os.getsid(process.pid) == session:
                found.append(process)
        except (ProcessLookupError, PermissionError):
            continue
    return found


def end_processes(processes: list[psutil.Process], grace: float) -> None:
    """SIGTERM, then SIGKILL for those still running after ``grace`` seconds."""
    for process in processes:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(processes, timeout=grace)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=grace)


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: object) -> None:
    """Raise ``_Stop``, once. A SIGKILLed service can send its death signal more than once (once
    for each of its threads that the supervisor is handed to as they exit); a second ``_Stop``
    raised during the clean-up would cut it short and leave the head running."""
    _on_stop_signals(_already_stopping)
    raise _Stop(signal.Signals(signum).name)


def _already_stopping(signum: int, frame: object) -> None:
    """Stop signals while stopping: nothing more to do. (A handler, not SIG_IGN: Python reports
    a signal that arrived just before SIG_IGN replaced its handler as an error.)"""


def _on_stop_signals(handler: Callable[[int, object], None]) -> None:
    for signum in _STOP_SIGNALS:
        signal.signal(signum, handler)


def supervise(parent: int, temp_dir: str, ray_start: list[str]) -> int:
    """The supervisor: start the head, say ``ready``, and end it all when told or orphaned,
    then remove the head's ``temp_dir``."""
    _on_stop_signals(_raise_stop)
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1)
    code = 0
    try:
        if os.getppid() != parent:  # the service died before prctl took effect
            return 1
        started = subprocess.run(ray_start, stdin=subprocess.DEVNULL, stdout=sys.stderr)
        if started.returncode != 0:
            print(f"`ray start` exited with {started.returncode}", flush=True)
            return 1
        vital = [p for p in psutil.Process().children() if p.name() in _VITAL]
        print(READY, flush=True)
        while all(_running(process) for process in vital):
            _reap()
            time.sleep(1)
        print(f"the Ray head's {[p.name() for p in vital]} stopped", file=sys.stderr)
        code = 1
    except _Stop as stop:
        print(f"stopping the Ray head on {stop}", file=sys.stderr)
    finally:
        _on_stop_signals(_already_stopping)
        end_processes(
            list({*session_processes(os.getsid(0)), *psutil.Process().children(recursive=True)}),
            STOP_GRACE_S,
        )
        _reap()
        shutil.rmtree(temp_dir, ignore_errors=True)
    return code


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _reap() -> None:
    """Collect the exit status of any ended child (orphans of the head become ours)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


if __name__ == "__main__":
    sys.exit(supervise(int(sys.argv[1]), sys.argv[2], sys.argv[3:]))
