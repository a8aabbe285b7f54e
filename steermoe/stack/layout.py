"""Where a stack keeps its state: one folder (default ``<cache>/stack``) holding logs, pid files, the
generated Postgres password (0600, never printed), the MLflow artifacts and ``stack.json``, the ports
and URLs that ``steermoe run`` / ``steermoe promote`` read to find a running stack."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SERVICES", "DEFAULT_PORTS", "WORK_POOL", "StackLayout", "default_stack_dir"]

# Start order; ``down`` stops them in reverse (the worker first, while the API it reports to is up).
SERVICES = ("postgres", "prefect", "mlflow", "worker")
DEFAULT_PORTS = {"postgres": 5433, "prefect": 4200, "mlflow": 5000}
WORK_POOL = "steermoe-process"


def default_stack_dir() -> Path:
    """``$STEERMOE_STACK_DIR``, else ``<cache dir>/stack``."""
    if os.environ.get("STEERMOE_STACK_DIR"):
        return Path(os.environ["STEERMOE_STACK_DIR"]).expanduser()
    from steermoe.config import default_cache_dir

    return default_cache_dir() / "stack"


@dataclass(frozen=True)
class StackLayout:
    """The files of one stack folder."""

    root: Path

    @classmethod
    def at(cls, root: str | Path | None = None) -> StackLayout:
        return cls(Path(root).expanduser().resolve() if root is not None else default_stack_dir().resolve())

    @property
    def state_file(self) -> Path:
        return self.root / "stack.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def password_file(self) -> Path:
        return self.secrets / "postgres.password"

    @property
    def pgpass_file(self) -> Path:
        # libpq / asyncpg read the password from here ($PGPASSFILE): it never appears in a URL or command line.
        return self.secrets / "pgpass"

    @property
    def postgres_link(self) -> Path:
        return self.root / "postgres"

    @property
    def artifacts(self) -> Path:
        return self.root / "mlflow-artifacts"

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect-home"

    def pid_file(self, service: str) -> Path:
        return self.root / "run" / f"{service}.pid"

    def log_file(self, service: str) -> Path:
        return self.logs / f"{service}.log"

    def make(self) -> None:
        for path in (self.root, self.logs, self.root / "run", self.prefect_home):
            path.mkdir(parents=True, exist_ok=True)
        self.secrets.mkdir(mode=0o700, parents=True, exist_ok=True)

    def read_state(self) -> dict | None:
        try:
            return json.loads(self.state_file.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def write_state(self, state: dict) -> None:
        tmp = self.state_file.with_name(f".stack.json.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.state_file)
