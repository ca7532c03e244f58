"""Defaults the server and its clients share, in a module that imports nothing: the CLI
reads them without loading the server's settings (pydantic-settings) at every start."""

from pathlib import Path

DEFAULT_LISTEN = "127.0.0.1:4973"
DEFAULT_DATA_DIR = Path("/var/lib/ember")
