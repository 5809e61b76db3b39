"""The one state folder that holds everything a run leaves behind: MLflow store and artifacts, Optuna storage,
checkpoints. `--home` or `$STN_ABLATE_HOME` moves it; by default it is `.stn-ablate/` in the working directory."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from stn_ablation.errors import UsageError

HOME_ENV = "STN_ABLATE_HOME"


class StateFolderError(UsageError):
    """The state folder cannot be created or written."""


@dataclass(frozen=True)
class StateHome:
    root: Path

    @classmethod
    def resolve(cls, explicit: str | Path | None = None) -> "StateHome":
        """`explicit`, else `$STN_ABLATE_HOME`, else `./.stn-ablate`; created and checked for writing now, so that
        an unwritable folder fails at start-up, not after the first epoch."""
        root = Path(explicit or os.environ.get(HOME_ENV) or ".stn-ablate").expanduser().resolve()
        try:
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=root):
                pass
        except OSError as e:
            raise StateFolderError(f"state folder {root} is not writable ({e.strerror or e}); "
                                   f"pass --home DIR or set {HOME_ENV} to a writable folder") from None
        return cls(root)

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def optuna_journal(self) -> Path:
        return self.root / "optuna.journal"

    def checkpoint(self, key: str) -> Path:
        return self.root / "checkpoints" / f"{key}.pt"
