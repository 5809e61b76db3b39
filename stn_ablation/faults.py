"""Fault points for the reliability tests. With `STN_ABLATE_FAULT=NAME:N` in the environment, the process kills
itself with SIGKILL (exactly what `kill -9` does) the N-th time it reaches point NAME, so a test can kill a worker
at a precise moment: mid-step, mid-checkpoint-write (half the bytes written), with a complete checkpoint not yet
renamed, mid-MLflow-write, mid-evaluation, between trials. Unset, a point costs one comparison."""

from __future__ import annotations

import functools
import os
import signal

FAULT_ENV = "STN_ABLATE_FAULT"
POINTS = ("step", "checkpoint_write", "checkpoint", "mlflow", "evaluate", "between_trials")
_reached: dict[str, int] = {}


@functools.cache
def _target() -> tuple[str, int] | None:
    value = os.environ.get(FAULT_ENV)
    if not value:
        return None
    name, _, count = value.partition(":")
    if name not in POINTS or not count.isdigit():
        raise ValueError(f"{FAULT_ENV}={value!r}: expected NAME:N with NAME one of {', '.join(POINTS)}")
    return name, int(count)


def fault_point(name: str) -> None:
    """Die here if the environment asks for it."""
    target = _target()
    if target is None or target[0] != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
