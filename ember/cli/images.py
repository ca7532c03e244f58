"""Images: pull, load (a local archive in), push (to another registry), images, rmi."""

from __future__ import annotations

import sys
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
def load(
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
    """Load a local image into Ember (through its registry); it is then converted and
    ready to run."""
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
def push(
    image: str = typer.Argument(..., help="An Ember image, e.g. app:v1"),
    target: str = typer.Argument(..., help="Where to, e.g. registry.example.com/team/app:v1"),
    username: str | None = typer.Option(None, "--username", "-u", help="Registry user name."),
    password: str | None = typer.Option(
        None, envvar="EMBER_REGISTRY_PASSWORD", help="Registry password (or use --password-stdin)."
    ),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the registry password from standard input."
    ),
    token: str | None = typer.Option(
        None, "--registry-token", envvar="EMBER_REGISTRY_TOKEN", help="A bearer token instead."
    ),
    insecure: bool = typer.Option(False, "--insecure", help="Allow a plain-HTTP registry."),
    as_json: bool = JsonOption,
) -> None:
    """Push an Ember image to another registry, showing progress."""
    from ember.cli.progress import show_push

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    credentials = {"username": username, "password": password or "", "registry_token": token}
    wanted = {key: value for key, value in credentials.items() if value}
    with client() as api:
        started = api.push(image, target, insecure=insecure, credentials=wanted)
        show = not as_json and errors.is_terminal
        pushed = show_push(api.watch_push(started["id"]), errors, show=show)
    if as_json:
        emit_json(pushed)
    if pushed["status"] == "failed":
        fail(f"push to {pushed['target']} failed: {pushed.get('error')}")
    if not as_json:
        console.print(f"{coloured('pushed')} {pushed['target']} {pushed['digest']}")


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
