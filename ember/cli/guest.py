"""Inside an instance: exec (an interactive terminal with -it) and cp."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import sys
import termios
import threading
import tty
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import TYPE_CHECKING

import typer

from ember.cli.common import (
    EXIT_EMBER,
    EXIT_USAGE,
    CliError,
    app,
    client,
    complete_instances,
    errors,
    fail,
    parse_pairs,
    workload_command,
)
from ember.client import ApiError, EmberClient
from ember.client.wire import EXEC_CLOSED

if TYPE_CHECKING:  # the WebSocket code loads only for exec and cp (start-up time)
    from ember.client.streams import ExecSession

PANEL = "Inside instances"


# ---- exec ------------------------------------------------------------------------------


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@contextlib.contextmanager
def raw_terminal(fd: int, enabled: bool) -> Iterator[None]:
    """The local terminal in raw mode (keys go to the guest as typed: Ctrl-C, Ctrl-D,
    arrows), restored on the way out whatever happens."""
    if not enabled:
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def terminal_size() -> tuple[int, int] | None:
    for stream in (sys.stdout, sys.stdin, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            size = os.get_terminal_size(stream.fileno())
            return size.lines, size.columns
    return None


def pump(session: ExecSession, *, send_stdin: bool, resizes: bool) -> int:
    """Relay until the process exits: output to stdout (a thread), stdin and resizes to
    the guest (here). One pipe wakes this loop for both the end and a SIGWINCH."""
    from websockets.exceptions import ConnectionClosed

    wake_read, wake_write = os.pipe()
    failure: list[BaseException] = []

    def read_output() -> None:
        try:
            for chunk in session.output():
                write_all(sys.stdout.fileno(), chunk)
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)
        finally:
            os.write(wake_write, b"x")

    def on_winch(_signum: int, _frame: FrameType | None) -> None:
        os.write(wake_write, b"w")

    previous = signal.signal(signal.SIGWINCH, on_winch) if resizes else None
    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    stdin = sys.stdin.fileno()
    watching = [wake_read, stdin] if send_stdin else [wake_read]
    try:
        while True:
            ready, _, _ = select.select(watching, [], [])
            if wake_read in ready:
                events = os.read(wake_read, 64)
                if b"x" in events:
                    break
                if b"w" in events and (size := terminal_size()):
                    session.resize(*size)
            if stdin in ready:
                data = os.read(stdin, 32 * 1024)
                if data:
                    session.send_input(data)
                else:  # end of input: close the process's stdin, keep relaying output
                    session.end_input()
                    watching.remove(stdin)
    except ConnectionClosed:
        reader.join(5)
    finally:
        if previous is not None:
            signal.signal(signal.SIGWINCH, previous)
        os.close(wake_read)
        os.close(wake_write)
    if failure:
        raise failure[0]
    if session.exit_code is None:
        raise ApiError(0, "exec_closed", EXEC_CLOSED)
    return session.exit_code


@app.command(rich_help_panel=PANEL, context_settings={"allow_interspersed_args": False})
def exec(
    ref: str = typer.Argument(
        ..., autocompletion=complete_instances, help="Instance name, id or id prefix."
    ),
    command: list[str] = typer.Argument(
        ..., help="Command and arguments (a leading `--` is optional)."
    ),
    interactive: bool = typer.Option(False, "--interactive", "-i", help="Send stdin."),
    terminal: bool = typer.Option(False, "--tty", "-t", help="Allocate a terminal (use -it)."),
    env: list[str] = typer.Option([], "--env", "-e", help="KEY=VALUE (repeatable)."),
    workdir: str | None = typer.Option(None, "--workdir", "-w", help="Working directory."),
    timeout: int | None = typer.Option(None, "--timeout", help="Kill it after this many seconds."),
) -> None:
    """Run a command in a running instance; exits with its exit code.

    [dim]ember exec -it NAME /bin/sh[/dim] opens a shell (Ctrl-D leaves it).
    """
    command = workload_command(command)
    if not command:
        fail("exec: a command is needed after the instance", EXIT_USAGE)
    with client(EXIT_EMBER) as api:
        code = run_exec(api, ref, command, interactive=interactive, terminal=terminal,
                        env=parse_pairs(env, "env"), workdir=workdir, timeout=timeout)  # fmt: skip
    raise typer.Exit(code)


def run_exec(
    api: EmberClient, ref: str, command: list[str], *, interactive: bool, terminal: bool,
    env: dict[str, str], workdir: str | None = None, timeout: int | None = None,
) -> int:  # fmt: skip
    """Run `command` in the instance, relaying stdin (`interactive`) and a terminal
    (`terminal`, this one's size and TERM); its exit code. `exec` and `run -it`."""
    from ember.client.streams import ExecRequest, exec_session

    local_tty = terminal and os.isatty(sys.stdin.fileno())
    size = terminal_size() if terminal else None
    environment = dict(env)
    if terminal and "TERM" not in environment:  # the guest's programs draw for this terminal
        environment["TERM"] = os.environ.get("TERM") or "xterm"
    request = ExecRequest(
        command, tty=terminal, env=environment or None, cwd=workdir,
        timeout=timeout, rows=size[0] if size else None, cols=size[1] if size else None,
    )  # fmt: skip
    with (
        exec_session(api, ref, request) as session,
        raw_terminal(sys.stdin.fileno(), local_tty),
    ):
        return pump(session, send_stdin=interactive, resizes=local_tty)


# ---- cp --------------------------------------------------------------------------------

REMOTE_RE = re.compile(r"^(?P<ref>[A-Za-z0-9][A-Za-z0-9_.-]*):(?P<path>.*)$")


def split_remote(arg: str) -> tuple[str, str] | None:
    """`INSTANCE:PATH` -> (instance, path); a local path (has a `/` before any `:`, or no
    `:`) -> None. Write `./a:b` for a local file with a colon in its name."""
    match = REMOTE_RE.match(arg)
    if not match:
        return None
    return match["ref"], match["path"] or "/"


def guest_target(api: EmberClient, ref: str, guest: str, source: Path) -> str:
    """Where a local file or directory lands, as docker cp decides: inside `guest` when
    it is a directory, else under that name."""
    info = api.stat_path(ref, guest, follow_links=True)
    if info.get("exists") and info.get("is_dir"):
        return str(PurePosixPath(guest) / source.name)
    if guest.endswith("/"):
        raise CliError(f"{ref}:{guest}: no such directory")
    return guest


def local_target(local: Path, guest: str) -> Path:
    if local.is_dir():
        return local / (PurePosixPath(guest).name or "root")
    if not local.parent.is_dir():
        raise CliError(f"{local.parent}: no such directory")
    return local


@app.command(rich_help_panel=PANEL)
def cp(
    src: str = typer.Argument(..., help="INSTANCE:PATH, a local path, or - (a tar on stdin)."),
    dst: str = typer.Argument(..., help="INSTANCE:PATH, a local path, or - (a tar to stdout)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Copy files or directories between an instance and this machine.

    [dim]ember cp ./site NAME:/srv[/dim], [dim]ember cp NAME:/var/log/app.log .[/dim];
    [dim]-[/dim] is a tar stream, as docker cp has it: [dim]ember cp NAME:/etc - | tar t[/dim].
    """
    from ember.cli.progress import byte_bar
    from ember.client.streams import copy_from, copy_tar_from, copy_tar_to

    remote_src, remote_dst = split_remote(src), split_remote(dst)
    if bool(remote_src) == bool(remote_dst):
        fail("cp: exactly one of SRC and DST must be INSTANCE:PATH", EXIT_USAGE)
    show = not quiet and errors.is_terminal
    with client() as api:
        if remote_dst:
            ref, guest = remote_dst
            if src == "-":
                with byte_bar(errors, f"tar on stdin -> {ref}:{guest}", None, show=show) as step:
                    copied = copy_tar_to(api, ref, sys.stdin.buffer, guest, step)
                where = f"{ref}:{guest}"
            else:
                copied, where = upload(api, ref, guest, Path(src), show)
        else:
            assert remote_src is not None
            ref, guest = remote_src
            if dst == "-":
                with byte_bar(errors, f"{ref}:{guest} -> tar on stdout", None, show=show) as step:
                    copied = copy_tar_from(api, ref, guest, sys.stdout.buffer, step)
                where = "stdout (a tar stream)"
            else:
                local = local_target(Path(dst), guest)
                with byte_bar(errors, f"{ref}:{guest} -> {local}", None, show=show) as step:
                    copied = copy_from(api, ref, guest, local, step)
                where = str(local)
    if not quiet:
        errors.print(f"copied {copied:,} bytes to {where}")


def upload(api: EmberClient, ref: str, guest: str, source: Path, show: bool) -> tuple[int, str]:
    """A local file or tree into the guest, with a byte bar: (bytes, where it went)."""
    from ember.cli.progress import byte_bar
    from ember.client.streams import copy_to

    if not source.exists():
        raise CliError(f"{source}: no such file or directory")
    target = guest_target(api, ref, guest, source)
    total = sum(p.stat().st_size for p in source.rglob("*") if p.is_file()) \
        if source.is_dir() else source.stat().st_size  # fmt: skip
    with byte_bar(errors, f"{source} -> {ref}:{target}", total, show=show) as step:
        return copy_to(api, ref, source, target, step), f"{ref}:{target}"
