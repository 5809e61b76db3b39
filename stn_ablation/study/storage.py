"""Optuna storage and the study-wide lock around "which trial runs next".

Optuna pops a waiting trial atomically, but nothing stops two workers from enqueueing the same grid cell at the
same moment; so enqueueing and claiming happen under one lock: a file lock for the embedded journal (or sqlite)
storage on this host, a PostgreSQL advisory lock when workers on many machines share a server."""

from __future__ import annotations

import contextlib
import zlib
from pathlib import Path
from typing import Callable, ContextManager

import optuna

from stn_ablation.errors import UsageError
from stn_ablation.locks import file_lock
from stn_ablation.paths import StateHome


class StorageError(UsageError):
    """The Optuna storage URL is unusable or its server is unreachable."""


Lock = Callable[[], ContextManager[None]]


def open_storage(url: str | None, home: StateHome, study_name: str) -> tuple[optuna.storages.BaseStorage, Lock]:
    """The storage for `url` (default: a journal file in the state folder) and the lock that serializes claims."""
    if url is None or url.startswith("journal:") or url.endswith(".journal"):
        path = home.optuna_journal if url is None else Path(url.removeprefix("journal:")).expanduser()
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path))), _file_lock(path.with_suffix(".lock"))
    if url.startswith(("postgresql", "sqlite")):
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except Exception as e:
            raise StorageError(f"Optuna storage {_redact(url)} is unreachable ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:200]}); start the database or pass another --storage"
                               ) from None
        if url.startswith("sqlite"):
            return storage, _file_lock(Path(url.split("///", 1)[1] + ".lock"))
        return storage, _advisory_lock(storage, study_name)
    raise StorageError(f"unsupported --storage {_redact(url)}; use postgresql://..., sqlite:///FILE or a .journal "
                       "file path")


def _file_lock(path: Path) -> Lock:
    return lambda: file_lock(path)


def _advisory_lock(storage: optuna.storages.RDBStorage, study_name: str) -> Lock:
    from sqlalchemy import text

    key = zlib.crc32(f"stn-ablate:{study_name}".encode())

    @contextlib.contextmanager
    def lock():
        with storage.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
    return lock


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}"
    return url
