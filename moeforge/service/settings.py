"""What one Centre runs on: its database, stores, base models, network size and limits (a JSON file or the defaults).

`moeforge service up` writes the settings it resolved to `<home>/settings.json`, and its worker process
reads that file, so the API and the worker can never disagree about where anything is.
"""

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

MIB = 1024 * 1024


class ServiceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    home: Path  # uploads in flight, job run folders, exports
    database: str  # the library catalog's database: sqlite:///… or postgresql://…
    store: str  # customers' files (content-addressed)
    library_store: str  # the expert library's blobs
    bases: dict[str, str] = Field(min_length=1)  # base model name → checkpoint folder; the first is the default
    job_defaults: dict[str, dict] = Field(default_factory=dict)  # base name → JobRequest fields for its jobs
    miners: int = Field(3, ge=1)
    validators: int = Field(2, ge=1)
    device: str = "cpu"
    max_upload_bytes: int = Field(512 * MIB, ge=1)
    max_json_bytes: int = Field(1 * MIB, ge=1024)
    max_rounds: int = Field(20, ge=1)
    poll_s: float = Field(0.5, gt=0)  # how often the worker looks for work
    # threads the API runs its routes' database work in: more than the cores only adds switching under the GIL
    # (the database pool keeps library.catalog.POOL_SIZE connections, one per thread at least)
    api_threads: int = Field(4, ge=1, le=16)
    # API processes on the one port (each with its own threads): 2 where there are 2 cores or more
    api_workers: int = Field(default_factory=lambda: min(2, os.cpu_count() or 1), ge=1, le=16)
    # the niceness of the worker and of the network roles it starts: the API answers first, a job trains on what is left
    worker_nice: int = Field(10, ge=0, le=19)
    subnet_owner: str = "default"  # the tenant that lists shared-library entries and is paid as their owner

    @property
    def default_base(self) -> str:
        return next(iter(self.bases))

    def uploads(self) -> Path:
        return self.home / "uploads"

    def runs(self) -> Path:
        return self.home / "runs"

    def exports(self) -> Path:
        return self.home / "exports"


SETTINGS_FILE = "settings.json"


def write_settings(settings: ServiceSettings) -> Path:
    from moeforge.atomic import write_text

    settings.home.mkdir(parents=True, exist_ok=True)
    path = settings.home / SETTINGS_FILE
    write_text(path, settings.model_dump_json(indent=2) + "\n")
    return path


def read_settings(path: Path) -> ServiceSettings:
    from moeforge.json_file import read_json_object
    from moeforge.errors import ConfigError
    from pydantic import ValidationError

    data = read_json_object(path, what="service settings", name="--settings", fix="Pass the settings.json `service up` wrote.")
    try:
        return ServiceSettings(**data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: bad service settings: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}.") from None
