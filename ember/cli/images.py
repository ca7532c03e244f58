"""Images: pull, push, images, rmi."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from ember.cli.common import (
    EXIT_ERROR,
    JsonOption,
    app,
    cell,
    client,
    coloured,
    console,
    each,
    emit_json,
    errors,
    fail,
    human_bytes,
    listed_briefly,
    registry_host,
    table,
)
from ember.client import EmberClient
from ember.client.push import push_source, read_source


def pull_image(api: EmberClient, name: str, platform: str | None, *, quiet: bool) -> dict[str, Any]:
    """Pull with progress bars (on stderr when `quiet`: stdout is then for JSON)."""
    from ember.cli.progress import show_pull  # rich.progress: only when shown

    api.pull(name, platform)
    out = errors if quiet else console
    image = show_pull(api.watch_image(name), out, transient=quiet)
    if not quiet and image["status"] == "ready":
        size = image.get("size_bytes") or 0
        console.print(f"{coloured('ready')} {image['name']} {image['digest']} {size:,} bytes")
    return image


@app.command(rich_help_panel="Images")
def pull(
    name: str = typer.Argument(..., help="Image reference, e.g. docker.io/library/alpine:3.20"),
    platform: str | None = typer.Option(None, help="os/arch, e.g. linux/amd64"),
    as_json: bool = JsonOption,
) -> None:
    """Pull an image and convert it to a VM disk, showing progress."""
    with client() as api:
        image = pull_image(api, name, platform, quiet=as_json)
    if as_json:
        emit_json(image)
    if image["status"] == "failed":
        fail(f"pull failed: {image.get('error')}")


@app.command(rich_help_panel="Images")
def push(
    source: Path = typer.Argument(
        ..., help="An OCI layout directory, an OCI archive or a `docker save` tarball."
    ),
    target: str = typer.Argument(..., help="Repository[:tag] in Ember's registry, e.g. app:v1"),
    ref: str | None = typer.Option(
        None, "--ref", help="Which image of a source holding several (its name or tag)."
    ),
    wait: bool = typer.Option(
        True, "--wait/--no-wait", help="Wait for the conversion to a VM disk."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Push a local image into Ember's registry; it is then converted and ready to run."""
    from ember.cli.progress import byte_bar, show_pull

    repository, _, tag = target.rpartition(":") if ":" in target else (target, "", "latest")
    if "/" in tag:  # a host:port prefix, not a tag
        repository, tag = target, "latest"
    with client() as api:
        image_source = read_source(source, ref)
        show = not as_json and errors.is_terminal
        with byte_bar(
            errors, f"push {repository}:{tag}", image_source.total_bytes, show=show
        ) as step:
            digest = push_source(api, image_source, repository, tag, step)
        name = f"{registry_host(api)}/{repository}:{tag}"
        image = (
            api.image(name)
            if not wait
            else show_pull(api.watch_image(name), errors, transient=True)
        )
    if as_json:
        emit_json(image | {"pushed_digest": digest})
    elif image.get("status") == "failed":
        fail(f"pushed {name}, but its conversion failed: {image.get('error')}", EXIT_ERROR)
    else:
        console.print(f"{coloured(image['status'])} {name} {digest}")


@app.command(rich_help_panel="Images")
def images(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only image names."),
    as_json: bool = JsonOption,
) -> None:
    """List images."""
    with client() as api:
        rows = api.images()
    if listed_briefly(rows, as_json, quiet, key="name"):
        return
    out = table(cell("NAME", fold=True), cell("STATUS"), cell("DIGEST"), cell("SIZE"),
                cell("ERROR", fold=True))  # fmt: skip
    for row in rows:
        digest = (row.get("digest") or "").removeprefix("sha256:")[:12]
        out.add_row(
            escape(row["name"]), coloured(row["status"]), digest,
            human_bytes(row.get("size_bytes")), escape(row.get("error") or ""),
        )  # fmt: skip
    console.print(out)


@app.command(rich_help_panel="Images")
def rmi(names: list[str] = typer.Argument(..., help="Image names or digests.")) -> None:
    """Delete images (a name sharing its image with another only loses the name)."""

    def delete(name: str) -> str:
        api.delete_image(name)
        return f"deleted {name}"

    with client() as api:
        each(names, delete)
