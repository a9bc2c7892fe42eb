"""The FTP folder connector (seed: "Excel ou .txt público: o Middleware acessa uma pasta
hospedada num servidor online via FTP"): each run lists a folder on the customer's FTP
server, takes the CSV/.txt/.xlsx files it has not taken yet, and publishes their rows
exactly as a file drop over HTTP would (``file_drops``: same parser, same row checks, same
event ids).

- **Which files are new.** A file's identity is its name, size and modification time
  (``MLSD``; servers without it are asked ``NLST`` + ``SIZE`` + ``MDTM``). The identities
  taken are the source's ledger in ``pull_cursors`` (see ``runs.remember_files``); a file
  whose identity is in it is not taken again, one whose size or time changed is.
- **Files still being written** are left for a later run: one modified less than
  ``settle_s`` ago, or whose size or time changed between two listings ``recheck_s`` apart
  (an ERP exporting over a slow link writes for minutes, and half a file parses fine).
- **A file is remembered only after Kafka has it.** Its rows are published and
  acknowledged (``acks=all``) before its ledger entry is written; a crash or a broker away
  in between means the next run takes it again, with the same event ids (they come from
  the file's digest), so the transform drops the repeat.
- **One bad file never blocks the others.** A file that cannot be parsed, names no known
  table, or has no valid row is remembered *with its error* (shown in the run's ``error``
  and ``rejected``) and not retried until it changes; the run goes on with the next file.
  A file the server refuses to send (5xx) is reported and retried next run.
- **The server is unstable** (the seed says so): every operation has ``timeout_s``; losing
  the connection fails the run (``failed``, with the server's answer), which leaves what
  was not remembered to the next run. ftplib blocks, so each call runs in a thread.

Errors and logs name the source, host and user, never the password.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ftplib
import logging
import posixpath
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from ponte.ingest import file_drops
from ponte.ingest.publisher import BrokerUnavailable, EventPublisher
from ponte.ingest.pulls import runs
from ponte.ingest.pulls.rest_poller import PullFailed
from ponte.ingest.pulls.runs import RunRecord
from ponte.shared.db import DbConnection
from ponte.shared.events import Operation
from ponte.shared.mapping import Mapping, mapping_for
from ponte.shared.pulls import FtpFolder, FtpFolderPullDefinition
from ponte.shared.rejections import Rejection
from ponte.shared.source_kinds import SourceKind
from ponte.shared.sources import SourceConfig, fetch_sources

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 1000
"""A run's ``error`` lists the refused files; past this it says how many more."""
_CONNECTION_ERRORS = (OSError, EOFError, ftplib.Error)
"""ftplib.all_errors without its reply classes split out: what losing the server raises."""


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int | None
    modified: datetime | None
    """UTC, as FTP servers report it (MLSD ``modify``, MDTM)."""

    def identity(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "modified": self.modified.isoformat() if self.modified else None,
        }


