"""Build the static guest agent, keyed by a hash of its source and compiler."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from ember.errors import Unavailable

AGENT_SOURCE = Path(__file__).resolve().parent.parent / "guest" / "agent" / "agent.c"
CFLAGS = ("-static", "-O2", "-Wall", "-Wextra", "-Werror")


def _compiler_id() -> str:
    try:
        return subprocess.run(
            ["gcc", "--version"], check=True, capture_output=True, text=True
        ).stdout.splitlines()[0]
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        raise Unavailable("gcc is not installed (run `make setup`)") from exc


def build_agent(system_dir: Path) -> Path:
    """Compile agent.c once per (source, flags, compiler); returns the binary path."""
    digest = hashlib.sha256()
    digest.update(AGENT_SOURCE.read_bytes())
    digest.update(" ".join(CFLAGS).encode())
    digest.update(_compiler_id().encode())
    out = system_dir / "agent" / digest.hexdigest()[:16] / "ember-agent"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    proc = subprocess.run(
        ["gcc", *CFLAGS, "-o", str(tmp), str(AGENT_SOURCE)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise Unavailable(f"building the guest agent failed:\n{proc.stderr}")
    subprocess.run(["strip", str(tmp)], check=False, capture_output=True)
    os.replace(tmp, out)
    return out
