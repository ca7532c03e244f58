"""`ember group create/ls/inspect/rm`: service groups (an Ember extension of the API)."""

from __future__ import annotations

from typing import Any

import typer

from ember.cli.common import (
    EXIT_USAGE,
    JsonOption,
    ago,
    app,
    client,
    console,
    emit_json,
    fail,
    listed_briefly,
    short_id,
    table,
)
from ember.cli.resources import delete_each, show_one

group_app = typer.Typer(
    no_args_is_help=True, help="Service groups: instances balanced behind published ports."
)
app.add_typer(group_app, name="group", rich_help_panel="Resources")


PUBLISH_SHAPE = "[HOSTNAME:]PORT:DESTINATION_PORT[/tls], or PORT:DESTINATION_PORT/tcp|udp"
# A suffix -> what it adds to the service: plain TCP, TLS-terminated TCP, UDP.
L4_SUFFIXES: dict[str, dict[str, Any]] = {
    "tcp": {"handlers": []},
    "tls": {"handlers": ["tls"]},
    "udp": {"protocol": "udp", "handlers": []},
}


def parse_service(value: str) -> tuple[dict[str, Any], str | None]:
    """`[HOSTNAME:]PORT:DESTINATION_PORT` (HTTP), `.../tls` (TLS-terminated TCP: TLS
    ends at the host, with the certificate of HOSTNAME), `PORT:DESTINATION_PORT/tcp`
    (plain TCP) or `.../udp` (no hostname for either) -> (service, domain)."""
    text, _, suffix = value.strip().lower().partition("/")
    parts = text.split(":")
    shape_ok = len(parts) in (2, 3) and all(p.isdigit() for p in parts[-2:])
    shape_ok &= suffix in ("", *L4_SUFFIXES) and not (suffix in ("tcp", "udp") and len(parts) == 3)
    if not shape_ok:
        fail(f"-p {value!r}: expected {PUBLISH_SHAPE}", EXIT_USAGE)
    service: dict[str, Any] = {"port": int(parts[-2]), "destination_port": int(parts[-1])}
    service |= L4_SUFFIXES.get(suffix, {})
    return service, parts[0] if len(parts) == 3 else None


def group_body(name: str, publish: list[str], soft: int | None, hard: int | None) -> dict[str, Any]:
    parsed = [parse_service(p) for p in publish]
    if not parsed:
        fail(f"give at least one -p {PUBLISH_SHAPE}", EXIT_USAGE)
    domains = sorted({domain for _, domain in parsed if domain})
    body: dict[str, Any] = {
        "name": name,
        "services": [service for service, _ in parsed],
        "domains": [{"name": d} for d in domains],
    }
    body |= {k: v for k, v in (("soft_limit", soft), ("hard_limit", hard)) if v is not None}
    return body


@group_app.command("create")
def group_create(
    name: str = typer.Argument(..., help="Group name."),
    publish: list[str] = typer.Option([], "--publish", "-p", help=f"{PUBLISH_SHAPE} (repeatable)."),
    soft_limit: int | None = typer.Option(
        None, "--soft-limit", help="In-flight requests per instance before another wakes."
    ),
    hard_limit: int | None = typer.Option(
        None, "--hard-limit", help="Most concurrent requests per instance."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Create a service group (HTTP or TCP services balanced over its instances)."""
    with client() as api:
        created = api.create_group(**group_body(name, publish, soft_limit, hard_limit))
    show_one(created, as_json, f"created {created['name']} {short_id(created['id'])}")


@group_app.command("ls")
def group_ls(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only ids."),
    as_json: bool = JsonOption,
) -> None:
    """List service groups."""
    with client() as api:
        rows = api.groups()
    if listed_briefly(rows, as_json, quiet):
        return
    out = table("ID", "NAME", "SERVICES", "DOMAINS", "LIMITS", "INSTANCES", "CREATED")
    for row in rows:
        services = ", ".join(f"{s['port']}->{s['destination_port']}" for s in row["services"])
        running = sum(i["state"] == "Running" for i in row["instances"])
        out.add_row(
            short_id(row["id"]), row["name"], services, ", ".join(row["domains"]) or "*",
            f"{row['soft_limit']}/{row['hard_limit']}",
            f"{running}/{len(row['instances'])} running", ago(row.get("created_at")),
        )  # fmt: skip
    console.print(out)


@group_app.command("inspect")
def group_inspect(ref: str = typer.Argument(..., help="Group name, id or id prefix.")) -> None:
    """Show a service group as JSON, with its instances and their stop reasons, and its
    autoscale configuration with the newest decisions (each with its reason)."""
    with client() as api:
        shown = api.group(ref)
        config = api.autoscale(ref)
        if config is not None:
            shown["autoscale"] = config | {"decisions": api.autoscale_decisions(ref, 20)}
    emit_json(shown)


@group_app.command("rm")
def group_rm(refs: list[str] = typer.Argument(..., help="Group names or ids.")) -> None:
    """Delete empty service groups."""
    with client() as api:
        delete_each(refs, api.delete_group)
