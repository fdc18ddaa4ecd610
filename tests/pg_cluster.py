"""A throw-away PostgreSQL cluster for the tests (and `make cluster`): real server, real sockets.

`PgCluster.start()` runs scripts/ensure-postgres.sh (installs the Debian packages when absent), initdb's into a
fresh temporary directory as an unprivileged OS user (initdb refuses root; `cloudlayer-test`, created by that
script), starts `postgres` on a free 127.0.0.1 port with scram-sha-256 password authentication only, and makes
a non-superuser role for the application. `create_database()` gives each test an empty database owned by that
role. `stop()` stops the server and removes the directory.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
ENSURE = REPO / "scripts" / "ensure-postgres.sh"
OS_USER = os.environ.get("CLOUDLAYER_PG_OS_USER", "cloudlayer-test")
APP_ROLE = "cloudlayer_app"
START_TIMEOUT = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgDatabase:
    """One database in the cluster, with what a CloudLayer config needs to reach it as the app role."""

    def __init__(self, cluster: PgCluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.dsn = f"host=127.0.0.1 port={cluster.port} dbname={name} user={APP_ROLE}"
        self.password_file = cluster.app_password_file

    def store_section(self, **extra: object) -> dict[str, object]:
        """The `[store]` keys of a host config for this database."""
        return {
            "backend": "postgres",
            "postgres_dsn": self.dsn,
            "postgres_password_file": str(self.password_file),
            **extra,
        }

    def connect(self) -> psycopg.Connection[tuple[object, ...]]:
        """A direct connection as the app role (autocommit), for tests that look at tables."""
        return psycopg.connect(self.dsn, password=self.cluster.app_password, autocommit=True)


class PgCluster:
    def __init__(self) -> None:
        self.bindir = Path()
        self.root = Path()
        self.port = 0
        self.superuser_password = secrets.token_urlsafe(24)
        self.app_password = secrets.token_urlsafe(24)
        self.app_password_file = Path()
        self._dbs = 0
        self._running = False
        self._user: pwd.struct_passwd | None = None

    # ---- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> PgCluster:
        out = subprocess.run(["bash", str(ENSURE)], check=True, capture_output=True, text=True, timeout=900)
        self.bindir = Path(out.stdout.strip().splitlines()[-1])
        user = pwd.getpwnam(OS_USER) if os.geteuid() == 0 else None
        # Under the system temp dir, not pytest's (root's 0700 tree the cluster's user could not enter).
        self.root = Path(tempfile.mkdtemp(prefix="cloudlayer-pg-"))
        data, sock = self.root / "data", self.root / "sock"
        pwfile = self.root / "superuser.pw"
        pwfile.write_text(self.superuser_password + "\n")
        sock.mkdir()
        if user is not None:
            for p in (self.root, sock, pwfile):
                os.chown(p, user.pw_uid, user.pw_gid)
        os.chmod(self.root, 0o700)
        self._as_user(
            user,
            [
                str(self.bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-instructions",
            ],
        )
        pwfile.unlink()
        # Only password logins over loopback TCP; the socket is in our private directory.
        (data / "pg_hba.conf").write_text(
            "local all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n", encoding="utf-8"
        )
        for attempt in range(5):
            self.port = free_port()
            try:
                self._pg_ctl_start(user)
                break
            except subprocess.CalledProcessError:
                if attempt == 4:
                    raise AssertionError(f"postgres did not start: {self.log_tail()}") from None
        self._user = user
        self._running = True
        self.app_password_file = self.root / "app.pw"
        self.app_password_file.write_text(self.app_password + "\n")
        os.chmod(self.app_password_file, 0o600)
        with self.admin() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(APP_ROLE), sql.Literal(self.app_password)
                )
            )
        return self

    def _pg_ctl_start(self, user: pwd.struct_passwd | None) -> None:
        sock = self.root / "sock"
        self._as_user(
            user,
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.root / "data"),
                "-l",
                str(self.root / "postgres.log"),
                "-w",
                "-t",
                str(START_TIMEOUT),
                "-o",
                f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={sock} "
                "-c max_connections=200 -c shared_buffers=64MB",
                "start",
            ],
        )

    def crash(self) -> None:
        """The server dies as in a power cut (`pg_ctl stop -m immediate`: no checkpoint, every backend quits at
        once, crash recovery at the next start); the data directory and the port are kept for `restart()`."""
        assert self._running, "the cluster is not running"
        self._as_user(
            self._user, [str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop"]
        )
        self._running = False

    def restart(self) -> None:
        """Start the server again on the same data directory and port (after `crash()`)."""
        assert not self._running, "the cluster is running"
        self._pg_ctl_start(self._user)
        self._running = True

    def _as_user(self, user: pwd.struct_passwd | None, argv: list[str]) -> None:
        # Its own session: a Ctrl-C at the terminal (make cluster) reaches the supervisor, which stops the
        # server in order, and not postgres directly.
        kwargs: dict[str, object] = {"start_new_session": True}
        if user is not None:
            kwargs |= {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        subprocess.run(argv, check=True, capture_output=True, timeout=START_TIMEOUT + 30, cwd=self.root, **kwargs)  # type: ignore[call-overload,unused-ignore]

    def stop(self) -> None:
        if self._running:
            try:
                ctl = [str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w", "stop"]
                self._as_user(self._user, ctl)
            finally:
                self._running = False
        if self.root != Path() and self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return (self.root / "postgres.log").read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"

    # ---- databases -----------------------------------------------------------------------------------

    def admin(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            dbname=dbname,
            user="postgres",
            password=self.superuser_password,
            autocommit=True,
            connect_timeout=10,
        )

    def create_database(self) -> PgDatabase:
        self._dbs += 1
        name = f"cl_test_{os.getpid()}_{self._dbs}"
        with self.admin() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0").format(
                    sql.Identifier(name), sql.Identifier(APP_ROLE)
                )
            )
        return PgDatabase(self, name)

    def drop_database(self, db: PgDatabase) -> None:
        with self.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db.name)))


def wait_accepting(cluster: PgCluster, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with cluster.admin():
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
