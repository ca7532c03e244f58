"""What every command shares: the Typer app, consoles, errors, the client, JSON output."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table
from rich.text import Text

from ember.cli.listing import STATUS_COLOURS, Listing, own_registry

# Re-exported: commands take the shared formatting from here.
from ember.cli.listing import ago as ago
from ember.cli.listing import human_bytes as human_bytes
from ember.cli.listing import image_label as image_label
from ember.cli.listing import short_id as short_id
from ember.client import ApiError, EmberClient
from ember.client.config import ClientConfig, config_from_env, local_token
from ember.client.push import SourceError

HELP_NAMES = ["-h", "--help"]
app = typer.Typer(
    no_args_is_help=True,
    help="Ember: run OCI images as QEMU microVMs.",
    rich_markup_mode="rich",
    context_settings={"help_option_names": HELP_NAMES},
)


def _version(value: bool) -> None:
    if value:
        from ember import __version__

        typer.echo(f"ember {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Ember: run OCI images as QEMU microVMs."""


# A pipe gets whole lines (`ember ps | grep` sees every column); a terminal, or COLUMNS,
# says how wide to be. Rich writes no colour codes where stdout is not a terminal.
console = Console(
    highlight=False,
    width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 1000,
)
# stderr keeps stdout clean for --json readers; soft_wrap keeps an error on one line.
errors = Console(stderr=True, highlight=False, soft_wrap=True)

# Exit codes: 1 for an error, 2 for a bad command line (click's); `run` and `exec` pass
# the workload's code on, so their own failures use 125 as docker does.
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_EMBER = 125

JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON.")


class CliError(Exception):
    """A failure to report as one line on stderr."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message, self.code = message, code


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    one_line = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    errors.print(f"[red]error:[/red] {escape(one_line)}")
    raise typer.Exit(code)


def describe(exc: ApiError, config: ClientConfig) -> str:
    """One line for an API error, with what to do about it when that is known."""
    if exc.code == "unreachable":
        hint = (
            f" (set EMBER_BASE_URL, now {config.base_url_source})"
            if config.base_url_source != "default"
            else " (is `ember serve` running? set EMBER_BASE_URL for another server)"
        )
        return exc.message + hint
    if exc.status == 401:
        where = f"the key in {config.api_key_source}" if config.api_key_source else "no API key"
        return (
            f"{exc.message}: {where} was refused; set EMBER_API_KEY "
            "(`ember token` on the server host mints one)"
        )
    return in_cli_terms(exc)


def in_cli_terms(exc: ApiError) -> str:
    """The API's message, said in the CLI's terms where they differ (by the error's code)."""
    rewrite = CLI_HINTS.get(exc.code)
    return rewrite(exc.message) if rewrite else exc.message


# What the API says in its own terms, said in the CLI's (by the error's code).
CLI_HINTS: dict[str, Callable[[str], str]] = {
    "from_running_required": lambda message: message.replace("from_running=true", "--from-running"),
    "volumes_not_supported": lambda message: (
        message
        + " (`ember stop INSTANCE`, `ember volume detach VOLUME INSTANCE`; or `ember volume "
        "attach VOLUME INSTANCE PATH --read-only` after detaching)"
    ),
}


def make_client(timeout: float = 60) -> tuple[EmberClient, ClientConfig]:
    config = config_from_env()
    token = config.api_key or local_token(config)
    return EmberClient(config.base_url, token or "", timeout, config=config), config


@contextmanager
def client(code: int = EXIT_ERROR) -> Iterator[EmberClient]:
    """A client; any API, source or local file error ends the command with one line."""
    api, config = make_client()
    try:
        yield api
    except ApiError as exc:
        fail(describe(exc, config), code)
    except (CliError, SourceError) as exc:
        fail(str(exc), getattr(exc, "code", code))
    except OSError as exc:
        fail(f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}", code)
    finally:
        api.close()


def each(refs: list[str], action: Callable[[str], str]) -> None:
    """Do `action` to every ref, going on after a refusal: one line per ref (what `action`
    returns, or the error), exit 1 at the end if any failed (docker's rm, rmi). An
    unreachable server or a refused key still ends it at once."""
    failed = 0
    for ref in refs:
        try:
            console.print(escape(action(ref)))
        except (ApiError, CliError) as exc:
            if isinstance(exc, ApiError) and (exc.code == "unreachable" or exc.status == 401):
                raise
            message = in_cli_terms(exc) if isinstance(exc, ApiError) else exc.message
            errors.print(f"[red]error:[/red] {escape(message)}")
            failed += 1
    if failed:
        raise typer.Exit(EXIT_ERROR)


def complete_instances(incomplete: str) -> list[str]:
    """Shell completion: names of instances starting with what was typed (quietly nothing
    when the server cannot be asked)."""
    try:
        api, _ = make_client(timeout=3)
        with api:
            names = [row["name"] for row in api.instances()]
    except (ApiError, OSError):
        return []
    return [name for name in names if name.startswith(incomplete)]


def emit_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def listed_briefly(rows: list[dict[str, Any]], as_json: bool, quiet: bool, key: str = "id") -> bool:
    """The short forms of an `ls`: every row as JSON, or (`--quiet`) only each row's `key`,
    one a line. True when printed (no table wanted)."""
    if as_json:
        emit_json(rows)
        return True
    if quiet:
        for row in rows:  # ids as short as the tables show them (every lookup takes them)
            typer.echo(short_id(row[key]) if key == "id" else row[key])
        return True
    return False


def table(*headers: str | Column) -> Table:
    """A table without a box (easy to `grep` and `awk`), two spaces between columns."""
    return Table(*headers, box=None, header_style="bold", padding=(0, 2, 0, 0), pad_edge=False)


def rich_table(listing: Listing) -> Table:
    """A listing as a rich table (what `listing.render` draws without rich, when it can)."""
    out = table(*(cell(column.header, fold=column.fold) for column in listing.columns))
    for row in listing.rows:
        out.add_row(*(Text.assemble(*spans) for spans in row))
    return out


def cell(header: str, *, fold: bool = False) -> Column:
    """A column that never wraps or cuts, or (`fold`) that folds long text onto more lines
    rather than cutting it to `127.0.0.1:4…`."""
    return Column(header, no_wrap=not fold, overflow="fold")


def coloured(value: str) -> str:
    colour = STATUS_COLOURS.get(value, "yellow")
    return f"[{colour}]{escape(value)}[/{colour}]"


def workload_command(args: list[str] | None) -> list[str]:
    """The command after IMAGE or INSTANCE. A leading `--` only ends the options (POSIX
    utility syntax, kubectl's habit): options stop at the first positional anyway."""
    args = list(args or [])
    return args[1:] if args[:1] == ["--"] else args


def parse_pairs(items: list[str], what: str) -> dict[str, str]:
    """KEY=VALUE items (for env, `KEY` alone takes this shell's value, as docker does)."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            if what == "env" and key in os.environ:
                value = os.environ[key]
            else:
                raise CliError(f"--{what} {item!r}: expected KEY=VALUE", EXIT_USAGE)
        pairs[key] = value
    return pairs


def registry_host(api: EmberClient) -> str:
    """host:port images pushed to this server are named with."""
    return own_registry(api.base_url)
