"""The run lock: one trainer per run directory, across processes and machines that share the runs
folder (`run_dir/.lock`; used by `runner.Trainer` and so by `run` and `sweep`)."""

from __future__ import annotations

import datetime
import json
import os
import random
import socket
import sys
import threading
import time
from pathlib import Path

from .errors import UserError

LOCK_HEARTBEAT_S = 30.0  # the lock's holder touches it this often...
LOCK_STALE_S = 300.0  # ...and a lock untouched this long is a dead holder's (on any machine)



class RunLocked(UserError):
    """The run directory is being trained by another process (maybe on another machine)."""


def _boot_id() -> str:
    """Tells two machines (or containers) with the same host name apart, where Linux says."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


class RunLock:
    """`run_dir/.lock`: who trains this run (host, boot id, pid, start time, command).

    Taken by hard-linking a fully written temporary file to the lock name (atomic and
    exclusive on local disks and NFS alike, and never seen half written). The holder touches
    the file every `heartbeat_s` from a background thread. A lock is stale, and taken over,
    when its holder's pid is gone on this same machine, or when its heartbeat is older than
    `stale_after_s` (a holder on another machine that died, or a recycled pid). Taking over
    goes through a second exclusive file (`.lock.break`), so two processes that both find the
    same stale lock cannot both take it."""

    name = ".lock"

    def __init__(self, run_dir: Path, *, heartbeat_s: float = LOCK_HEARTBEAT_S, stale_after_s: float = LOCK_STALE_S):
        self.path = Path(run_dir) / self.name
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.token = f"{os.getpid()}-{random.getrandbits(64):016x}"
        self.lost = False  # set when another process took the lock from us (we looked stale)
        self._stop = None
        self._thread = None

    # -- who holds it
    def read(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
            if not isinstance(holder, dict):
                raise ValueError("not a lock")
            holder["heartbeat_age_s"] = max(0.0, time.time() - self.path.stat().st_mtime)
            return holder
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # unreadable: judged by its age alone
            try:
                return {"heartbeat_age_s": max(0.0, time.time() - self.path.stat().st_mtime)}
            except OSError:
                return None

    def is_stale(self, holder: dict) -> bool:
        if holder.get("heartbeat_age_s", 0.0) > self.stale_after_s:
            return True
        same_machine = holder.get("host") == socket.gethostname() and holder.get("boot_id", "") == _boot_id()
        pid = holder.get("pid")
        return same_machine and isinstance(pid, int) and not _pid_alive(pid)

    def describe(self, holder: dict) -> str:
        return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since {holder.get('started', '?')} "
                f"(heartbeat {holder.get('heartbeat_age_s', 0.0):.0f} s ago; lock file {self.path})")

    # -- taking and giving back
    def acquire(self) -> "RunLock":
        content = json.dumps({"host": socket.gethostname(), "boot_id": _boot_id(), "pid": os.getpid(),
                              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                              "command": " ".join(sys.argv)[:500], "token": self.token})
        tmp = self.path.with_name(f"{self.name}.{self.token}.tmp")
        tmp.write_text(content)
        try:
            for _ in range(5):
                try:
                    self._create(tmp, content)
                    break
                except FileExistsError:
                    holder = self.read()
                    if holder is None:
                        continue  # released meanwhile
                    if not self.is_stale(holder):
                        raise RunLocked(f"{self.path.parent} is being trained by {self.describe(holder)}; "
                                        "wait for it to finish, or delete the lock file if that process is gone")
                    self._break(holder)
            else:
                raise RunLocked(f"could not take the lock {self.path}: other processes keep taking it")
        finally:
            tmp.unlink(missing_ok=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _create(self, tmp: Path, content: str) -> None:
        """Make the lock file or raise FileExistsError."""
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            raise
        except OSError:  # a filesystem without hard links: exclusive create, then write
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(content)

    def _break(self, stale: dict) -> None:
        guard = self.path.with_name(self.name + ".break")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:  # a breaker that died holding the guard: the guard is only held for microseconds
                if time.time() - guard.stat().st_mtime > 60:
                    guard.unlink(missing_ok=True)
            except OSError:
                pass
            time.sleep(0.1)
            return
        try:
            os.close(fd)
            now = self.read()
            if now is not None and now.get("token") == stale.get("token") and self.is_stale(now):
                self.path.unlink(missing_ok=True)
        finally:
            guard.unlink(missing_ok=True)

    def holds(self) -> bool:
        holder = self.read()
        return holder is not None and holder.get("token") == self.token

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self.holds():
                self.lost = True
                return
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._thread.join()
            self._stop = None
        if not self.lost and self.holds():
            self.path.unlink(missing_ok=True)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
