"""A lock on a work directory, so that two runs never interleave their writes in it.

WORKDIR/.lock holds {"pid", "host", "started", "heartbeat"} of the run that holds it. A second run
refuses at once, naming that pid and host. A lock left by a run that is gone is taken over: on the
same host when its pid no longer runs (kill -9), on another host when its heartbeat, refreshed
every minute while the run lives, is older than `STALE_S`. Only the main process of a multi-host
run takes the lock (the others work in the same directory under it).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Optional

from refine_jax import fs

LOCK = ".lock"
HEARTBEAT_S = 60.0
STALE_S = 600.0


class WorkdirLocked(OSError):
    """Another live run holds the work directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def _read(path: str) -> Optional[dict]:
    try:
        return fs.read_json(path)
    except (OSError, ValueError):
        return None


def holder_is_live(info: dict, now: Optional[float] = None) -> bool:
    """Whether the run described by a lock file still runs (see the module docstring)."""
    if info.get("host") == socket.gethostname():
        return _alive(int(info.get("pid", -1)))
    return (now or time.time()) - float(info.get("heartbeat", 0)) < STALE_S


class WorkdirLock:
    """`with WorkdirLock(workdir):` holds WORKDIR/.lock for the block (see the module docstring)."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.took_over: Optional[dict] = None

    def _info(self, started: float) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "started": started, "heartbeat": time.time()}

    def acquire(self) -> "WorkdirLock":
        fs.makedirs(os.path.dirname(self.path))
        old = _read(self.path) if fs.exists(self.path) else None
        if old is not None and holder_is_live(old) and old.get("pid") != os.getpid():
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(old.get("started", 0))))
            raise WorkdirLocked(f"{self.path}: the work directory is in use by pid {old.get('pid')} on host "
                                f"{old.get('host')} (since {started}); wait for that run or stop it")
        self.took_over = old
        self.started = time.time()
        text = json.dumps(self._info(self.started))
        if fs.is_remote(self.path) or old is not None:
            fs.write_text_atomic(self.path, text)
        else:  # a local path: create it exclusively, so two runs starting together cannot both win
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return self.acquire()  # it appeared just now: judge that holder
            with os.fdopen(fd, "w") as f:
                f.write(text)
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        return self

    def _beat(self):
        while not self._stop.wait(HEARTBEAT_S):
            try:
                fs.write_text_atomic(self.path, json.dumps(self._info(self.started)))
            except OSError:
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        info = _read(self.path)
        if info and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
            fs.remove(self.path)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *_):
        self.release()
