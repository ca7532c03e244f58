"""Defaults the server and its clients share, in a module that imports nothing (not even
`pathlib`): the CLI reads them on its fast path without loading the server's settings
(pydantic-settings) at every start."""

DEFAULT_LISTEN = "127.0.0.1:4973"
DEFAULT_DATA_DIR = "/var/lib/ember"