def _ftp_time(value: str) -> datetime | None:
    """``YYYYMMDDHHMMSS[.sss]`` (RFC 3659, always UTC), or None if the server sent junk."""
    try:
        return datetime.strptime(value.strip()[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


class FtpSession:
    """One connection to the server. Blocking (ftplib): call it through
    ``asyncio.to_thread``, one call at a time."""

    def __init__(self, folder: FtpFolder) -> None:
        self._folder = folder
        self._ftp: ftplib.FTP | None = None

    @property
    def where(self) -> str:
        scheme = "ftps" if self._folder.tls else "ftp"
        return f"{scheme}://{self._folder.username}@{self._folder.host}:{self._folder.port}"

    def open(self) -> None:
        folder = self._folder
        ftp: ftplib.FTP
        # The customer's server speaks FTP (the seed's integration port); tls: true upgrades
        # it to explicit FTPS, which is all such servers offer besides plain FTP.
        if folder.tls:
            context = ssl.create_default_context()
            ftp = ftplib.FTP_TLS(context=context, timeout=folder.timeout_s)  # noqa: S321
        else:
            ftp = ftplib.FTP(timeout=folder.timeout_s)  # noqa: S321
        self._ftp = ftp
        ftp.connect(folder.host, folder.port, timeout=folder.timeout_s)
        ftp.login(folder.username, folder.password.get_secret_value())
        if isinstance(ftp, ftplib.FTP_TLS):
            ftp.prot_p()  # the files are customer data: the data channel is encrypted too
        ftp.cwd(folder.directory)

    @property
    def ftp(self) -> ftplib.FTP:
        assert self._ftp is not None, "open() first"
        return self._ftp

    def listing(self) -> list[RemoteFile]:
        """The folder's files (not its subfolders, so ``processed/`` is never listed)."""
        try:
            return [
                RemoteFile(name, _int(facts.get("size")), _ftp_time(facts.get("modify", "")))
                for name, facts in self.ftp.mlsd(facts=["type", "size", "modify"])
                if facts.get("type", "file") == "file"
            ]
        except ftplib.error_perm as error:
            if not str(error).startswith(("500", "501", "502", "504")):
                raise
        return self._listing_without_mlsd()

    def _listing_without_mlsd(self) -> list[RemoteFile]:
        """Older servers: names from NLST, then SIZE and MDTM of each (a directory answers
        550 to SIZE and is left out)."""
        self.ftp.voidcmd("TYPE I")  # SIZE is refused in ASCII mode by many servers
        found = []
        for name in self.ftp.nlst():
            base = posixpath.basename(name)
            if base in (".", ".."):
                continue
            try:
                size = self.ftp.size(base)
            except ftplib.error_perm:
                continue
            try:
                modified = _ftp_time(self.ftp.sendcmd(f"MDTM {base}").split()[-1])
            except ftplib.error_perm:
                modified = None
            found.append(RemoteFile(base, size, modified))
        return found

    def download(self, name: str) -> bytes:
        chunks: list[bytes] = []
        self.ftp.retrbinary(f"RETR {name}", chunks.append)
        return b"".join(chunks)

    def move(self, name: str, to_dir: str) -> None:
        try:
            self.ftp.mkd(to_dir)
        except ftplib.error_perm:
            pass  # already there (servers word "exists" differently; the rename will tell)
        self.ftp.rename(name, posixpath.join(to_dir, name))

    def close(self) -> None:
        if self._ftp is None:
            return
        try:
            self._ftp.quit()
        except _CONNECTION_ERRORS:
            self._ftp.close()


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


@dataclass
class _Table:
    """A table of the source's mapping: its name as the mapping spells it, key, types."""

    name: str
    key_fields: list[str]
    types: dict[str, str]


def _table(mapping: Mapping, table: str) -> _Table | None:
    found = mapping.table(table)
    if found is None:
        return None
    name = next(name for name, spec in mapping.tables.items() if spec is found)
    return _Table(
        name,
        mapping.record_key_fields().get(name) or [],
        {
            field: spec.value_type
            for field in found.fields
            if (spec := found.field(field)) is not None and not spec.ignore
        },
    )


class FtpFolderPuller:
    """One run of an FTP folder pull. Called by the scheduler under the source's advisory
    lock, on the lock's ``connection`` (so ledger writes of one source never interleave)."""

    def __init__(
        self,
        definition: FtpFolderPullDefinition,
        publisher: EventPublisher,
        pool: asyncpg.Pool,
        connection: DbConnection,
        mappings_dir: Path | None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._definition = definition
        self._folder = definition.ftp
        self._publisher = publisher
        self._pool = pool
        self._connection = connection
        self._mappings_dir = mappings_dir
        self._clock = clock
        self._session = FtpSession(definition.ftp)
        self._refused: list[str] = []
        self._taken_now: dict[str, dict[str, Any]] = {}

    async def run(self, run: RunRecord) -> None:
        """Fill ``run`` (status, counts, rejected, error). ``pages`` counts files taken."""
        try:
            await self._run(run)
        except PullFailed as error:
            run.status, run.error = "failed", str(error)
        finally:
            await asyncio.shield(asyncio.to_thread(self._session.close))

    async def _call(self, what: str, function: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.to_thread(function, *args)
        except _CONNECTION_ERRORS as error:
            raise PullFailed(self._failure(what, error)) from None

    def _failure(self, what: str, error: BaseException) -> str:
        reason = str(error).strip() or type(error).__name__
        return (
            f"source {self._definition.source_id}: {what} on {self._session.where} failed: {reason}"
        )

    async def _run(self, run: RunRecord) -> None:
        source_id = self._definition.source_id
        ledger = await runs.taken_files(self._connection, source_id)
        if ledger is None:
            # A REST cursor becomes an empty ledger first, so that the per-file jsonb
            # merges below merge into an object.
            ledger = {}
            await self._write_ledger(run, ledger)
        await self._call("connect/login", self._session.open)
        listed: list[RemoteFile] = await self._call("listing", self._session.listing)
        candidates = await self._settled(run, [f for f in listed if self._wanted(f, ledger)])
        mapping = mapping_for(SourceKind.ERP, source_id, self._mappings_dir)
        source = (await fetch_sources(self._pool, None)).get(source_id)
        for remote in candidates:
            if not await self._take(run, remote, mapping, source):
                return  # the broker is away: the rest is the next run's
        # Forget files no longer in the folder (moved, or deleted by the ERP): the ledger
        # stays as small as the folder. One that comes back is taken again; its event ids
        # are those of its content, so a true repeat is dropped by the transform.
        present = {remote.name for remote in listed}
        kept = {
            name: entry for name, entry in {**ledger, **self._taken_now}.items() if name in present
        }
        await self._write_ledger(run, kept)
        run.status = "ok"
        if self._refused:
            run.error = _summary(self._refused)

    async def _write_ledger(self, run: RunRecord, ledger: dict[str, dict[str, Any]]) -> None:
        """Make ``ledger`` the source's whole ledger."""
        await runs.remember_files(
            self._connection,
            source_id=self._definition.source_id,
            entries=ledger,
            run_id=run.id,
            at=self._clock(),
            replace=True,
        )

    def _wanted(self, remote: RemoteFile, ledger: dict[str, dict[str, Any]]) -> bool:
        name = remote.name.lower()
        if not any(fnmatch.fnmatchcase(name, pattern.lower()) for pattern in self._folder.patterns):
            return False
        entry = ledger.get(remote.name)
        return entry is None or {k: entry.get(k) for k in ("size", "modified")} != remote.identity()

    async def _settled(self, run: RunRecord, candidates: list[RemoteFile]) -> list[RemoteFile]:
        """The candidates no longer being written, oldest first (an older export of a table
        is published before a newer one)."""
        now = self._clock()
        settled = []
        for remote in candidates:
            age_s = (now - remote.modified).total_seconds() if remote.modified else None
            if age_s is not None and age_s < self._folder.settle_s:
                run.rejected.append(
                    {"file": remote.name, "reason": "still being written; left for a later run"}
                )
                continue
            settled.append(remote)
        if settled and self._folder.recheck_s > 0:
            await asyncio.sleep(self._folder.recheck_s)
            again = {
                remote.name: remote
                for remote in await self._call("second listing", self._session.listing)
            }
            unchanged = [remote for remote in settled if again.get(remote.name) == remote]
            for remote in settled:
                if again.get(remote.name) != remote:
                    run.rejected.append(
                        {"file": remote.name, "reason": "changed while listed; left for later"}
                    )
            settled = unchanged
        return sorted(
            settled, key=lambda r: (r.modified or datetime.min.replace(tzinfo=UTC), r.name)
        )

    async def _take(
        self, run: RunRecord, remote: RemoteFile, mapping: Mapping, source: SourceConfig | None
    ) -> bool:
        """Take one file; False when the broker did not acknowledge (the run stops)."""
        name = remote.name
        table_name = self._folder.table_of(name)
        table = _table(mapping, table_name) if table_name is not None else None
        if table_name is None:
            return await self._refuse(run, remote, "the file name does not say the table")
        if table is None:
            return await self._refuse(run, remote, f"table {table_name!r} is not in the mapping")
        if source is not None and not source.allows_table(table.name):
            return await self._refuse(run, remote, f"table {table.name!r} not allowed for source")
        if remote.size is not None and remote.size > self._folder.max_file_bytes:
            # Checked before the download: a whole export is read and parsed in memory.
            reason = f"{remote.size} bytes, over max_file_bytes ({self._folder.max_file_bytes})"
            return await self._refuse(run, remote, reason)
        try:
            content: bytes = await asyncio.to_thread(self._session.download, name)
        except ftplib.error_perm as error:
            # Permission or vanished file: say so, retry next run, go on with the others.
            run.rejected.append({"file": name, "reason": f"not downloaded: {error}"})
            self._refused.append(f"{name}: not downloaded: {error}")
            return True
        except _CONNECTION_ERRORS as error:
            raise PullFailed(self._failure(f"download of {name}", error)) from None
        content_type = self._content_type(name, content)
        try:
            drop = file_drops.build_drop(
                source_id=self._definition.source_id,
                table=table.name,
                sheet=file_drops.read_sheet(
                    content, content_type, name, self._folder.sheet, self._folder.delimiter
                ),
                digest=file_drops.file_digest(content),
                key_fields=table.key_fields,
                field_types=table.types,
                operation=Operation(self._folder.operation),
                occurred_at=remote.modified or run.started_at,
                received_at=run.started_at,
            )
        except Rejection as rejection:
            return await self._refuse(run, remote, rejection.message)
        except Exception as error:  # a parser bug on one file must not stop the rest
            # openpyxl raises more than file_drops expects on some damaged workbooks; left
            # uncaught, the file would fail every run and block every file after it.
            reason = f"file could not be read: {type(error).__name__}: {error}"
            return await self._refuse(run, remote, reason[:300])
        for problem in drop.rejected:
            run.rejected.append({"file": name, **problem.public()})
        run.rows_rejected += len(drop.rejected)
        if not drop.events:
            return await self._refuse(run, remote, "no row was accepted")
        try:
            await self._publisher.publish(drop.events, content_type)
        except BrokerUnavailable as error:
            run.status, run.error = "failed", f"file {name} not acknowledged: {error}"
            return False
        run.pages += 1
        run.rows_pulled += len(drop.events)
        await self._remember(run, remote, {"rows": len(drop.events), "table": table.name})
        if self._folder.after == "move":
            try:
                await asyncio.to_thread(self._session.move, name, self._folder.processed_dir)
            except _CONNECTION_ERRORS as error:
                # Taken and remembered: it will not be taken again, only left in place.
                run.rejected.append({"file": name, "reason": f"taken but not moved: {error}"})
        return True

    def _content_type(self, name: str, content: bytes) -> str:
        if file_drops.file_kind(None, content, name) == "xlsx":
            return file_drops.XLSX_TYPE
        encoding = self._folder.encoding
        return f"text/csv; charset={encoding}" if encoding else "text/csv"

    async def _refuse(self, run: RunRecord, remote: RemoteFile, reason: str) -> bool:
        """Remember a file that cannot be taken as it is, with why: it is not retried
        until it changes, and it does not stop the others."""
        run.rejected.append({"file": remote.name, "reason": reason})
        self._refused.append(f"{remote.name}: {reason}")
        await self._remember(run, remote, {"error": reason})
        log.warning(
            "ftp file refused",
            extra={"source": self._definition.source_id, "file": remote.name, "reason": reason},
        )
        return True

    async def _remember(self, run: RunRecord, remote: RemoteFile, outcome: dict[str, Any]) -> None:
        entry = {**remote.identity(), "run_id": run.id, "at": self._clock().isoformat(), **outcome}
        self._taken_now[remote.name] = entry
        await runs.remember_files(
            self._connection,
            source_id=self._definition.source_id,
            entries={remote.name: entry},
            run_id=run.id,
            at=self._clock(),
        )


def _summary(refused: list[str]) -> str:
    text = f"{len(refused)} file(s) refused: " + "; ".join(refused)
    if len(text) <= MAX_ERROR_CHARS:
        return text
    return text[: MAX_ERROR_CHARS - 20].rstrip() + f" ... ({len(refused)} in all)"
