"""The `ember` command: run the server, mint tokens, and drive the API.

Commands other than `serve`, `token` and `doctor` are clients of the HTTP API
(through `ember.client`); they never import the managers. Configuration:
EMBER_BASE_URL / EMBER_API_KEY (or HYPEMAN_BASE_URL / HYPEMAN_API_KEY); without a
key, a local server's secret is used when this user can read it (root on the host).

Start-up is most of a read command's time: `main` first offers the command line to
the fast path (`ember/cli/fast.py`, the standard library only), and imports Typer, rich,
httpx and the command modules only when that path declines.
"""

from __future__ import annotations

import sys

from ember.cli import fast

TYPE_CHECKING = False  # not `typing`'s: the fast path would pay for importing it
if TYPE_CHECKING:
    from typing import Any

    from typer import Typer
    from typer._click.core import Command

__all__ = ["main"]  # and `app`, built on first use


def __getattr__(name: str) -> Any:
    """`app` (the Typer app with every command) is built on first use."""
    if name != "app":
        raise AttributeError(f"module 'ember.cli.main' has no attribute {name!r}")
    return _full_app()


def _full_app() -> Typer:
    # Importing the command modules registers their commands on `app`.
    from ember.cli import (  # noqa: F401
        builds,
        cluster,
        groups,
        guest,
        host,
        images,
        instances,
        resources,
        templates,
    )
    from ember.cli.common import app

    return app


def plain_metavars(command: Command) -> None:
    """Help as docker shows it: `--memory MEMORY`, and a plain flag with no type at all,
    instead of Typer's `<str>`, `<list[str]>` and `<bool>` (which also narrow the help
    column enough to cut words like `[HOSTNAME:]HOST_PORT:GUEST_PORT`)."""
    import typer
    from typer.core import TyperArgument, TyperOption

    from ember.cli.common import HELP_NAMES

    # The help option is made (once) on demand: make it now so it is plain too.
    help_option = command.get_help_option(typer.Context(command, help_option_names=HELP_NAMES))
    for param in [*command.params, help_option]:
        if isinstance(param, TyperOption) and param.metavar is None:
            long_names = [opt for opt in param.opts if opt.startswith("--")] or param.opts
            param.metavar = "" if param.is_flag else long_names[0].lstrip("-").upper()
        elif isinstance(param, TyperArgument) and param.metavar is None and param.name:
            param.metavar = param.name.rstrip("_").upper()  # IMAGE, not {image}
    for sub in getattr(command, "commands", {}).values():
        plain_metavars(sub)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI. A bad command line is one line on stderr (not click's box) and 2."""
    answered = fast.run(sys.argv[1:] if argv is None else argv)
    if answered is not None:
        return answered
    import typer
    from rich.markup import escape
    from typer._click import exceptions as click  # Typer 0.29 vendors click: only there

    from ember.cli.common import EXIT_USAGE, errors

    command = typer.main.get_command(_full_app())
    plain_metavars(command)
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
