"""`ember build PATH` (streams like `docker build`, `--run` runs the result) and
`ember builder create/ls/inspect/rm/prune`: builds inside builder VMs (ember/builds)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from ember.cli.common import (
    EXIT_EMBER,
    EXIT_USAGE,
    JsonOption,
    ago,
    app,
    client,
    console,
    emit_json,
    errors,
    fail,
    listed_briefly,
    short_id,
    table,
)
from ember.cli.instances import default_name, follow_to_exit
from ember.cli.resources import delete_each, show_one
from ember.client import EmberClient

PANEL = "Images"
SKIPPED = {".git", ".venv", "__pycache__", "node_modules"}  # never part of a build context

builder_app = typer.Typer(
    no_args_is_help=True, help="Builders: cache disks that builds run on, one at a time."
)
app.add_typer(builder_app, name="builder", rich_help_panel=PANEL)


def source_archive(path: Path) -> bytes:
    """A directory as a tar.gz (without VCS and virtualenv directories), or a .tar.gz as is."""
    if path.is_file():
        return path.read_bytes()
    if not path.is_dir():
        fail(f"{path}: no such directory or archive", EXIT_USAGE)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for item in sorted(path.rglob("*")):
            relative = item.relative_to(path)
            if SKIPPED & set(relative.parts):
                continue
            tar.add(item, arcname=str(relative), recursive=False)
    return out.getvalue()


def parse_secret(value: str) -> dict[str, str]:
    """docker's `--secret id=ID,src=FILE` (the value is read here and sent with the build)."""
    fields = dict(part.split("=", 1) for part in value.split(",") if "=" in part)
    if "id" not in fields or "src" not in fields:
        fail(f"--secret {value!r}: expected id=ID,src=FILE", EXIT_USAGE)
    try:
        return {"id": fields["id"], "value": Path(fields["src"]).read_text()}
    except OSError as exc:
        fail(f"--secret {value!r}: {exc.strerror}: {fields['src']}", EXIT_USAGE)


def stream(api: EmberClient, build_id: str) -> dict[str, Any]:
    """Print the build's log lines and status changes until it ends; its final record.
    Ctrl-C cancels the build, as it does with `docker build`."""
    try:
        for event in api.build_events(build_id):
            if event["type"] == "log":
                console.print(escape(event.get("content") or ""), highlight=False)
            elif event["type"] == "status":
                errors.print(f"[dim]=> {event['status']}[/dim]")
    except KeyboardInterrupt:
        api.cancel_build(build_id)
        errors.print(f"cancelled build {build_id}")
        raise typer.Exit(130) from None
    return api.build(build_id)


@app.command(rich_help_panel=PANEL)
def build(
    path: Path = typer.Argument(..., help="Build context: a directory or a .tar.gz."),
    tag: str | None = typer.Option(
        None, "--tag", "-t", help="Image name in Ember's registry, e.g. apps/web:v1."
    ),
    file: Path | None = typer.Option(
        None, "--file", "-f", help="Dockerfile (default: the context's; else Ember writes one)."
    ),
    builder: str | None = typer.Option(None, "--builder", help="Builder id (default: default)."),
    secret: list[str] = typer.Option(
        [], "--secret", help="id=ID,src=FILE for RUN --mount=type=secret (repeatable)."
    ),
    cpus: int | None = typer.Option(None, "--cpus", help="Builder VM vCPUs (default 2)."),
    memory: int | None = typer.Option(
        None, "--memory", "-m", help="Builder VM memory in MB (default 2048)."
    ),
    timeout: int | None = typer.Option(None, "--timeout", help="Seconds (default 600)."),
    run: bool = typer.Option(False, "--run", help="Run the image once built; exit with its code."),
    as_json: bool = JsonOption,
) -> None:
    """Build an image from source inside a builder VM, streaming its output.

    [dim]ember build . -t apps/web:v1 --run[/dim] builds the directory's Dockerfile and runs
    the result. Without a Dockerfile Ember writes one for a static site or a Python app.
    """
    source = source_archive(path)
    secrets = json.dumps([parse_secret(s) for s in secret]) if secret else None
    fields = {"image_name": tag, "builder_id": builder, "cpus": cpus, "memory_mb": memory,
              "timeout_seconds": timeout, "secrets": secrets,
              "dockerfile": file.read_text() if file is not None else None}  # fmt: skip
    with client(EXIT_EMBER) as api:
        created = api.create_build(source, {k: str(v) for k, v in fields.items() if v is not None})
        errors.print(f"[dim]build {created['id']} on builder {created.get('builder_id')}[/dim]")
        final = created if as_json and not run else stream(api, created["id"])
        if as_json:
            emit_json(final)
        if final["status"] != "ready":
            if not as_json:
                fail(f"build {final['id']} {final['status']}: {final.get('error') or ''}", 1)
            raise typer.Exit(1)
        if not as_json:
            console.print(f"{final['image_ref']} {final['image_digest']}")
        if run:
            raise typer.Exit(run_image(api, final["image_ref"]))


def run_image(api: EmberClient, image: str) -> int:
    created = api.create_instance(name=default_name(image), image=image)
    return follow_to_exit(api, created["id"])


@builder_app.command("create")
def builder_create(
    name: str | None = typer.Option(None, "--name", help="Display name (need not be unique)."),
    disk_size: int | None = typer.Option(None, "--disk-size", help="Cache disk size in GiB."),
    id: str | None = typer.Option(None, "--id", help="Builder id (generated if absent)."),
    as_json: bool = JsonOption,
) -> None:
    """Create a builder and its cache disk."""
    body = {k: v for k, v in (("name", name), ("disk_size_gb", disk_size), ("id", id)) if v}
    with client() as api:
        created = api.create_builder(**body)
    show_one(created, as_json, f"created builder {created['id']} ({created['disk_size_gb']} GiB)")


@builder_app.command("ls")
def builder_ls(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only ids."),
    as_json: bool = JsonOption,
) -> None:
    """List builders, the build each runs and the builds waiting for it."""
    with client() as api:
        rows = api.builders()
    if listed_briefly(rows, as_json, quiet):
        return
    out = table("ID", "NAME", "STATUS", "DISK", "ACTIVE", "QUEUED", "LAST USED")
    for row in rows:
        active = short_id(row["active_build_id"]) if row.get("active_build_id") else ""
        out.add_row(
            row["id"], row.get("name") or "", row["status"], f"{row['disk_size_gb']} GiB",
            active, str(len(row["queued_builds"])), ago(row.get("last_used_at")),
        )  # fmt: skip
    console.print(out)


@builder_app.command("inspect")
def builder_inspect(ref: str = typer.Argument(..., help="Builder id.")) -> None:
    """Show a builder as JSON."""
    with client() as api:
        emit_json(api.builder(ref))


@builder_app.command("prune")
def builder_prune(ref: str = typer.Argument(..., help="Builder id.")) -> None:
    """Reset a builder's cache disk (refused while it has builds)."""
    with client() as api:
        console.print(f"pruned builder {api.prune_builder(ref)['id']}")


@builder_app.command("rm")
def builder_rm(refs: list[str] = typer.Argument(..., help="Builder ids.")) -> None:
    """Delete builders and their cache disks (refused while they have builds)."""
    with client() as api:
        delete_each(refs, api.delete_builder)


__all__ = ["build", "builder_app"]
