"""Volumes, ingresses and snapshots: `ember volume|ingress|snapshot create|ls|inspect|rm`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from ember.cli.common import (
    EXIT_USAGE,
    CliError,
    JsonOption,
    ago,
    app,
    cell,
    client,
    coloured,
    complete_instances,
    console,
    each,
    emit_json,
    errors,
    fail,
    human_bytes,
    listed_briefly,
    parse_pairs,
    short_id,
    table,
)
from ember.errors import EmberError
from ember.units import parse_size

GIB = 1024**3
volume_app = typer.Typer(no_args_is_help=True, help="Persistent volumes.")
ingress_app = typer.Typer(no_args_is_help=True, help="HTTP(S) routes from host ports to instances.")
snapshot_app = typer.Typer(no_args_is_help=True, help="Instance snapshots.")
app.add_typer(volume_app, name="volume", rich_help_panel="Resources")
app.add_typer(ingress_app, name="ingress", rich_help_panel="Resources")
app.add_typer(snapshot_app, name="snapshot", rich_help_panel="Resources")


def show_one(value: dict[str, Any], as_json: bool, line: str) -> None:
    if as_json:
        emit_json(value)
    else:
        console.print(line)


# ---- volumes ---------------------------------------------------------------------------


def volume_line(volume: dict[str, Any]) -> str:
    status = volume.get("status", "")
    return f"{volume['name']} {short_id(volume['id'])} {volume['size_gb']} GiB {status}"


def volume_gib(value: str, option: str = "--size") -> int:
    """`--size` in whole GiB, as volumes are made: a bare number is GiB (`1`), a size
    with a unit (`100MB`, `2GB`, binary as everywhere in Ember) is rounded up, saying so."""
    if value.strip().isdigit():
        return int(value)
    try:
        count = parse_size(value, field=option)
    except EmberError as exc:
        raise CliError(exc.message, EXIT_USAGE) from exc
    gib = max(1, -(-count // GIB))
    if gib * GIB != count:
        errors.print(f"note: volumes are made in whole GiB: {value} is rounded up to {gib} GiB")
    return gib


@volume_app.command("create")
def volume_create(
    name: str = typer.Argument(..., help="Volume name."),
    size: str = typer.Option(
        "1", "--size", "-s", metavar="SIZE", help="Size: GiB, or with a unit (100MB, 2GB)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Create an empty volume."""
    with client() as api:
        volume = api.create_volume(name, volume_gib(size))
    show_one(volume, as_json, f"created {volume_line(volume)}")


def _read_chunks(stream: Any, step: Any) -> Iterator[bytes]:
    while chunk := stream.read(1024 * 1024):
        step(len(chunk))
        yield chunk


