"""The `ember` command: run the server, mint tokens, and drive the API.

Commands other than `serve`, `token` and `doctor` are clients of the HTTP API
(through `ember.client`); they never import the managers. Configuration:
EMBER_BASE_URL / EMBER_API_KEY (or HYPEMAN_BASE_URL / HYPEMAN_API_KEY); without a
key, a local server's secret is used when this user can read it (root on the host).
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

# Typer 0.29 vendors click; its exceptions are only reachable there.
from typer._click import exceptions as click

# Importing the command modules registers their commands on `app`.
from ember.cli import groups, guest, host, images, instances, resources  # noqa: F401
from ember.cli.common import EXIT_USAGE, app, errors
from ember.cli.progress import show_pull

__all__ = ["app", "main", "show_pull"]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI. A bad command line is one line on stderr (not click's box) and 2."""
    command = typer.main.get_command(app)
    try:
        result = command.main(argv, prog_name="ember", standalone_mode=False)
    except click.NoArgsIsHelpError:
        return 0  # the help is the answer (already shown)
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        errors.print(f"[red]error:[/red] {escape(exc.format_message())}{hint}")
        return exc.exit_code if exc.exit_code else EXIT_USAGE
    except click.ClickException as exc:
        errors.print(f"[red]error:[/red] {escape(exc.format_message())}")
        return exc.exit_code
    except typer.Abort:
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
