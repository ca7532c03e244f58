"""Typed server settings read from `EMBER_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_LISTEN = "127.0.0.1:4973"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMBER_", extra="ignore")

    data_dir: Path = Path("/var/lib/ember")
    listen: str = DEFAULT_LISTEN
    log_level: str = "info"
    log_format: Literal["json", "text"] = "text"
    # Local development only: accept requests without a token.
    auth_disabled: bool = False
    token_ttl_seconds: int = Field(default=30 * 24 * 3600, gt=0)
    # Images: how many pulls/conversions run at once.
    build_concurrency: int = Field(default=2, ge=1)
    # Registries reachable over plain HTTP (host[:port]); loopback always is.
    insecure_registries: list[str] = Field(default_factory=list)
    accel: Literal["auto", "kvm", "tcg"] = "auto"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "ember.db"

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])
