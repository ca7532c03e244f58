"""The fast path of `ember ps`: `socket`, `json` and `listing`, nothing else.

Typer, rich and httpx cost most of a command's time (measured with `python -X
importtime`: ~0.35 s of imports for a ~20 ms request), so `main` tries this first.
It answers only what it can answer exactly as the full command would: a plain
command line (`ps` with -a, -q, --json, --state), a 200 from an http:// server, and a
table `listing.render` can draw. Anything else (help, a typo, an error to explain, a
table to fold, an unusual terminal) returns None and the full CLI runs, so errors and
hints have one author. The columns and cells are `listing.instances_listing`, shared
with the full `ps`.

The request is one HTTP/1.1 GET written on a socket (`Connection: close`, the body
read to the end): `http.client` alone imports the `email` package and `ssl`, ~50 ms,
more than the request. An answer that is not a plain 200 with a `Content-Length`
(chunked, an error) is left to the full CLI.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from urllib.parse import quote, urlsplit

from ember.cli.listing import instances_listing, own_registry, render, short_id, state_name
from ember.cli.listing import visible as visible_rows
from ember.client.config import config_from_env, local_token

TYPE_CHECKING = False  # not `typing`'s: importing it costs a fast command ~5 ms
if TYPE_CHECKING:
    from typing import Any

FLAGS = {"-a": "all", "--all": "all", "-q": "quiet", "--quiet": "quiet", "--json": "json"}
# Environment rich reads to decide colour: with any of them set, rich decides.
RICH_SETTINGS = ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")
TIMEOUT = 60.0


def run(argv: list[str]) -> int | None:
    """Run `argv` if it is a command this path answers exactly; None: run the full CLI."""
    options = _ps_options(argv)
    if options is None:
        return None
    config = config_from_env()
    state = options.get("state")
    path = "/instances" + (f"?state={quote(state_name(state))}" if state else "")
    rows = _get(config.base_url, path, config.api_key or local_token(config))
    if not isinstance(rows, list):
        return None
    rows = visible_rows(rows, bool(options.get("all")), state)
    if options.get("json"):
        print(json.dumps(rows, indent=2, default=str))
    elif options.get("quiet"):
        print("".join(f"{short_id(row['id'])}\n" for row in rows), end="")
    else:
        terminal = _terminal()
        listing = instances_listing(rows, own_registry(config.base_url))
        text = render(listing, colour=terminal[0], width=terminal[1]) if terminal else None
        if text is None:
            return None
        sys.stdout.write(text)
    return 0


def _ps_options(argv: list[str]) -> dict[str, Any] | None:
    """`ps` and its options as Typer would read them, or None for anything else."""
    if argv[:1] != ["ps"]:
        return None
    options: dict[str, Any] = {}
    args = iter(argv[1:])
    for arg in args:
        if arg in FLAGS:
            options[FLAGS[arg]] = True
        elif arg == "--state":
            options["state"] = next(args, None)
        elif arg.startswith("--state="):
            options["state"] = arg.removeprefix("--state=")
        else:
            return None  # -aq, --help, a typo...: the full CLI knows
    return None if "state" in options and not options["state"] else options


def _get(base_url: str, path: str, token: str | None) -> Any:
    """The JSON of a 200 answer to GET `path`, or None for anything else."""
    parts = urlsplit(base_url)
    if parts.scheme != "http" or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    request = (
        f"GET {parts.path.rstrip('/')}{path} HTTP/1.1\r\n"
        f"Host: {host}:{parts.port or 80}\r\nAuthorization: Bearer {token or ''}\r\n"
        "Accept: application/json\r\nConnection: close\r\n\r\n"
    )
    try:
        with socket.create_connection((parts.hostname, parts.port or 80), TIMEOUT) as sock:
            sock.sendall(request.encode())
            answer = b"".join(iter(lambda: sock.recv(1 << 16), b""))
    except OSError:
        return None
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *fields = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in
               (field.partition(":") for field in fields)}  # fmt: skip
    if status.split(" ")[1:2] != ["200"] or headers.get("content-length") != str(len(body)):
        return None
    return json.loads(body)


def _terminal() -> tuple[bool, int] | None:
    """(colour, width) as the full CLI's console would choose them, or None where rich's
    own detection should decide (its colour settings, a dumb terminal)."""
    env = os.environ
    if any(name in env for name in RICH_SETTINGS):
        return None
    tty = sys.stdout.isatty()
    if tty and env.get("TERM", "").lower() in ("dumb", "unknown"):
        return None
    columns = env.get("COLUMNS", "")
    if not tty and not columns:
        return False, 1000  # a pipe gets whole lines (common.console)
    if columns.isdigit():
        return tty, int(columns)
    for fd in (0, 1, 2):
        try:
            return tty, os.get_terminal_size(fd).columns or 80
        except OSError:
            continue
    return tty, 80
