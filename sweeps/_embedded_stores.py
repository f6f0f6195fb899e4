"""The embedded SQLite stores (the Optuna study here, the MLflow tracking store in
:mod:`sweeps.tracking._store`), complete or absent.

MLflow builds a new store with a series of schema migrations that are not one transaction: a
process killed in the middle (a Ctrl-C in the first seconds of a sweep, a full disk) leaves
tables such as ``_alembic_tmp_latest_metrics`` that make every later open fail. So a store is
built aside, under a name no one opens, and linked into place only once it is whole; a store
found half-built (not at its schema head) that holds nothing is rebuilt the same way. A
``flock`` next to the store keeps two workers from building or replacing it at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import os
import sqlite3
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from typing import TypeVar
from urllib.parse import urlparse

from sweeps.errors import SweepError

logger = logging.getLogger(__name__)

_BUILDING_MARK = ".building-"
T = TypeVar("T")


class StoreError(SweepError):
    """An embedded store cannot be created or repaired (disk full, unwritable folder, ...)."""


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (None for a server or an in-memory database)."""
    if urlparse(url).scheme != "sqlite" or not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///")
    return Path(path) if path and path != ":memory:" else None


def ensure_optuna_store(storage_url: str) -> None:
    """Make the SQLite Optuna storage at ``storage_url`` exist whole (no-op for a server)."""
    path = sqlite_path(storage_url)
    if path is None:
        return

    def build(aside: Path) -> None:
        import optuna

        storage = optuna.storages.RDBStorage(f"sqlite:///{aside}")
        storage.engine.dispose()

    ensure_sqlite_store(path, "Optuna study storage", build, _optuna_head,
                        holds_data_table="studies")


def ensure_sqlite_store(path: Path, what: str, build: Callable[[Path], None],
                        head: Callable[[], str], *, holds_data_table: str) -> None:
    """Make the SQLite store at ``path`` whole: nothing to do when it is; else (under a file
    lock) ``build`` it at another path and move it into place, replacing a half-built one
    that holds no row in ``holds_data_table``. ``head`` gives the schema revision a whole
    store is at.

    Raises:
        StoreError: it cannot be built (a full disk, said in words), or a half-built store
            holds data.
    """
    path = path.resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if _is_whole(path, head, holds_data_table):
            return
        with _creation_lock(path):
            if _is_whole(path, head, holds_data_table):  # another worker built it while we waited
                return
            if path.exists():
                _check_holds_nothing(path, what, holds_data_table)
                logger.warning("%s %s was left half-built by an interrupted start and holds "
                               "no data: building it again", what, path)
            _remove_stale_asides(path)
            aside = path.with_name(f"{path.name}{_BUILDING_MARK}{os.getpid()}-"
                                   f"{uuid.uuid4().hex[:8]}")
            try:
                build(aside)
                _to_wal(aside)
                _fsync(aside)
                _remove_sidecars(path)  # an old -wal would be replayed into the new file
                os.replace(aside, path)
                _fsync(path.parent)
            finally:
                for leftover in (aside, *_sidecars(aside)):
                    leftover.unlink(missing_ok=True)
    except StoreError:
        raise
    except Exception as exc:  # OS, SQLite, SQLAlchemy and MLflow errors alike
        raise StoreError(f"{what} {path}: cannot be opened or created: "
                         f"{describe_store_error(exc, path.parent)}") from None


