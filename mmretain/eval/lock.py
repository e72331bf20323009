"""One writer per output directory: a run holds an exclusive lock on ``OUT/.lock`` while it runs.

The lock is ``flock``'s: the operating system releases it when the holder's file closes, at
the latest when its process dies, so a lock left by a run killed with ``kill -9`` is free again
at once and never has to be cleaned up. Under ``accelerate launch`` each process of one run
locks a file of its own rank, so the processes of one run do not shut each other out.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputDirectoryError


@contextmanager
def output_lock(out: Path, rank: int = 0) -> Iterator[None]:
    """Hold the lock of process ``rank`` on the output directory ``out`` (made if missing).

    Raises `OutputDirectoryError` when ``out`` is a file or another run holds the lock.
    """
    if out.exists() and not out.is_dir():
        raise OutputDirectoryError(f"--out {out} is a file; give a directory for the run")
    out.mkdir(parents=True, exist_ok=True)
    with (out / (".lock" if rank == 0 else f".lock-{rank}")).open("a") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputDirectoryError(
                f"another run is writing to {out} now; wait for it to finish (rerunning the "
                "same command then resumes), or give another --out"
            ) from None
        yield
