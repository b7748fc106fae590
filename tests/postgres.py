"""A real PostgreSQL server for tests: started from Debian's binaries, no Docker, works as root.

`initdb` and `postgres` refuse to run as root, so they run as the `postgres` user with the data
directory in a fresh directory under /dev/shm that it owns (pytest's own temp dirs are 0700 root).
Settings are for tests only (`fsync=off`, `synchronous_commit=off`). The server listens on a unix
socket in that directory; each test gets a fresh database copied from a migrated template (~15 ms).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from mcp_autonomy.pg import schema

TEMPLATE = "migrated_template"


def postgres_bin_dir() -> Path | None:
    """Debian's newest installed PostgreSQL binaries, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _as_postgres() -> dict[str, Any]:
    """Run as the `postgres` user when root (initdb and postgres refuse root)."""
    if os.getuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres"}


class PostgresServer:
    """One throwaway server; `url(db)` is a libpq URL over its unix socket."""

    def __init__(self) -> None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise RuntimeError(
                "PostgreSQL is not installed: `make test` installs Debian's postgresql package"
            )
        self.bin_dir = bin_dir
        base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
        self.root = Path(tempfile.mkdtemp(prefix="mcpa-pg-", dir=base))
        self.data_dir = self.root / "data"
        self.socket_dir = self.root
        self.port = 5432
        self.user = pwd.getpwuid(os.getuid()).pw_name if os.getuid() != 0 else "postgres"
        if os.getuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@/{database}?host={self.socket_dir}&port={self.port}"

    def init(self) -> None:
        subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
                "-U",
                self.user,
            ],
            check=True,
            capture_output=True,
            **_as_postgres(),
        )

    def start(self) -> None:
        """Start (or restart after `stop`) and wait until it accepts connections."""
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - handed to the child process
        self.process = subprocess.Popen(
            [
                str(self.bin_dir / "postgres"),
                "-D",
                str(self.data_dir),
                "-k",
                str(self.socket_dir),
                "-c",
                "listen_addresses=",
                "-c",
                f"port={self.port}",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
            ],
            stdout=log,
            stderr=log,
            **_as_postgres(),
        )
        log.close()
        deadline = time.monotonic() + 15
        while True:
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "PostgreSQL did not start:\n" + (self.root / "server.log").read_text()[-2000:]
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Fast shutdown (what a database outage looks like to the replicas)."""
        if self.process is not None and self.process.poll() is None:
            # SIGINT is PostgreSQL's fast shutdown (SIGTERM waits for every session to end,
            # which a LISTEN connection never does).
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=15)
        self.process = None

    def execute(self, sql: str, database: str = "postgres") -> None:
        with psycopg.connect(self.url(database), autocommit=True) as conn:
            conn.execute(sql.encode())

    def make_template(self) -> None:
        """A database at the current schema, copied by `create_database`."""
        self.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        self.execute(f"CREATE DATABASE {TEMPLATE}")
        with psycopg.connect(self.url(TEMPLATE), autocommit=True) as conn:
            schema.migrate(conn)

    def create_database(self, *, migrated: bool = True) -> str:
        """A fresh database (migrated unless asked not to); returns its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        template = f" TEMPLATE {TEMPLATE}" if migrated else ""
        self.execute(f"CREATE DATABASE {name}{template}")
        return self.url(name)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start_server() -> PostgresServer:
    server = PostgresServer()
    try:
        server.init()
        server.start()
        server.make_template()
    except BaseException:
        server.close()
        raise
    return server
