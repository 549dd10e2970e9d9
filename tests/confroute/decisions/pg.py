"""A throwaway PostgreSQL server (Debian's postgresql package) on a free loopback port."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest


def pg_bin() -> Path | None:
    """The newest /usr/lib/postgresql/<v>/bin holding initdb and pg_ctl, if installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@dataclass
class PgServer:
    """A running server: its URL, and stop/start to play an outage."""

    bin: Path
    data: Path
    port: int
    as_user: list[str]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        cmd = [*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), *args]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        opts = (f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c max_connections=50")
        self._ctl("-o", opts, "-l", str(self.data / "server.log"), "-w", "start")

    def stop(self) -> None:
        self._ctl("-m", "immediate", "-w", "stop")


def start_postgres(port: int) -> PgServer:
    """initdb into a fresh directory and start; as user `postgres` when running as root."""
    bin_dir = pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); "
                    "install Debian's `postgresql` package to run the PostgreSQL log tests")
    data = Path(tempfile.mkdtemp(prefix="confroute-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as postgres
        pw = pwd.getpwnam("postgres")
        os.chown(data, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    cmd = [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
           "--no-sync", "--no-instructions"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    server = PgServer(bin_dir, data, port, as_user)
    server.start()
    return server


def remove(server: PgServer) -> None:
    with contextlib.suppress(subprocess.CalledProcessError):  # already stopped by the test
        server.stop()
    shutil.rmtree(server.data, ignore_errors=True)
