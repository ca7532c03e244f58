"""The fast path of `ember ps` and `ember exec NAME CMD...`: built-in modules only.

Typer, rich, httpx and websockets cost most of a command's time (measured with `python
-X importtime`: ~0.35 s of imports for a ~20 ms request), and so do the standard
library's `socket`, `json` and `urllib.parse` on this scale (`ember/client/wire.py`),
so `main` tries this first. It answers only what it can answer exactly as the full
command would: a plain command line (`ps` with -a, -q, --json, --state; `exec` with no
options), an answer from an http:// server (a 200; an accepted WebSocket), and a table
`listing.render` can draw. Anything else (help, a typo, an error to explain, a table to
fold, an unusual terminal) returns None and the full CLI runs, so errors and hints have
one author. The columns and cells are `listing.instances_listing`, shared with the full
`ps`; the exec request and frames are those of `ember.client.streams`.
"""

from __future__ import annotations

import os
import sys

from ember.cli.listing import instances_listing, own_registry, render, short_id, state_name
from ember.cli.listing import visible as visible_rows
from ember.client.config import config_from_env, local_token
from ember.client.wire import (
    BINARY,
    EXEC_CLOSED,
    TEXT,
    dumps_strings,
    get_json,
    loads,
    open_websocket,
)

TYPE_CHECKING = False  # not `typing`'s: importing it costs a fast command ~5 ms
if TYPE_CHECKING:
    from typing import Any

    from ember.client.wire import WebSocket

FLAGS = {"-a": "all", "--all": "all", "-q": "quiet", "--quiet": "quiet", "--json": "json"}
# Environment rich reads to decide colour: with any of them set, rich decides.
RICH_SETTINGS = ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")
# What an instance reference may be here without quoting (names and ids are).
SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def run(argv: list[str]) -> int | None:
    """Run `argv` if it is a command this path answers exactly; None: run the full CLI."""
    if argv[:1] == ["exec"]:
        return _exec(argv[1:])
    options = _ps_options(argv)
    if options is None:
        return None
    config = config_from_env()
    state = options.get("state")
    path = "/instances" + (f"?state={state_name(state)}" if state else "")
    rows = get_json(config.base_url, path, config.api_key or local_token(config))
    if not isinstance(rows, list):
        return None
    rows = visible_rows(rows, bool(options.get("all")), state)
    if options.get("json"):
        import json  # only here: its decoder's regular expressions cost the table ~3 ms

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
    state = options.get("state")
    if "state" in options and not (state and state.isascii() and state.isalpha()):
        return None  # empty, or to be quoted: the full CLI
    return options


def _exec(args: list[str]) -> int | None:
    """`exec NAME CMD...` (no options: they come before NAME), as `guest.exec` runs it
    without -i or -t: output relayed as it comes, the command's exit code."""
    if len(args) < 2 or args[0].startswith("-") or not SAFE.issuperset(args[0]):
        return None
    command = args[2:] if args[1] == "--" else args[1:]  # common.workload_command
    if not command:
        return None
    config = config_from_env()
    path = f"/instances/{args[0]}/exec"
    socket = open_websocket(config.base_url, path, config.api_key or local_token(config))
    if socket is None:
        return None  # refused or unreachable: the full CLI says why
    try:
        # streams.ExecRequest(command).encode(), byte for byte
        socket.send(TEXT, f'{{"command": {dumps_strings(command)}, "tty": false}}'.encode())
        code = _relay(socket)
    except KeyboardInterrupt:
        sys.stderr.write("\n")  # as click's Abort
        return 130
    except OutputRefused as exc:
        return _failed(str(exc))
    except OSError:  # the connection failed midway: as its end (websockets says so too)
        code = None
    finally:
        socket.close()
    return _failed(EXEC_CLOSED) if code is None else code


class OutputRefused(Exception):
    """Standard output refused the command's output (a closed pipe)."""


def _relay(socket: WebSocket) -> int | None:
    """Output to stdout until the exit code (then the close handshake), as
    `streams.ExecSession.output` and `guest.pump` do; None if the stream ends first."""
    code = None
    while (message := socket.receive()) is not None:
        opcode, payload = message
        if opcode == BINARY and code is None:
            view = memoryview(payload)
            try:
                while view:
                    view = view[os.write(1, view) :]
            except OSError as exc:  # a closed pipe: said as the full CLI says it
                raise OutputRefused(exc.strerror or str(exc)) from exc
        elif opcode == TEXT and code is None:
            control = loads(payload.decode())
            if isinstance(control, dict) and isinstance(control.get("exitCode"), int):
                code = int(control["exitCode"])
    return code


def _failed(message: str) -> int:
    """A failure once the command ran (it cannot be run again by the full CLI): told by
    the full CLI's `fail`, as `ember exec` tells it."""
    import typer

    from ember.cli.common import EXIT_EMBER, fail

    try:
        fail(message, EXIT_EMBER)
    except typer.Exit as exc:
        return exc.exit_code


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