def _is_whole(path: Path, head: Callable[[], str], data_table: str) -> bool:
    """The file exists, has no half-applied migration and is at its schema head (or at an
    older head with data: a whole store of an older release, which its own tool upgrades)."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with contextlib.closing(sqlite3.connect(path, timeout=60)) as connection:
        tables = {row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "alembic_version" not in tables or any(t.startswith("_alembic_tmp")
                                                  for t in tables):
            return False
        versions = [row[0] for row in connection.execute(
            "SELECT version_num FROM alembic_version")]
    return bool(versions) and (versions == [head()] or _holds_any_row(path, data_table))


def _holds_any_row(path: Path, table: str) -> bool:
    with contextlib.closing(sqlite3.connect(path, timeout=60)) as connection:
        try:
            return connection.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is not None
        except sqlite3.OperationalError:  # no such table
            return False


def _check_holds_nothing(path: Path, what: str, table: str) -> None:
    if _holds_any_row(path, table):
        raise StoreError(f"{what} {path} is incomplete (an interrupted schema migration) but "
                         f"holds data: back it up, then run its upgrade command "
                         "('mlflow db upgrade' / 'optuna storage upgrade')")


@contextlib.contextmanager
def _creation_lock(path: Path) -> Iterator[None]:
    lock_path = path.with_name(f"{path.name}.create-lock")
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel if this process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_stale_asides(path: Path) -> None:
    """Asides of builds that were killed (their process is gone); called under the lock."""
    for aside in path.parent.glob(f"{path.name}{_BUILDING_MARK}*"):
        pid_text = aside.name.removeprefix(f"{path.name}{_BUILDING_MARK}").split("-")[0]
        if pid_text.isdigit() and not _is_alive(int(pid_text)):
            aside.unlink(missing_ok=True)


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _to_wal(path: Path) -> None:
    """WAL is kept in the file; closing the last connection folds the log back in."""
    with contextlib.closing(sqlite3.connect(path, timeout=60)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")


def _sidecars(path: Path) -> tuple[Path, Path, Path]:
    return (path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm"),
            path.with_name(f"{path.name}-journal"))


def _remove_sidecars(path: Path) -> None:
    for sidecar in _sidecars(path):
        sidecar.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@functools.cache
def _optuna_head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from optuna.storages._rdb import storage as rdb

    folder = os.path.join(os.path.dirname(rdb.__file__), "alembic")
    config = Config(os.path.join(folder, "alembic.ini"))
    config.set_main_option("script_location", folder)
    return str(ScriptDirectory.from_config(config).get_current_head())


_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or anything it was raised from) says the disk or quota is full."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL_ERRNOS:
            return True
        text = str(current).lower()
        if "database or disk is full" in text or "no space left on device" in text:
            return True
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) and id(orig) not in seen \
            else (current.__cause__ or current.__context__)
    return False


def _nearly_full(folder: Path) -> bool:
    # SQLite reports a full disk as "disk I/O error" when it cannot grow its WAL index.
    try:
        usage = os.statvfs(folder)
    except OSError:
        return False
    return usage.f_bavail * usage.f_frsize < _NEARLY_FULL_BYTES


_NEARLY_FULL_BYTES = 1 << 20


def describe_store_error(exc: BaseException, folder: Path | None = None) -> str:
    """A one-line account of a store failure, in words for a full disk (``folder``: where
    the store lives, looked at when SQLite only says "disk I/O error")."""
    if _is_full_disk_failure(exc, folder):
        return ("the disk is full (no space left on the device): free some space and run "
                "the same command again; what was written so far is kept")
    first_line = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0]
    return first_line or type(exc).__name__


def _is_full_disk_failure(exc: BaseException, folder: Path | None) -> bool:
    if is_disk_full(exc):
        return True
    # SQLite says "disk I/O error" when it cannot grow its WAL index on a full disk; only
    # an I/O failure is blamed on the disk, never e.g. a refused login on a nearly full one.
    return (folder is not None and _is_io_error(exc) and _nearly_full(folder))


def _is_io_error(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) or "disk i/o error" in str(current).lower():
            return True
        current = current.__cause__ or current.__context__
    return False


def disk_full_in_words(run: Callable[..., T]) -> Callable[..., T]:
    """Decorate a function whose first argument is a sweep config: a full disk met anywhere
    inside it (SQLite, MLflow, a backend's job file) ends it with a :class:`StoreError` that
    says so, instead of a traceback or SQLite's "disk I/O error"."""

    @functools.wraps(run)
    def wrapper(config: Any, *args: Any, **kwargs: Any) -> T:
        try:
            return run(config, *args, **kwargs)
        except StoreError:
            raise
        except Exception as exc:
            folder = getattr(config, "state_dir", None)
            if not _is_full_disk_failure(exc, folder):
                raise
            raise StoreError(f"{describe_store_error(exc, folder)}; jobs in flight keep "
                             f"running (state folder {folder})") from None

    return wrapper


__all__ = ["StoreError", "describe_store_error", "disk_full_in_words", "ensure_optuna_store",
           "ensure_sqlite_store", "is_disk_full", "sqlite_path"]
