"""`ember gateway` (runs the cluster's endpoint) and `ember cluster status` (a client of
a gateway's `GET /cluster/hosts`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from ember.cli.common import JsonOption, app, client, console, emit_json, human_bytes

cluster_app = typer.Typer(no_args_is_help=True, help="Many hosts behind one gateway.")
app.add_typer(cluster_app, name="cluster", rich_help_panel="Cluster")


@app.command(rich_help_panel="Cluster")
def gateway(
    etcd: list[str] = typer.Option(
        ...,
        "--etcd",
        envvar="EMBER_GATEWAY_ETCD",
        help="etcd client URL (repeat for each member)",
    ),
    listen: str = typer.Option("127.0.0.1:4973", envvar="EMBER_GATEWAY_LISTEN"),
    secret_file: Path = typer.Option(
        Path("/var/lib/ember/jwt.secret"),
        envvar="EMBER_CLUSTER_SECRET_FILE",
        help="the JWT secret every host of the cluster shares",
    ),
    lease_ttl: int = typer.Option(5, envvar="EMBER_CLUSTER_LEASE_TTL_SECONDS"),
    etcd_ca: Path | None = typer.Option(
        None, envvar="EMBER_CLUSTER_ETCD_CA", help="CA of the etcd members (https endpoints)"
    ),
    etcd_cert: Path | None = typer.Option(
        None, envvar="EMBER_CLUSTER_ETCD_CERT", help="client certificate for etcd"
    ),
    etcd_key: Path | None = typer.Option(
        None, envvar="EMBER_CLUSTER_ETCD_KEY", help="key of the client certificate"
    ),
) -> None:
    """Run a Hypeman-compatible endpoint in front of the cluster's hosts (stateless)."""
    import uvicorn

    from ember.cluster.etcd import Etcd, tls_context
    from ember.cluster.gateway import Gateway, create_gateway_app

    # One value may hold several endpoints (the environment variable's form).
    endpoints = [e for value in etcd for e in value.replace(",", " ").split()]
    host, _, port = listen.rpartition(":")
    tls = tls_context(etcd_ca, etcd_cert, etcd_key)
    service = Gateway(
        Etcd(endpoints, tls=tls), secret_file.read_bytes().strip(), lease_ttl=lease_ttl
    )
    typer.echo(f"ember gateway: listening on http://{listen} (etcd {', '.join(endpoints)})")
    uvicorn.run(create_gateway_app(service), host=host, port=int(port), log_config=None,
                ws_per_message_deflate=False)  # fmt: skip


@cluster_app.command("status")
def status(as_json: bool = JsonOption) -> None:
    """The hosts behind the gateway (EMBER_BASE_URL): liveness, capacity, instances."""
    with client() as api:
        hosts: list[dict[str, Any]] = api.request("GET", "/cluster/hosts").json()["hosts"]
    if as_json:
        emit_json(hosts)
        return
    table = Table("HOST", "LIVE", "ADDRESS", "CPU FREE", "MEMORY FREE", "INSTANCES", box=None,
                  header_style="bold")  # fmt: skip
    for host in hosts:
        cpu, memory = host["cpu"], host["memory"]
        table.add_row(
            host["name"],
            "[green]up[/green]" if host["live"] else "[red]down[/red]",
            host["address"] or "",
            f"{cpu['available']}/{cpu['effective_limit']}" if cpu else "-",
            f"{human_bytes(memory['available'])}/{human_bytes(memory['effective_limit'])}"
            if memory else "-",
            ", ".join(f"{i['name']} ({i['state']})" for i in host["instances"]) or "-",
        )  # fmt: skip
    console.print(table)
