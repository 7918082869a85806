"""Where a sweep's Optuna studies live: `hydra.sweeper.storage`  (conf/sweep/).

- `sqlite:///multirun/sweeps/optuna.db`: one machine (the default).
- `journal:/shared/sweeps/optuna.journal`: Optuna's journal file storage, for workers on many
  machines sharing a filesystem (NFS, Lustre...), where SQLite's locking is not reliable.
- any other SQLAlchemy URL (`postgresql://user:pass@host/db`, `mysql+pymysql://...`): a database
  server every worker can reach.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from fashion_sweeps.redact import redact

JOURNAL = "journal:"
# A worker uses at most two connections at once: its sweep and its heartbeat thread. A small pool
# per process keeps hundreds of workers under the server's max_connections (PostgreSQL: 100 by
# default); pre-ping replaces connections the server or a firewall dropped during a long trial.
SERVER_ENGINE: dict[str, Any] = {"pool_size": 2, "max_overflow": 2, "pool_pre_ping": True}
# pg_advisory_lock's key for creating Optuna's schema: any number no other tool of ours uses.
SCHEMA_LOCK = 0x0F5_5EE95


def journal_path(spec: str) -> Path:
    """The file of a `journal:<path>` storage, absolute (a relative path is taken from the
    current folder), its folder created."""
    path = Path(spec.removeprefix(JOURNAL).removeprefix("//")).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def open_storage(spec: str) -> BaseStorage:
    """The Optuna storage `spec` names: a journal file for `journal:<path>`, else the database
    of an SQLAlchemy URL. A URL Optuna cannot open fails with one message saying what works."""
    if spec.startswith(JOURNAL):
        # The default lock (a symlink) works on NFS, unlike fcntl locks on many clusters.
        return JournalStorage(JournalFileBackend(str(journal_path(spec))))
    try:
        if spec.startswith("sqlite:"):
            return optuna.storages.get_storage(spec)
        return _server_storage(spec, os.getpid())
    except Exception as err:  # SQLAlchemy raises many kinds for a bad URL or a missing driver
        # Masked: the message reaches the console, and a driver's error may quote the URL.
        raise ValueError(
            f"hydra.sweeper.storage={redact(repr(spec))} cannot be opened "
            f"({type(err).__name__}: {redact(str(err))}). Use "
            "sqlite:///path.db (one machine), journal:/shared/path.journal (a shared "
            "filesystem) or a database URL such as postgresql://user:pass@host/db."
        ) from err


@functools.cache
def _server_storage(url: str, pid: int) -> BaseStorage:
    """One storage, so one connection pool, per database server URL and process: a sweep opens
    its storage several times (creating, loading, each stage), and every Optuna storage object
    keeps its own pool open. Keyed by process id too: a forked child must not talk over its
    parent's connections (the server sees one client sending two streams and drops it)."""
    # Workers started together on a fresh database race to create Optuna's schema (CREATE TYPE
    # collides in PostgreSQL). PostgreSQL: one creates it while the others wait for its lock.
    # Other servers: the loser opens it again, now that the tables exist.
    with _schema_lock(url):
        for attempt in range(3):
            try:
                return optuna.storages.get_storage(
                    RDBStorage(url, engine_kwargs=dict(SERVER_ENGINE))
                )
            except sqlalchemy.exc.IntegrityError:
                if attempt == 2:
                    raise
                time.sleep(1.0 + attempt)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    """On PostgreSQL, the first worker creates the schema holding an advisory lock, on a
    connection of its own; the others wait for it, see the tables and let go before opening
    their pools. Retrying alone kept the failed attempt's pool open while it waited: two
    workers held 6 connections, not 4, and hundreds could exhaust max_connections."""
    if sqlalchemy.engine.make_url(url).get_backend_name() != "postgresql":
        yield
        return
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:  # closing it ends the session, and with it the lock
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK})
            if not sqlalchemy.inspect(conn).has_table("version_info"):  # Optuna's last table
                yield
                return
        yield
    finally:
        engine.dispose()
