"""One trainer per run directory: an exclusive lock on RUN_DIR/.lock that the OS drops when the
process holding it dies, however it dies (exit, exception, SIGTERM, kill -9, the OOM killer).

Two trainers in one run directory (a `--resume` started while the run still trains, or torchrun
workers orphaned by a killed launcher) interleave their checkpoints and metrics rows. The lock is
flock(2) on RUN_DIR/.lock. The holder writes "PID HOST" into the file so a refusal can name it;
the text is only a label, the flock is the lock. Linux's NFS client turns flock into a
byte-range lock that the server enforces for every machine.

The holder deletes the file (and the run directory, if it made it and nothing else is in it) as
it lets go, so a finished run, or a fresh run refused before writing anything, leaves no trace.
A trainer that opened the file just before it was deleted may then lock the deleted file: it
checks that the path still names the file it locked, and tries again if not, so two trainers
never hold locks on two different files. A holder killed outright leaves its file behind: the
next trainer locks it and relabels it.

Under torchrun only rank 0, which writes the checkpoints, takes the lock. It broadcasts the outcome
so that every rank stops with the same error instead of waiting at the next collective. Where
fcntl is missing (Windows) or the filesystem refuses locks, the run goes on unlocked, with a
warning.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import torch.distributed as dist

from gptlab.errors import GptlabError
from gptlab.runtime import Runtime

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class RunDirLock:
    """The lock of one run directory (`fd` None: not locked, where locks are unavailable);
    `release()`, or the process ending, lets it go."""

    def __init__(self, path: Path, fd: int | None, made_dirs: tuple[Path, ...] = ()) -> None:
        self.path = path
        self._fd = fd
        self._made_dirs = made_dirs  # the directories taking the lock created, deepest first

    @property
    def is_locked(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):  # while still held: see the module doc
            os.unlink(self.path)
        for directory in self._made_dirs:  # leave no empty run dir (or parent) behind
            try:
                os.rmdir(directory)  # fails, as it should, unless left empty
            except OSError:
                break
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None


_ATTEMPTS = 10  # how often a lock file may be deleted under us before we give up


def lock_run_dir(run_dir: Path) -> RunDirLock:
    """Lock `run_dir` (created if missing) for this process, or raise GptlabError naming the
    trainer that holds it."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK_FILE
    if fcntl is None:
        log.warning("no file locks on this platform: nothing stops a second trainer in %s", run_dir)
        return RunDirLock(path, None)
    made_dirs = tuple(d for d in (run_dir, *run_dir.parents) if not d.exists())
    for _ in range(_ATTEMPTS):
        fd = _open(path)
        if fd is None:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(fd)
            os.close(fd)
            raise GptlabError(
                f"run directory {run_dir} is in use by another trainer ({holder}); wait for it to "
                "finish or stop it, or pick another --train.out_dir"
            ) from None
        except OSError as e:  # e.g. ENOLCK: a network filesystem without lock support
            os.close(fd)
            log.warning(
                "cannot lock %s (%s): nothing stops a second trainer in %s",
                path,
                e.strerror,
                run_dir,
            )
            return RunDirLock(path, None)
        if _names(path, fd):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
            return RunDirLock(path, fd, made_dirs)
        os.close(fd)  # we locked a file its last holder had just deleted: lock the new one
    raise GptlabError(f"cannot lock {path}: other trainers keep deleting it; try again")


def _open(path: Path) -> int | None:
    """The lock file's descriptor, creating the file and its directory as needed; None if the
    directory vanished in between (removed by a holder letting go)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # no O_TRUNC: the holder's label
    except FileNotFoundError:
        return None
    except OSError as e:
        raise GptlabError(
            f"cannot create {path} ({e.strerror}); pick a writable --train.out_dir"
        ) from None


def _names(path: Path, fd: int) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        on_disk, held = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


def _describe_holder(fd: int) -> str:
    """'pid 1234', with ' on HOST' when the holder runs on another machine, from the label."""
    words = os.pread(fd, 256, 0).decode(errors="replace").split()
    if not words or not words[0].isdigit():
        return "pid unknown"
    host = words[1] if len(words) > 1 else ""
    return f"pid {words[0]}" + (f" on {host}" if host and host != socket.gethostname() else "")


@contextlib.contextmanager
def hold_run_dir(run_dir: Path, runtime: Runtime) -> Iterator[None]:
    """Hold `run_dir`'s lock for the duration of the block. Rank 0 takes it and every rank learns
    the outcome, so a refusal raises GptlabError on all ranks alike. Every rank must enter it."""
    lock, failure = None, None
    if runtime.is_main_rank:
        try:
            lock = lock_run_dir(run_dir)
        except Exception as e:  # every rank waits at the broadcast: it must happen regardless
            failure = e
    if runtime.distributed:
        outcome = [None if failure is None else _message(failure)]
        dist.broadcast_object_list(outcome, src=0)
        if failure is None and outcome[0] is not None:
            failure = GptlabError(outcome[0])
    if failure is not None:
        raise failure
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _message(e: Exception) -> str:
    """What the other ranks report for rank 0's failure: a user error as it is, a bug by type."""
    return str(e) if isinstance(e, GptlabError) else f"rank 0 failed: {type(e).__name__}: {e}"
