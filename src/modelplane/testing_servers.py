"""Real servers for tests, started on 127.0.0.1 in a new private folder and stopped by their pid:
PostgreSQL from the machine's Debian packages (``apt-get install postgresql``; ``make test``
installs it) and moto's S3-compatible server (``pip install 'moto[server]'``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modelplane.testing import free_port

__all__ = ["PostgresServer", "S3Server", "postgres_server", "s3_server"]

PG_ROOT = Path("/usr/lib/postgresql")  # Debian's layout: <major>/bin/{initdb,postgres}
PG_USER = "modelplane"


def postgres_bin() -> Path:
    found = sorted(PG_ROOT.glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    if not found:
        raise RuntimeError(
            "PostgreSQL is not installed; `make test` installs it (apt-get install postgresql)"
        )
    return found[-1].parent


class PostgresServer:
    """A throwaway PostgreSQL cluster: ``initdb`` into a new folder, the server on a free
    loopback port with trust authentication (loopback only), one database per ``database()``.
    PostgreSQL refuses to run as root: under root it runs as Debian's ``postgres`` user."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.folder = Path(tempfile.mkdtemp(prefix="mp-pg-"))  # private (0700), random name
        self.port = free_port()
        self._user = "postgres" if os.geteuid() == 0 else None
        self._names = itertools.count(1)
        self.process: subprocess.Popen[bytes] | None = None
        if self._user is not None:
            shutil.chown(self.folder, self._user, self._user)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 60.0) -> None:
        if not self.data.exists():
            subprocess.run(
                [str(self.bin / "initdb"), "-D", str(self.data), "-U", PG_USER, "-E", "UTF8",
                 "--auth=trust", "--no-sync", "--no-instructions"],
                user=self._user, check=True, capture_output=True, timeout=120,
            )  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-k", str(self.folder), "-c", "listen_addresses=127.0.0.1",
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=300", "-c", "timezone=UTC"],
                user=self._user, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self._accepts():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def _accepts(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self._dsn("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def _dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={PG_USER} dbname={database}"

    def database(self) -> str:
        """A new, empty database; its SQLAlchemy URL."""
        import psycopg

        name = f"db{next(self._names)}"
        with psycopg.connect(self._dsn("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")  # name made here, never from input
        return self.url(name)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server by its pid (a fast shutdown: SIGINT)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(2)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """Stop it as a crash would (SIGKILL of the postmaster; its backends follow)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(server.folder)


class S3Server:
    """moto's S3 server on a free loopback port; ``env`` is what a client (boto3, modelplane)
    needs to reach it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="mp-s3-"))
        self.process: subprocess.Popen[bytes] | None = None
        self._clients: list[Any] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        # moto accepts any credentials: these open nothing but this test server
        secret = "test"  # noqa: S105  # nosec B105
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip

    def start(self, timeout: float = 30.0) -> None:
        program = Path(sys.executable).parent / "moto_server"
        with (self.folder / "moto.log").open("ab") as log:
            self.process = subprocess.Popen(
                [str(program), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1),
            ):
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                log_text = (self.folder / "moto.log").read_text()[-2000:]
                raise RuntimeError(f"moto's S3 server did not start:\n{log_text}")
            time.sleep(0.1)

    def client(self) -> Any:
        """A boto3 client of this server (closed when the server stops)."""
        import boto3

        env = self.env
        client = boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=env["AWS_DEFAULT_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )  # fmt: skip
        self._clients.append(client)
        return client

    def bucket(self, name: str) -> str:
        """A new bucket; its name."""
        if not self._clients:
            self.client()
        self._clients[0].create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.folder, ignore_errors=True)