@volume_app.command("from-archive")
def volume_from_archive(
    name: str = typer.Argument(..., help="Volume name."),
    archive: str = typer.Argument(..., help="A .tar.gz file, or - for stdin."),
    size: str = typer.Option(
        "1", "--size", "-s", metavar="SIZE", help="Most the content may take: GiB, or 500MB."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Create a volume holding a tar.gz archive's content."""
    from ember.cli.progress import byte_bar

    with client() as api:
        if archive == "-":
            stream, total = sys.stdin.buffer, None
        else:
            path = Path(archive)
            stream, total = path.open("rb"), path.stat().st_size
        show = not as_json and errors.is_terminal
        with stream, byte_bar(errors, f"upload {archive}", total, show=show) as step:
            volume = api.volume_from_archive(name, volume_gib(size), _read_chunks(stream, step))
    show_one(volume, as_json, f"created {volume_line(volume)}")


@volume_app.command("ls")
def volume_ls(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only ids."),
    as_json: bool = JsonOption,
) -> None:
    """List volumes."""
    with client() as api:
        rows = api.volumes()
        names = {i["id"]: i["name"] for i in api.instances()} if not (as_json or quiet) else {}
    if listed_briefly(rows, as_json, quiet):
        return
    out = table(cell("ID"), cell("NAME", fold=True), cell("SIZE"), cell("STATUS"),
                cell("ATTACHED TO", fold=True), cell("CREATED"))  # fmt: skip
    for row in rows:
        attached = ", ".join(
            f"{names.get(a['instance_id'], short_id(a['instance_id']))}:{a['mount_path']}"
            f"{' (ro)' if a['readonly'] else ''}"
            for a in row.get("attachments") or []
        )
        out.add_row(short_id(row["id"]), escape(row["name"]), f"{row['size_gb']} GiB",
                    row.get("status", ""), escape(attached),
                    ago(row.get("created_at")))  # fmt: skip
    console.print(out)


@volume_app.command("inspect")
def volume_inspect(ref: str = typer.Argument(..., help="Volume name or id.")) -> None:
    """Show a volume as JSON."""
    with client() as api:
        emit_json(api.volume(ref))


@volume_app.command("rm")
def volume_rm(refs: list[str] = typer.Argument(..., help="Volume names or ids.")) -> None:
    """Delete volumes (refused while attached)."""
    with client() as api:
        delete_each(refs, api.delete_volume)


@volume_app.command("attach")
def volume_attach(
    volume: str = typer.Argument(..., help="Volume name or id."),
    instance: str = typer.Argument(
        ..., autocompletion=complete_instances, help="A stopped instance."
    ),
    mount_path: str = typer.Argument(..., help="Where it is mounted in the guest, e.g. /data."),
    readonly: bool = typer.Option(False, "--read-only", "--ro", help="Mount it read-only."),
    as_json: bool = JsonOption,
) -> None:
    """Attach a volume to a stopped instance (it mounts at the next start)."""
    with client() as api:
        result = api.attach_volume(instance, volume, mount_path, readonly=readonly)
    mode = " read-only" if readonly else ""
    show_one(result, as_json, f"attached {volume} to {result['name']} at {mount_path}{mode}")


@volume_app.command("detach")
def volume_detach(
    volume: str = typer.Argument(..., help="Volume name or id."),
    instance: str = typer.Argument(
        ..., autocompletion=complete_instances, help="A stopped instance."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Detach a volume from a stopped instance."""
    with client() as api:
        result = api.detach_volume(instance, volume)
    show_one(result, as_json, f"detached {volume} from {result['name']}")


# ---- ingresses -------------------------------------------------------------------------


def rule_text(rule: dict[str, Any]) -> str:
    scheme = "https" if rule.get("tls") else "http"
    match, target = rule["match"], rule["target"]
    where = f"{scheme}://{match['hostname']}:{match.get('port')}"
    return f"{where} -> {target['instance']}:{target['port']}"


@ingress_app.command("create")
def ingress_create(
    instance: str = typer.Argument(..., help="Target instance (name or id)."),
    port: int = typer.Option(..., "--port", "-p", help="Port the instance listens on."),
    hostname: str = typer.Option(
        ..., "--hostname", "-H", help="Host header to match; {instance}.example.com patterns work."
    ),
    host_port: int | None = typer.Option(
        None, "--host-port", help="Host port to listen on (default 80, or 443 with --tls)."
    ),
    tls: bool = typer.Option(False, "--tls", help="Terminate TLS."),
    redirect_http: bool = typer.Option(False, "--redirect-http", help="Redirect port 80 to HTTPS."),
    name: str | None = typer.Option(None, "--name", help="Ingress name (default from hostname)."),
    tag: list[str] = typer.Option([], "--tag", help="KEY=VALUE (repeatable)."),
    as_json: bool = JsonOption,
) -> None:
    """Route HTTP(S) for a hostname on a host port to an instance's port."""
    match: dict[str, Any] = {"hostname": hostname}
    if host_port is not None:
        match["port"] = host_port
    rule = {"match": match, "target": {"instance": instance, "port": port},
            "tls": tls, "redirect_http": redirect_http}  # fmt: skip
    default = "".join(c if c.isalnum() else "-" for c in hostname.lower()).strip("-")[:63]
    with client() as api:
        ingress = api.create_ingress(name or default, [rule], parse_pairs(tag, "tag") or None)
    rules = "; ".join(rule_text(r) for r in ingress["rules"])
    show_one(ingress, as_json, f"created {ingress['name']} {short_id(ingress['id'])}: {rules}")


@ingress_app.command("ls")
def ingress_ls(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only ids."),
    as_json: bool = JsonOption,
) -> None:
    """List ingresses."""
    with client() as api:
        rows = api.ingresses()
    if listed_briefly(rows, as_json, quiet):
        return
    out = table(cell("ID"), cell("NAME", fold=True), cell("RULES", fold=True), cell("CREATED"))
    for row in rows:
        rules = "\n".join(rule_text(rule) for rule in row["rules"])
        out.add_row(short_id(row["id"]), escape(row["name"]), escape(rules),
                    ago(row.get("created_at")))  # fmt: skip
    console.print(out)


@ingress_app.command("inspect")
def ingress_inspect(ref: str = typer.Argument(..., help="Ingress name, id or id prefix.")) -> None:
    """Show an ingress as JSON."""
    with client() as api:
        emit_json(api.ingress(ref))


@ingress_app.command("rm")
def ingress_rm(refs: list[str] = typer.Argument(..., help="Ingress names or ids.")) -> None:
    """Delete ingresses."""
    with client() as api:
        delete_each(refs, api.delete_ingress)


# ---- snapshots -------------------------------------------------------------------------

KINDS = ("Standby", "Stopped")


def snapshot_line(snap: dict[str, Any]) -> str:
    label = snap.get("name") or short_id(snap["id"])
    return (f"{label} ({short_id(snap['id'])}) of {snap.get('source_instance_name')} "
            f"{snap.get('kind')} {human_bytes(snap.get('size_bytes'))}")  # fmt: skip


@snapshot_app.command("create")
def snapshot_create(
    instance: str = typer.Argument(
        ..., autocompletion=complete_instances, help="Instance to snapshot."
    ),
    name: str | None = typer.Option(None, "--name", help="Snapshot name."),
    kind: str = typer.Option("Standby", "--kind", help="Standby (memory too) or Stopped."),
    as_json: bool = JsonOption,
) -> None:
    """Snapshot an instance."""
    if kind not in KINDS:
        fail(f"--kind {kind!r}: use Standby or Stopped", EXIT_USAGE)
    with client() as api:
        snap = api.create_snapshot(instance, kind, name)
    show_one(snap, as_json, f"created {snapshot_line(snap)}")


@snapshot_app.command("ls")
def snapshot_ls(
    instance: str | None = typer.Option(None, "--instance", help="Only this instance's."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only ids."),
    as_json: bool = JsonOption,
) -> None:
    """List snapshots."""
    with client() as api:
        source = api.instance(instance)["id"] if instance else ""
        rows = api.snapshots(source_instance_id=source)
    if listed_briefly(rows, as_json, quiet):
        return
    out = table(cell("ID"), cell("NAME", fold=True), cell("INSTANCE", fold=True), cell("KIND"),
                cell("SIZE"), cell("CREATED"))  # fmt: skip
    for row in rows:
        out.add_row(short_id(row["id"]), escape(row.get("name") or ""),
                    escape(row.get("source_instance_name", "")),
                    coloured(str(row.get("kind"))), human_bytes(row.get("size_bytes")),
                    ago(row.get("created_at")))  # fmt: skip
    console.print(out)


@snapshot_app.command("inspect")
def snapshot_inspect(
    ref: str = typer.Argument(..., help="Snapshot name, id or id prefix."),
) -> None:
    """Show a snapshot as JSON."""
    with client() as api:
        emit_json(api.snapshot(ref))


@snapshot_app.command("rm")
def snapshot_rm(
    refs: list[str] = typer.Argument(..., help="Snapshot names, ids or id prefixes."),
) -> None:
    """Delete snapshots."""
    with client() as api:
        delete_each(refs, api.delete_snapshot)


@snapshot_app.command("restore")
def snapshot_restore(
    instance: str = typer.Argument(
        ..., autocompletion=complete_instances, help="Instance to restore."
    ),
    snapshot: str = typer.Argument(..., help="Snapshot name, id or id prefix."),
    target_state: str | None = typer.Option(
        None, "--target-state", help="Stopped, Standby or Running."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Restore an instance from one of its snapshots."""
    with client() as api:
        result = api.restore_snapshot(instance, snapshot, target_state)
    show_one(result, as_json, f"{coloured(result['state'])} {result['name']}")


@snapshot_app.command("fork")
def snapshot_fork(
    snapshot: str = typer.Argument(..., help="Snapshot name, id or id prefix."),
    name: str = typer.Argument(..., help="Name of the new instance."),
    target_state: str | None = typer.Option(
        None, "--target-state", help="Stopped, Standby or Running."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Create a new instance from a snapshot."""
    with client() as api:
        result = api.fork_snapshot(snapshot, name, target_state)
    show_one(result, as_json, f"{coloured(result['state'])} {result['name']} {result['id']}")


def delete_each(refs: list[str], delete: Callable[[str], object]) -> None:
    def deleted(ref: str) -> str:
        delete(ref)
        return f"deleted {ref}"

    each(refs, deleted)


# Hypeman's names for the same subcommands (`volume list`, `ingress get`, ...), so its
# users feel at home; hidden to keep the help short.
ALIASES: tuple[tuple[typer.Typer, dict[str, Callable[..., None]]], ...] = (
    (volume_app, {"list": volume_ls, "get": volume_inspect, "delete": volume_rm}),
    (ingress_app, {"list": ingress_ls, "get": ingress_inspect, "delete": ingress_rm}),
    (snapshot_app, {"list": snapshot_ls, "get": snapshot_inspect, "delete": snapshot_rm}),
)
for group, commands in ALIASES:
    for alias, function in commands.items():
        group.command(alias, hidden=True)(function)
