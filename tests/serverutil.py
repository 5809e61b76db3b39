"""A real MLflow tracking server for the tests: the suite's light server (tracking/server.py) on a PostgreSQL
database of its own and an artifact folder, on a free loopback port, with its database readable while it is down."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg

from stn_ablation.tracking.server import LocalServer, free_port


class MlflowServer(LocalServer):
    def __init__(self, pg_url: str, folder: Path):
        database = f"stn_mlflow_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {database}")
        self.pg = f"{pg_url.rsplit('/', 1)[0]}/{database}"  # psycopg's form, for counting rows
        folder.mkdir(parents=True, exist_ok=True)
        super().__init__(self.pg.replace("postgresql://", "postgresql+psycopg://", 1), folder / "artifacts",
                         free_port(), folder / "server.log")

    def count(self, sql: str) -> int:
        """One number from the server's database, read directly (the server may be down)."""
        with psycopg.connect(self.pg) as conn:
            return conn.execute(sql).fetchone()[0]
