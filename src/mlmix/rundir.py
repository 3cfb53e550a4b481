"""Run directories: folders mlmix writes its outputs into, and nothing else.

One mechanism serves ``mlmix run`` and ``mlmix fit``:

* A **marker** file, ``.mlmix-run.json``, says that mlmix made the folder and lists
  every file and folder it wrote there (the manifest). ``--overwrite`` removes only
  what the manifest lists, and only in a folder that has the marker; a folder
  without one that holds anything is never touched (a typo of ``output.directory``
  must not cost a user their files).
* A **lock**: while a process works in a run directory it holds an exclusive
  ``flock`` on ``.mlmix.lock`` there. A second process (a ``--resume`` started while
  the first still runs) is refused at once. The operating system drops the lock when
  its process dies, so the lock of a killed run never blocks a resume.
* **Checks before work**: :meth:`RunDirectory.check` says everything that is wrong
  with using a folder (exists as a file, not writable, on a read-only file system,
  not mlmix's, locked by another process) without writing anything.
* **Write errors** (a full disk, a folder made read-only mid-run) become one
  :class:`~mlmix.errors.OutputError` naming the file and the errno
  (:func:`output_errors`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .errors import ConfigurationError, OutputError

MARKER = ".mlmix-run.json"
LOCK = ".mlmix.lock"
FORMAT = "mlmix-run-directory-1"


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def writability_problem(path: Path) -> str | None:
    """Why files cannot be created at ``path`` (a folder, existing or to be made), or
    None. Nothing is written: the permission bits and the file system's read-only
    flag of the nearest existing folder are asked (root ignores the first, not the
    second)."""
    base = _nearest_existing(Path(path))
    if not base.is_dir():
        return f"{base} is a file, not a folder"
    try:
        if os.statvfs(base).f_flag & os.ST_RDONLY:
            return f"{base} is on a read-only file system"
    except OSError:  # no statvfs here: the permission check below still runs
        pass
    if not os.access(base, os.W_OK | os.X_OK):
        return f"{base} is not writable (permission denied)"
    return None


@contextlib.contextmanager
def output_errors(path: str | Path) -> Iterator[None]:
    """Turn an operating-system error while writing ``path`` into an OutputError."""
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        raise output_error(path, exc) from None


def output_error(path: str | Path, exc: OSError) -> OutputError:
    """The OutputError for ``exc`` raised while writing ``path``."""
    name = errno.errorcode.get(exc.errno, "?") if exc.errno is not None else "?"
    reason = exc.strerror or str(exc)
    error = OutputError(f"cannot write {exc.filename or path}: {reason} "
                        f"(errno {exc.errno}, {name})")
    error.errno = exc.errno
    return error


def give_default_mode(fd: int) -> None:
    """Give a file made by ``tempfile.mkstemp`` (mode 0600) the mode an ordinary
    ``open`` would have given it (0666 less the umask), before it is renamed into
    place: results are read by other tools and people, not only their owner."""
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)


class RunDirectory:
    """A folder that mlmix owns while it writes outputs there.

    Args:
        path: the folder (made when :meth:`open` is called).
        what: the command, for messages ("run", "fit").
        lock: take the lock in :meth:`check`; False for the MPI ranks that only read
            (rank 0 holds the lock and writes for all of them).
    """

    def __init__(self, path: str | Path, what: str = "run", lock: bool = True):
        self.path = Path(path)
        self.what = what
        self.lock = lock
        self._lock_fh: IO[str] | None = None
        self._files: list[str] = []
        self._opened = False

    # ------------------------------------------------------------ questions

    @property
    def marked(self) -> bool:
        """True if mlmix made this folder (it has the marker)."""
        return (self.path / MARKER).is_file()

    def manifest(self) -> list[str]:
        """Names (relative to the folder) of what mlmix wrote here."""
        try:
            data = json.loads((self.path / MARKER).read_text())
        except (OSError, ValueError):
            return []
        files = data.get("files", []) if isinstance(data, dict) else []
        return [f for f in files if isinstance(f, str) and _is_plain_name(f)]

    def check(self, *, resume: bool = False, overwrite: bool = False,
              option: str = "--output") -> list[str]:
        """Everything that forbids using the folder this way; nothing is written.

        A folder that exists and is locked by another process is reported too; the
        lock is then taken (and held until :meth:`close`) so that nobody else starts
        in it between this check and the work.
        """
        where = self.path
        problems = []
        if where.exists() and not where.is_dir():
            return [f"{where} is a file, not a folder; choose another {option}"]
        unwritable = writability_problem(where)
        if unwritable:
            problems.append(f"cannot write the {self.what} directory {where}: {unwritable}; "
                            f"choose another {option}")
        exists = where.is_dir()
        if resume and not self.marked:
            problems.append(f"nothing to resume in {where}: it is not an mlmix {self.what} "
                            f"directory (no {MARKER}); {self.what} without --resume")
        elif overwrite and exists and not self.marked and _has_content(where):
            problems.append(
                f"--overwrite refused: {where} was not made by mlmix (no {MARKER} in it), "
                "so nothing in it is removed; choose another " + option +
                " or empty the folder yourself")
        elif not resume and not overwrite and exists and _has_content(where):
            hint = ("pass --resume to continue its run, --overwrite to replace what mlmix "
                    "wrote there, or " if self.marked else "")
            problems.append(f"output directory {where} exists and is not empty; "
                            f"{hint}choose another {option}")
        if not problems and exists and self.marked and self.lock:
            other = self._try_lock()
            if other:
                problems.append(other)
        return problems

    # ------------------------------------------------------------ actions

    def open(self, *, overwrite: bool = False) -> None:
        """Make the folder (and parents), lock it, write the marker; with
        ``overwrite``, first remove what an earlier mlmix run wrote there."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise output_error(self.path, exc) from None
        if self._lock_fh is None:
            other = self._try_lock()
            if other:
                raise ConfigurationError(other)
        previous = self.manifest()
        if overwrite:
            for name in previous:
                target = self.path / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
            previous = []
        self._files, self._opened = list(dict.fromkeys(previous)), True
        self._write_marker()

    def file(self, name: str) -> Path:
        """The path of output ``name`` in the folder, recorded in the manifest (of an
        opened folder, or of one an earlier mlmix command made, as ``mlmix drift``
        adds its files to a run's)."""
        if not self._opened:
            self._files, self._opened = self.manifest(), True
        if name not in self._files:
            self._files.append(name)
            self._write_marker()
        return self.path / name

    def close(self) -> None:
        """Release the lock. The lock file stays: removing it could let two processes
        lock two different files of the same name."""
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ internals

    def _try_lock(self) -> str | None:
        try:
            fh = open(self.path / LOCK, "a")
        except OSError as exc:
            return str(output_error(self.path / LOCK, exc))
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            return (f"{self.path} is in use by another mlmix process (it holds {LOCK}); "
                    "wait for it to finish or stop it, then resume")
        self._lock_fh = fh
        return None

    def _write_marker(self) -> None:
        from . import __version__

        text = json.dumps({"format": FORMAT, "made_by": f"mlmix {__version__}",
                           "command": self.what, "files": self._files}, indent=1) + "\n"
        marker = self.path / MARKER
        tmp = marker.with_name(marker.name + ".tmp")
        with output_errors(marker):
            tmp.write_text(text)
            os.replace(tmp, marker)


def _has_content(folder: Path) -> bool:
    return any(p.name != LOCK for p in folder.iterdir())


def _is_plain_name(name: str) -> bool:
    # A manifest entry must stay inside its folder, whatever a damaged marker says.
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts \
        and name not in (MARKER, LOCK)
