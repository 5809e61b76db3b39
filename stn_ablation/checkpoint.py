"""Atomic checkpoint files: a checkpoint on disk is always either the previous complete one or the new complete one,
whatever kills the process, and a failed write (a full disk) leaves the previous one intact."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from stn_ablation.errors import UsageError
from stn_ablation.faults import fault_point


class CheckpointError(UsageError):
    """A checkpoint that cannot be written or read; the message names the file and what to do."""


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write `state` to a temporary file beside `path`, fsync it, then rename it over `path`. The bytes are
    serialized first and written in two halves, so that a fault point can kill the process mid-write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f"{path.name}.*.tmp"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            buffer = io.BytesIO()
            torch.save(state, buffer)
            data = buffer.getbuffer()
            f.write(data[:len(data) // 2])
            f.flush()
            fault_point("checkpoint_write")  # half of the bytes are in the temporary file
            f.write(data[len(data) // 2:])
            f.flush()
            os.fsync(f.fileno())
        fault_point("checkpoint")  # complete temporary file, not yet renamed
        os.replace(tmp, path)
    except BaseException as e:  # a full disk, a pickling error, Ctrl-C: never leave a temporary file behind
        Path(tmp).unlink(missing_ok=True)
        if not isinstance(e, OSError):
            raise
        raise CheckpointError(
            f"could not write checkpoint {path} ({e.strerror or e}); the previous checkpoint is intact, "
            "free some disk space or move the state folder with --home, then re-run the same command") from e


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at `path`, or None when there is none."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); delete it to start "
                              "this run over") from e
