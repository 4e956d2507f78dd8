"""The local Ray head's supervisor ends the head it started, however often it is told to stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hpo_service.service.ray_head import READY, end_processes, session_processes

ATTEMPTS = 5
HEAD_START_S = 10.0
SIGNALLING_S = 0.3
SUPERVISOR = [sys.executable, "-m", "hpo_service.service.ray_head"]
STAND_IN_HEAD = ["sh", "-c", "sleep 600 &"]


def test_a_supervisor_told_to_stop_again_and_again_still_ends_its_head(tmp_path: Path) -> None:
    """A SIGKILLed service sends the supervisor its death signal once for each of its threads
    that the supervisor is handed to as they exit, so the supervisor can get SIGTERM again while
    it cleans up. Here it gets a stream of them. The stand-in head is a `sleep` left running in
    the supervisor's session, where `ray start` leaves the head's daemons."""
    log_path = tmp_path / "supervisor.log"
    for attempt in range(ATTEMPTS):
        temp_dir = tmp_path / f"head-{attempt}"
        temp_dir.mkdir()
        with log_path.open("ab") as log:
            supervisor = subprocess.Popen(
                [*SUPERVISOR, str(os.getpid()), str(temp_dir), *STAND_IN_HEAD],
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        try:
            assert supervisor.stdout is not None
            assert supervisor.stdout.readline().decode().strip() == READY
            assert stand_in_head_started(supervisor.pid)
            deadline = time.monotonic() + SIGNALLING_S
            while time.monotonic() < deadline and supervisor.poll() is None:
                supervisor.send_signal(signal.SIGTERM)
            supervisor.wait(30)
            left = session_processes(supervisor.pid)
            assert not left, (attempt, [p.name() for p in left], log_path.read_text()[-2000:])
            assert not temp_dir.exists(), attempt
        finally:
            supervisor.kill()
            supervisor.wait()
            end_processes(session_processes(supervisor.pid), grace=1)


def stand_in_head_started(session: int) -> bool:
    """The stand-in head's `sleep` is running. `sh` returns as soon as it has forked it, so the
    child may be a moment from exec'ing `sleep` when the supervisor says it is ready."""
    deadline = time.monotonic() + HEAD_START_S
    while time.monotonic() < deadline:
        if [p.name() for p in session_processes(session)].count("sleep") == 1:
            return True
        time.sleep(0.01)
    return False
