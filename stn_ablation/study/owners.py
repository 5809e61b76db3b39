"""Who runs a trial, and whether they still do: an owner token per worker process and a heartbeat thread, so a
worker that starts can tell a running trial from one whose worker was killed."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable

HEARTBEAT_SECONDS = 15.0  # how often a worker stamps its running trial
STALE_SECONDS = 120.0  # a trial of another host whose stamp is older than this has lost its worker


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux); distinguishes a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "0"


def this_owner() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid)}"


def owner_alive(owner: str | None, heartbeat: float | None, now: float | None = None) -> bool:
    """On this host, alive means the same process still exists; elsewhere, that its heartbeat is recent."""
    if not owner:
        return False
    host, pid, ticks = owner.rsplit(":", 2)
    if host == socket.gethostname():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return _start_ticks(int(pid)) == ticks
    return heartbeat is not None and (now or time.time()) - heartbeat < STALE_SECONDS


class Heartbeat:
    """Calls `beat()` every HEARTBEAT_SECONDS on a daemon thread while the context is open."""

    def __init__(self, beat: Callable[[], None], interval: float = HEARTBEAT_SECONDS):
        self.beat, self.interval = beat, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="stn-ablate-heartbeat")

    def _loop(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.beat()
            except Exception:  # a missed beat is retried; a storage outage surfaces in the main thread
                pass

    def __enter__(self) -> "Heartbeat":
        self.beat()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
