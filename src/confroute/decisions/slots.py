"""One spill file per worker process, so that several workers never append to and replay the
same file at once.

`confroute serve --workers N` starts N processes that share one decision log. Each keeps its
records in its own spill file while the log is down: worker slot i uses `<spill>.<i>.jsonl`,
held by an exclusive lock on `<spill>.<i>.lock` for the life of the process. A restarted worker
takes a free slot and replays whatever the slot's previous holder left there.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

_held: list[IO[bytes]] = []  # the lock files stay open (and locked) until the process exits


def claim_spill(path: Path, slots: int) -> Path:
    """The spill file of the first free slot of `slots`; with none free (more processes than
    slots), one named by this process id."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for i in range(slots):
        lock = path.with_name(f"{path.stem}.{i}.lock")
        fh = lock.open("ab")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            continue
        _held.append(fh)
        return path.with_name(f"{path.stem}.{i}{path.suffix}")
    return path.with_name(f"{path.stem}.pid{os.getpid()}{path.suffix}")
