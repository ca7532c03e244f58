"""The `ember` command: run the server, mint tokens, and drive the API.

Commands other than `serve` and `token` are clients of the HTTP API (through
`ember.client`); they never import the managers. Without `EMBER_TOKEN`, a
short-lived token is minted from the local data dir when it is readable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich import filesize
from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from ember.client import ApiError, EmberClient
from ember.config import Settings

app = typer.Typer(no_args_is_help=True, help="Ember: run OCI images as QEMU microVMs.")
console = Console()
errors = Console(stderr=True)  # keeps stdout clean for --json readers


def fail(message: str) -> NoReturn:
    errors.print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON.")


@app.command()
def serve() -> None:
    """Run the API server (configured by EMBER_* environment variables)."""
    import uvicorn

    from ember.api.app import create_app
    from ember.api.auth import load_or_create_secret
    from ember.logsetup import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    load_or_create_secret(settings.data_dir)
    typer.echo(f"ember: listening on http://{settings.listen} (data dir {settings.data_dir})")
    typer.echo("ember: get a token with `ember token`, then send 'Authorization: Bearer <token>'")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=10,
        # Exec and copy streams are mostly incompressible; deflate cost a third
        # of exec throughput (ember/guest/README.md).
        ws_per_message_deflate=False,
    )


@app.command()
def token(
    subject: str = typer.Option("admin", help="Who the token is for (the `sub` claim)."),
    ttl: int = typer.Option(0, help="Lifetime in seconds (default EMBER_TOKEN_TTL_SECONDS)."),
) -> None:
    """Mint an API token signed with this server's secret (reads the data dir)."""
    from ember.api.auth import load_or_create_secret, mint_token

    settings = Settings()
    secret = load_or_create_secret(settings.data_dir)
    typer.echo(mint_token(secret, subject, ttl or settings.token_ttl_seconds))


@contextmanager
def client() -> Iterator[EmberClient]:
    token_value = os.environ.get("EMBER_TOKEN")
    settings = Settings()
    if token_value is None and (settings.data_dir / "jwt.secret").exists():
        from ember.api.auth import load_or_create_secret, mint_token

        token_value = mint_token(load_or_create_secret(settings.data_dir), "cli", 3600)
    api = EmberClient(os.environ.get("EMBER_URL") or f"http://{settings.listen}", token_value)
    try:
        yield api
    except ApiError as exc:
        fail(f"{exc.message} [dim]({exc.code})[/dim]")
    finally:
        api.close()


def emit_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


STATUS_COLOURS = {"ready": "green", "failed": "red", "Running": "green", "Stopped": "dim"}


def coloured(value: str) -> str:
    colour = STATUS_COLOURS.get(value, "yellow")
    return f"[{colour}]{value}[/{colour}]"


class _BytesOnly(ProgressColumn):
    """A column shown only for phases measured in bytes (download, unpack)."""

    def __init__(self, column: ProgressColumn) -> None:
        super().__init__()
        self.column = column

    def render(self, task: Task) -> RenderableType:
        if task.fields.get("bytes") and task.total is not None:
            return self.column.render(task)
        return Text("")


class _Rate(ProgressColumn):
    """Bytes per second: rich's recent estimate while running; once finished, the average
    since the bar appeared (a phase's last poll lands after its end, in one jump)."""

    def render(self, task: Task) -> RenderableType:
        speed = task.speed
        if task.finished:
            elapsed = task.elapsed or 0
            moved = task.completed - task.fields.get("first", 0)
            speed = moved / elapsed if elapsed > 0 and moved > 0 else None
        text = f"{filesize.decimal(int(speed))}/s" if speed else "?"
        return Text(text, style="progress.data.speed")


def show_pull(
    updates: Iterable[dict[str, Any]], out: Console, *, transient: bool = False
) -> dict[str, Any]:
    """Render an image's progress (queue, then one bar per phase) until it settles."""
    image: dict[str, Any] = {}
    tasks: dict[str, TaskID] = {}
    columns = (
        TextColumn("{task.description:<12}"),
        BarColumn(),
        _BytesOnly(DownloadColumn()),
        _BytesOnly(_Rate()),
        _BytesOnly(TimeRemainingColumn(elapsed_when_finished=True)),
        TextColumn("{task.fields[note]}"),
    )
    with Progress(*columns, console=out, transient=transient) as bars:

        def finish_others(phase: str | None) -> None:
            for other, task_id in tasks.items():
                task = bars.tasks[task_id]
                if other != phase and not task.finished:
                    total = task.total if task.total is not None else 1
                    waiting = other in ("queued", "resolving")  # no work to show once over
                    bars.update(task_id, total=total, completed=total, note="", visible=not waiting)

        for image in updates:
            status, progress = image["status"], image.get("progress") or {}
            if status in ("ready", "failed"):
                if status == "ready":
                    finish_others(None)
                break
            phase = "queued" if status == "pending" else progress.get("phase") or status
            done, total = progress.get("bytes_done"), progress.get("bytes_total")
            where = image.get("queue_position")
            note = f"position {where}" if where else ""
            finish_others(phase)
            if phase not in tasks:
                tasks[phase] = bars.add_task(
                    phase, total=total, completed=done or 0, bytes=total is not None, note=note,
                    first=done or 0,  # cached layers are not part of the rate
                )  # fmt: skip
            else:
                bars.update(
                    tasks[phase], total=total, completed=done or 0, bytes=total is not None,
                    note=note,
                )  # fmt: skip
    return image


