"""One training per fold folder: the lock file `training.lock`, held with flock while a training writes there.

A flock belongs to the open file, which the kernel closes when its process ends however it ends
(SIGKILL, the OOM killer, a crash): a lock file left by a dead training is not held, and the next
training takes the folder over, saying that it found one. While held, the file names its holder
(pid, host, start time, command) for the message a second training of the fold gets.

The file is written in place, not through a temporary file and a rename (a renamed file would be
another file, unlocked); it is removed when the training ends.
"""

import errno
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Iterator

from sdmcunet.utils.errors import OutputWriteError, SDMCError

log = logging.getLogger("sdmcunet.training")
LOCK_FILE = "training.lock"
LOCKING_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # some network and FUSE file systems

_held_descriptors: set[int] = set()


def _close_inherited_locks() -> None:
    """In a forked child (a data loader worker): close the inherited lock files. A child keeping one would
    keep the fold locked after its parent was killed; closing a copy leaves the parent's lock in place."""
    for descriptor in _held_descriptors:
        os.close(descriptor)
    _held_descriptors.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


@contextmanager
def fold_lock(folder: Path) -> Iterator[None]:
    """Hold `folder`'s lock for the block; an SDMCError naming the holder when another process holds it."""
    path = folder / LOCK_FILE
    descriptor, locked = _acquire(path)
    _held_descriptors.add(descriptor)
    try:
        if locked and (leftover := _read_holder(descriptor)):
            log.warning("%s: left by %s, which ended without removing it (killed or crashed); the kernel released "
                        "its lock when it ended, so this training takes the fold folder over", path,
                        _describe(leftover))
        _write_holder(descriptor, path)
        yield
    finally:
        # Removed while still locked: a process that opened it meanwhile finds, once it has the lock, that
        # the file is gone, and starts again (`_acquire`); two processes never both hold the fold's lock.
        path.unlink(missing_ok=True)
        _held_descriptors.discard(descriptor)
        os.close(descriptor)


def _acquire(path: Path) -> tuple[int, bool]:
    """An open descriptor of `path` holding its exclusive flock, and False where the file system has no locks."""
    while True:
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise OutputWriteError(f"{path}: could not be written ({error.strerror or error})") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(descriptor)
            os.close(descriptor)
            raise SDMCError(f"{path.parent}: another training of this fold is running ({_describe(holder)}); "
                            f"wait for it to end, or stop it, before training this fold again") from None
        except OSError as error:
            if error.errno not in LOCKING_UNSUPPORTED:
                os.close(descriptor)
                raise SDMCError(f"{path}: the training lock cannot be taken ({error.strerror or error})") from None
            log.warning("%s: this file system does not lock files (%s): a second training of this fold at the "
                        "same time would not be noticed", path, error.strerror)
            return descriptor, False
        if _names(path, descriptor):
            return descriptor, True
        os.close(descriptor)  # its previous holder removed it between our open and our lock


def _names(path: Path, descriptor: int) -> bool:
    """Whether `path` still names the file open as `descriptor`."""
    try:
        named = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _read_holder(descriptor: int) -> dict | None:
    """What the lock file says about its holder: None when empty (the holder has not written it yet)."""
    text = os.pread(descriptor, 1 << 16, 0).decode(errors="replace")
    try:
        holder = json.loads(text)
    except ValueError:
        return {"unreadable": text} if text else None
    return holder if isinstance(holder, dict) else {"unreadable": text}


def _write_holder(descriptor: int, path: Path) -> None:
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.now().astimezone().isoformat(timespec="seconds"), "command": shlex.join(sys.argv)}
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(holder).encode(), 0)
    except OSError as error:
        raise OutputWriteError(f"{path}: could not be written ({error.strerror or error})") from None


def _describe(holder: dict | None) -> str:
    if holder is None:
        return "a process that has not written its details yet"
    if "unreadable" in holder:
        return f"a process whose lock file reads {holder['unreadable'][:200]!r}"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: "
            f"{holder.get('command')}")
