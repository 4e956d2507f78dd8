"""A study's own driver process, started by the service: ``python -m hpo_service.driver NAME``.

It runs (or resumes) the stored study on Ray and records everything in the database, so a crash
here never touches the API or another study, and the service can start it again.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

from hpo_service.core.errors import HpoError
from hpo_service.core.settings import PARENT_PID_VARIABLE

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """On Linux, get SIGKILL when the service dies, so no orphan driver runs on unseen."""
    parent = os.environ.get(PARENT_PID_VARIABLE)
    if sys.platform != "linux" or parent is None:
        return
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(parent):  # the service died before prctl took effect
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m hpo_service.driver STUDY", file=sys.stderr)
        return 2
    die_with_parent()
    from hpo_service.core.settings import Settings
    from hpo_service.driver.runner import resume_study

    try:
        record = resume_study(args[0], Settings())
    except HpoError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"study {record.name}: {record.status.value}")
    return 0