def _pull(api: EmberClient, name: str, platform: str | None, *, quiet: bool) -> dict[str, Any]:
    """Pull with progress; print the outcome unless `quiet` (the caller prints JSON)."""
    api.pull(name, platform)
    image = show_pull(api.watch_image(name), console, transient=quiet)
    if quiet:
        return image
    if image["status"] == "ready":
        size = image.get("size_bytes") or 0
        console.print(f"{coloured('ready')} {image['name']} {image['digest']} {size:,} bytes")
    return image


@app.command()
def pull(
    name: str,
    platform: str | None = typer.Option(None, help="os/arch, e.g. linux/amd64"),
    as_json: bool = JsonOption,
) -> None:
    """Pull an image and convert it to a VM disk, showing progress."""
    with client() as api:
        image = _pull(api, name, platform, quiet=as_json)
    if as_json:
        emit_json(image)
    if image["status"] == "failed":
        fail(f"pull failed: {image.get('error')}")


@app.command()
def images(as_json: bool = JsonOption) -> None:
    """List images."""
    with client() as api:
        rows = api.images()
    if as_json:
        emit_json(rows)
        return
    table = Table("NAME", "STATUS", "DIGEST", "SIZE")
    for row in rows:
        size = f"{(row.get('size_bytes') or 0) / 2**20:.1f} MiB" if row.get("size_bytes") else ""
        table.add_row(row["name"], coloured(row["status"]), row["digest"][:19], size)
    console.print(table)


@app.command()
def rmi(name: str) -> None:
    """Delete an image."""
    with client() as api:
        api.delete_image(name)
    console.print(f"deleted {name}")


def instance_row(row: dict[str, Any]) -> list[str]:
    exit_info = "" if row.get("exit_code") is None else f"exit {row['exit_code']}"
    return [row["id"][:12], row["name"], row["image"], coloured(row["state"]), exit_info]


@app.command()
def run(
    image: str,
    name: str = typer.Option(..., "--name", "-n", help="Instance name."),
    env: list[str] = typer.Option([], "--env", "-e", help="KEY=VALUE, repeatable."),
    size: str = typer.Option("1GB", help="Memory size."),
    vcpus: int = typer.Option(1, help="Virtual CPUs."),
    pull_first: bool = typer.Option(True, "--pull/--no-pull", help="Pull the image first."),
    as_json: bool = JsonOption,
    command: list[str] | None = typer.Argument(None, help="Command overriding the image's CMD."),
) -> None:
    """Pull an image (if needed) and boot it as a new instance."""
    if pull_first:
        with client() as api:
            pulled = _pull(api, image, None, quiet=as_json)
        if pulled["status"] == "failed":
            fail(f"pull failed: {pulled.get('error')}")
    body: dict[str, Any] = {"name": name, "image": image, "size": size, "vcpus": vcpus}
    if env:
        body["env"] = dict(item.split("=", 1) for item in env)
    if command:
        body["cmd"] = command
    with client() as api:
        created = api.create_instance(**body)
        with console.status(f"booting {name}"):
            api.wait(created["id"], "Running", "120s")
        created = api.instance(created["id"])
    if as_json:
        emit_json(created)
    else:
        console.print(f"{coloured(created['state'])} {created['name']} ({created['id']})")


@app.command()
def ps(
    state: str = typer.Option(None, help="Only instances in this state."),
    as_json: bool = JsonOption,
) -> None:
    """List instances."""
    with client() as api:
        rows = api.instances(state)
    if as_json:
        emit_json(rows)
        return
    table = Table("ID", "NAME", "IMAGE", "STATE", "EXIT")
    for row in rows:
        table.add_row(*instance_row(row))
    console.print(table)


@app.command()
def show(ref: str) -> None:
    """Show one instance as JSON."""
    with client() as api:
        emit_json(api.instance(ref))


@app.command()
def logs(
    ref: str,
    follow: bool = typer.Option(False, "--follow", "-f"),
    tail: int = typer.Option(100, help="Lines from the end to start with."),
    source: str = typer.Option("app", help="app | vmm | hypeman"),
) -> None:
    """Print (and follow) an instance's logs."""
    with client() as api:
        for line in api.logs(ref, source=source, tail=tail, follow=follow):
            typer.echo(line)


def _action(ref: str, action: str, as_json: bool) -> None:
    with client() as api:
        result = api.instance_action(ref, action)
    if as_json:
        emit_json(result)
    else:
        console.print(f"{coloured(result['state'])} {result['name']}")


@app.command()
def stop(ref: str, as_json: bool = JsonOption) -> None:
    """Stop an instance (graceful, then forced)."""
    _action(ref, "stop", as_json)


@app.command()
def start(ref: str, as_json: bool = JsonOption) -> None:
    """Start a stopped instance."""
    _action(ref, "start", as_json)


@app.command()
def rm(ref: str) -> None:
    """Delete an instance and everything it owns."""
    with client() as api:
        api.delete_instance(ref)
    console.print(f"deleted {ref}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
