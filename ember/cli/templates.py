"""`ember template create/ls/inspect/rm`: templates (an Ember extension of the API); clone
one with `ember run --template NAME`."""

from __future__ import annotations

from typing import Any

import typer

from ember.cli.common import (
    JsonOption,
    ago,
    app,
    client,
    console,
    emit_json,
    listed_briefly,
    parse_pairs,
    short_id,
    table,
)
from ember.cli.instances import check_size, ensure_image
from ember.cli.resources import delete_each, show_one

template_app = typer.Typer(
    no_args_is_help=True, help="Templates: VMs saved once ready, cloned by `run --template`."
)
app.add_typer(template_app, name="template", rich_help_panel="Resources")


@template_app.command("create")
def template_create(
    name: str = typer.Argument(..., help="Template name."),
    image: str = typer.Argument(..., help="Image to boot (pulled if missing)."),
    env: list[str] = typer.Option([], "--env", "-e", help="KEY=VALUE (repeatable)."),
    cpus: int | None = typer.Option(None, "--cpus", help="Virtual CPUs."),
    memory: str | None = typer.Option(None, "--memory", "-m", metavar="SIZE", help="e.g. 256MB."),
    ready: list[str] | None = typer.Option(
        None, "--ready", help="A command that exits 0 once it is ready (repeat for arguments)."
    ),
    ready_timeout: str = typer.Option("120s", "--ready-timeout", help="Go duration."),
    as_json: bool = JsonOption,
) -> None:
    """Boot IMAGE, wait until it is ready (its agent is up, and --ready passes), save it."""
    check_size("-m/--memory", memory)
    with client() as api:
        ensure_image(api, image, "missing", quiet=as_json)
        readiness = {"exec": ready or None, "timeout": ready_timeout}
        body: dict[str, Any] = {"name": name, "image": image, "readiness": readiness}
        optional = {"env": parse_pairs(env, "env") or None, "vcpus": cpus, "size": memory}
        body |= {key: value for key, value in optional.items() if value is not None}
        created = api.create_template(**body)
    show_one(created, as_json, f"template {created['name']} {short_id(created['id'])}")


@template_app.command("ls")
def template_ls(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only ids."),
    as_json: bool = JsonOption,
) -> None:
    """List templates."""
    with client() as api:
        rows = api.templates()
    if listed_briefly(rows, as_json, quiet):
        return
    out = table("ID", "NAME", "IMAGE", "MEMORY", "SHARED", "CLONES", "CREATED")
    for row in rows:
        out.add_row(
            short_id(row["id"]), row["name"], row["image"], f"{row['size_bytes'] >> 20} MiB",
            "yes" if row["shared_memory"] else "no", str(len(row["clones"])),
            ago(row.get("created_at")),
        )  # fmt: skip
    console.print(out)


@template_app.command("inspect")
def template_inspect(
    ref: str = typer.Argument(..., help="Template name, id or id prefix."),
) -> None:
    """Show a template as JSON, with what maps its memory now."""
    with client() as api:
        emit_json(api.template(ref))


@template_app.command("rm")
def template_rm(refs: list[str] = typer.Argument(..., help="Template names or ids.")) -> None:
    """Delete templates (refused while clones map their memory)."""
    with client() as api:
        delete_each(refs, api.delete_template)
