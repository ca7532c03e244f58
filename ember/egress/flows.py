"""The flow log of one instance: every connection the proxy judged, allowed or refused.

One JSON line per connection in `flows.jsonl` beside the instance's egress state;
past `MAX_BYTES` the file moves to `flows.jsonl.1` (one kept), so a chatty guest
costs at most twice that. Never holds a credential's value: only its name.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

FLOWS = "flows.jsonl"
MAX_BYTES = 1 << 20


class Flow(BaseModel):
    time: datetime.datetime
    protocol: Literal["tls", "http", "tcp"] = Field(
        description="What the proxy read: TLS (SNI), HTTP (Host) or neither"
    )
    destination: str = Field(description="The address the guest connected to")
    port: int
    host: str | None = Field(default=None, description="SNI or Host, when there was one")
    action: Literal["allowed", "refused"]
    reason: str
    credentials: list[str] = Field(
        default_factory=list, description="Names of the credentials injected (never values)"
    )


class FlowLog:
    def __init__(self, directory: Path) -> None:
        self.path = directory / FLOWS

    def append(self, flow: Flow) -> None:
        line = flow.model_dump_json() + "\n"
        try:
            if self.path.stat().st_size + len(line) > MAX_BYTES:
                self.path.replace(self.path.with_name(FLOWS + ".1"))
        except FileNotFoundError:
            pass
        with self.path.open("a") as f:
            f.write(line)

    def read(self, limit: int) -> list[Flow]:
        """The last `limit` flows, oldest first."""
        lines: list[str] = []
        for path in (self.path.with_name(FLOWS + ".1"), self.path):
            if path.exists():
                lines += path.read_text().splitlines()
        return [Flow.model_validate(json.loads(line)) for line in lines[-limit:] if line]
