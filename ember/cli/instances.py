"""Instances: run, ps, inspect, logs, stop, start, standby, restore, fork, rm, wait, stats."""

from __future__ import annotations

import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from ember.cli.common import (
    EXIT_EMBER,
    EXIT_USAGE,
    CliError,
    JsonOption,
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
    registry_host,
    rich_table,
    table,
    workload_command,
)
from ember.cli.groups import group_body
from ember.cli.images import pull_image
from ember.cli.listing import STOPPED, instances_listing, state_name, visible
from ember.client import ApiError, EmberClient
from ember.errors import EmberError
from ember.units import parse_size

PANEL = "Instances"
# run -p: the ingress is tagged with its instance so `rm` removes it too.
RUN_TAG = "ember.run/instance"
PUBLISH_RE = re.compile(r"^(?:(?P<host>[a-z0-9.-]+):)?(?P<hport>\d{1,5}):(?P<gport>\d{1,5})$")
ANY_HOST = "*"  # an ingress rule's hostname matching every Host header
# run -it: what keeps the VM up while the command runs as an exec (a VM powers off when
# its program exits, and a program's stdin is not a terminal here).
KEEP_ALIVE = ["/bin/sh", "-c", "while :; do sleep 3600; done"]


# ---- run -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Publish:
    hostname: str
    host_port: int
    guest_port: int


def parse_publish(value: str) -> Publish:
    """`[HOSTNAME:]HOST_PORT:GUEST_PORT`. Without a hostname the route answers to any Host
    header (`*`), as `docker run -p` answers whatever name reached the machine."""
    match = PUBLISH_RE.fullmatch(value.strip().lower())
    if not match:
        raise CliError(f"-p {value!r}: expected [HOSTNAME:]HOST_PORT:GUEST_PORT", EXIT_USAGE)
    ports = int(match["hport"]), int(match["gport"])
    if not all(1 <= port <= 65535 for port in ports):
        raise CliError(f"-p {value!r}: ports are 1 to 65535", EXIT_USAGE)
    return Publish(match["host"] or ANY_HOST, *ports)


def parse_volume(value: str) -> dict[str, Any]:
    """`VOLUME:/guest/path[:ro]`."""
    parts = value.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1].startswith("/"):
        raise CliError(f"-v {value!r}: expected VOLUME:/guest/path[:ro]", EXIT_USAGE)
    if len(parts) == 3 and parts[2] not in ("ro", "rw"):
        raise CliError(f"-v {value!r}: the mode is ro or rw, not {parts[2]!r}", EXIT_USAGE)
    mount: dict[str, Any] = {"volume_id": parts[0], "mount_path": parts[1]}
    if len(parts) == 3 and parts[2] == "ro":
        mount["readonly"] = True
    return mount


def check_size(option: str, value: str | None) -> None:
    """A size the server would refuse, refused here naming the option typed (the API's
    message names its field, `size`)."""
    if value is None:
        return
    try:
        parse_size(value, field=option)
    except EmberError as exc:
        fail(exc.message, EXIT_USAGE)


def default_name(image: str) -> str:
    """`hello-3fa2` for `host:5000/demo/hello:latest`, as names must be given."""
    base = image.rsplit("/", 1)[-1].split("@")[0].split(":")[0]
    base = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-")[:40] or "instance"
    return f"{base}-{secrets.token_hex(2)}"


def ensure_image(api: EmberClient, image: str, policy: str, *, quiet: bool) -> None:
    if policy == "never":
        return
    if policy == "missing":
        try:
            if api.image(image)["status"] == "ready":
                return
        except ApiError as exc:
            if exc.status != 404:
                raise
    pulled = pull_image(api, image, None, quiet=quiet)
    if pulled["status"] == "failed":
        raise CliError(f"pull of {image} failed: {pulled.get('error')}", EXIT_EMBER)


def publish(api: EmberClient, instance: dict[str, Any], item: Publish) -> dict[str, Any]:
    rules = [
        {"match": {"hostname": item.hostname, "port": item.host_port},
         "target": {"instance": instance["name"], "port": item.guest_port}}
    ]  # fmt: skip
    name = f"{instance['name']}-{item.host_port}"[:63].strip("-")
    return api.create_ingress(name, rules, tags={RUN_TAG: instance["id"]})


class LogFollower:
    """Prints an instance's app log from its first line while it runs, in a thread (a
    followed stream never ends by itself); `finish` prints what is left once stopped."""

    def __init__(self, api: EmberClient, ref: str) -> None:
        # Its own HTTP client: this one is left blocked in a read when the command ends.
        self.api = EmberClient(api.base_url, api.token, timeout=60)
        self.ref = ref
        self.printed = 0
        self.lock = threading.Lock()
        self.done = False
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        try:
            for line in self.api.logs(self.ref, tail=100_000, follow=True):
                with self.lock:
                    if self.done:
                        return
                    self.printed += 1
                    print(line, flush=True)
        except ApiError:
            return  # `finish` reads the log again

    def finish(self, api: EmberClient) -> None:
        with self.lock:
            self.done = True
            lines = list(api.logs(self.ref, tail=100_000, follow=False))
            for line in lines[self.printed :]:
                print(line, flush=True)


def image_command(api: EmberClient, image: str, entrypoint: list[str] | None) -> list[str]:
    """What the image runs (its entrypoint, or --entrypoint, then its cmd)."""
    config = api.image(image)
    command = [*(entrypoint or config.get("entrypoint") or []), *(config.get("cmd") or [])]
    if not command:
        raise CliError(f"{image} has no entrypoint or cmd: give a command", EXIT_USAGE)
    return command


def run_attached(
    api: EmberClient, created: dict[str, Any], command: list[str], env: dict[str, str], *,
    interactive: bool, terminal: bool, remove: bool,
) -> int:  # fmt: skip
    """`run -it`: once the VM runs, `command` as an exec with this terminal; then the
    instance stops (or goes, with --rm) as a container does when its process ends."""
    from ember.cli.guest import run_exec

    state = wait_running(api, created["id"], created["name"])
    if state.get("state_error"):
        raise CliError(f"{created['name']}: {state['state_error']}", EXIT_EMBER)
    try:
        return run_exec(api, created["id"], command, interactive=interactive,
                        terminal=terminal, env=env)  # fmt: skip
    finally:
        if remove:
            remove_instance(api, created["id"], force=True)
        else:
            api.instance_action(created["id"], "stop")


def wait_running(api: EmberClient, ref: str, label: str) -> dict[str, Any]:
    """Wait (a spinner on stderr) until the instance runs; the wait's answer."""
    with errors.status(f"starting {label}"):
        return api.wait(ref, "Running", "120s")


def follow_to_exit(api: EmberClient, ref: str) -> int:
    """Show the app log until the instance stops; its exit code."""
    follower = LogFollower(api, ref)
    try:
        while True:
            answer = api.wait(ref, "Stopped", "300s")
            # Done, or stuck where it will not stop by itself (a failed boot).
            if not answer.get("timed_out") or answer.get("state") == "Unknown":
                break
    except KeyboardInterrupt:
        errors.print(f"detached: {ref} keeps running (`ember stop {ref}` stops it)")
        raise typer.Exit(130) from None
    follower.finish(api)
    final = api.instance(ref)
    if final.get("exit_code") is None:
        why = final.get("exit_message") or final.get("state_error") or "no exit code reported"
        errors.print(f"[red]error:[/red] {ref} stopped without an exit code: {why}")
        return EXIT_EMBER
    message = final.get("exit_message") or ""
    if final["exit_code"] != 0 and message and not message.startswith("exited with code"):
        errors.print(f"[dim]{final['name']}: {escape(message)}[/dim]")  # e.g. command not found
    return int(final["exit_code"])


@app.command(
    rich_help_panel=PANEL,
    context_settings={"allow_interspersed_args": False},  # after IMAGE: the command
)
def run(
    image: str | None = typer.Argument(
        None, help="Image to run (pulled if missing); none with --template."
    ),
    command: list[str] | None = typer.Argument(
        None, help="Command and arguments (replace the image's CMD); a leading `--` is optional."
    ),
    name: str | None = typer.Option(None, "--name", "-n", help="Instance name."),
    env: list[str] = typer.Option([], "--env", "-e", help="KEY=VALUE (repeatable)."),
    cpus: int | None = typer.Option(None, "--cpus", help="Virtual CPUs."),
    memory: str | None = typer.Option(
        None, "--memory", "-m", metavar="SIZE", help="Memory, e.g. 512MB, 1GB."
    ),
    entrypoint: list[str] | None = typer.Option(
        None, "--entrypoint", help="Replace the image's entrypoint (repeat for arguments)."
    ),
    volume: list[str] = typer.Option(
        [], "--volume", "-v", help="VOLUME:/guest/path[:ro] (repeatable)."
    ),
    publish_: list[str] = typer.Option(
        [],
        "--publish",
        "-p",
        metavar="PORTS",
        help="HOST_PORT:GUEST_PORT: an HTTP ingress from a host port to the instance "
        "(repeatable); a HOSTNAME: in front matches that name only.",
    ),
    detach: bool = typer.Option(
        False, "--detach", "-d", help="Return once it runs; do not follow its logs."
    ),
    remove: bool = typer.Option(False, "--rm", help="Delete the instance when it exits."),
    interactive: bool = typer.Option(False, "--interactive", "-i", help="Send stdin (see -it)."),
    terminal: bool = typer.Option(
        False, "--tty", "-t", help="-it: the command in a terminal here, as `exec -it`."
    ),
    pull_policy: str = typer.Option(
        "missing", "--pull", help="Pull the image: missing, always or never."
    ),
    overlay_size: str | None = typer.Option(
        None, "--overlay-size", metavar="SIZE", help="Writable disk size, e.g. 10GB."
    ),
    network: bool = typer.Option(True, "--network/--no-network", help="Attach to the network."),
    group: str | None = typer.Option(
        None,
        "--group",
        "-g",
        help="Serve in this service group (made from -p, as HOSTNAME:PORT:GUEST_PORT, or "
        "PORT:GUEST_PORT/tcp for plain TCP, when it does not exist); -p then publishes "
        "through the group, not an ingress.",
    ),
    scale_to_zero: int | None = typer.Option(
        None,
        "--scale-to-zero",
        metavar="COOLDOWN_MS",
        help="With --group: standby after this many idle milliseconds, woken by a request.",
    ),
    template: str | None = typer.Option(
        None,
        "--template",
        metavar="NAME",
        help="Clone this template (Running from its saved state) instead of booting an image.",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Create and start an instance; follow its output and exit with its exit code.

    [dim]ember run IMAGE /bin/sh -c 'echo hi; exit 7'[/dim] exits 7; with -d it returns
    once the instance runs. --json implies -d and prints the instance. With -it the
    command (or the image's) runs in a terminal here while `sleep` keeps the VM up (the
    image needs /bin/sh and sleep); the instance stops when it ends. With --template
    NAME it is a clone of that template (only --name, -d, --rm and --json then).
    """
    if template is not None:
        if image is not None or command or interactive or terminal or publish_ or group:
            fail("--template: no IMAGE, COMMAND, -it, -p or -g (a clone runs as its template "
                 "was saved)", EXIT_USAGE)  # fmt: skip
        raise typer.Exit(run_clone(template, name, detach=detach or as_json, remove=remove,
                                   as_json=as_json))  # fmt: skip
    if image is None:
        fail("give an IMAGE (or --template NAME)", EXIT_USAGE)
    if pull_policy not in ("missing", "always", "never"):
        fail(f"--pull {pull_policy!r}: use missing, always or never", EXIT_USAGE)
    for option, size in (("-m/--memory", memory), ("--overlay-size", overlay_size)):
        check_size(option, size)
    detach = detach or as_json
    attach_terminal = interactive or terminal
    if attach_terminal and detach:
        fail("-i/-t and -d/--json: run -d, then `ember exec -it NAME CMD`", EXIT_USAGE)
    with client(EXIT_EMBER) as api:
        body: dict[str, Any] = {"name": name or default_name(image), "image": image}
        if group is not None:
            body |= join_group(api, group, publish_, scale_to_zero)
            publish_ = []
        elif scale_to_zero is not None:
            fail("--scale-to-zero needs --group (a request to the group wakes it)", EXIT_USAGE)
        published = [parse_publish(item) for item in publish_]
        optional = {
            "env": parse_pairs(env, "env") or None, "vcpus": cpus, "size": memory,
            "entrypoint": KEEP_ALIVE if attach_terminal else entrypoint or None,
            "cmd": None if attach_terminal else workload_command(command) or None,
            "volumes": [parse_volume(v) for v in volume] or None,
            "overlay_size": overlay_size, "network": None if network else {"enabled": False},
        }  # fmt: skip
        body |= {key: value for key, value in optional.items() if value is not None}
        ensure_image(api, image, pull_policy, quiet=as_json)
        created = api.create_instance(**body)
        ref = created["id"]
        try:
            for item in published:
                publish(api, created, item)
        except ApiError:
            api.delete_instance(ref)  # a run that cannot publish does not stay half done
            raise
        if attach_terminal:
            workload = workload_command(command) or image_command(api, image, entrypoint)
            code = run_attached(
                api, created, workload, parse_pairs(env, "env"),
                interactive=interactive, terminal=terminal, remove=remove,
            )  # fmt: skip
            raise typer.Exit(code)
        if detach:
            state = wait_running(api, ref, created["name"])
            created = api.instance(ref)
            if as_json:
                emit_json(created)
            else:
                console.print(f"{coloured(created['state'])} {created['name']} {created['id']}")
            if state.get("state_error"):
                fail(f"{created['name']}: {state['state_error']}", EXIT_EMBER)
            return
        code = follow_to_exit(api, ref)
        if remove:
            remove_instance(api, ref, force=True)
    raise typer.Exit(code)


def run_clone(template: str, name: str | None, *, detach: bool, remove: bool, as_json: bool) -> int:
    """`run --template`: a clone of the template, followed like any run."""
    with client(EXIT_EMBER) as api:
        created = api.create_instance(name=name or default_name(template), template=template)
        if detach:
            if as_json:
                emit_json(created)
            else:
                console.print(f"{coloured(created['state'])} {created['name']} {created['id']}")
            return 0
        code = follow_to_exit(api, created["id"])
        if remove:
            remove_instance(api, created["id"], force=True)
    return code


def join_group(
    api: EmberClient, group: str, publish_: list[str], cooldown_ms: int | None
) -> dict[str, Any]:
    """The create request's group fields; makes the group from -p when it is missing."""
    try:
        api.group(group)
    except ApiError as exc:
        if exc.status != 404 or not publish_:
            raise
        api.create_group(**group_body(group, publish_, None, None))
    fields: dict[str, Any] = {"service_group": {"name": group}}
    if cooldown_ms is not None:
        fields["scale_to_zero"] = {"policy": "on", "stateful": True,
                                   "cooldown_time_ms": cooldown_ms}  # fmt: skip
    return fields


# ---- listing and inspecting ------------------------------------------------------------


@app.command(rich_help_panel=PANEL)
def ps(
    all_: bool = typer.Option(False, "--all", "-a", help="Also instances that are not running."),
    state: str | None = typer.Option(
        None, "--state", help="Only instances in this state (running, stopped, standby...)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only ids."),
    as_json: bool = JsonOption,
) -> None:
    """List instances that are not stopped (all with -a)."""
    with client() as api:
        rows = visible(api.instances(state_name(state) if state else None), all_, state)
        own_registry = registry_host(api)
    if not listed_briefly(rows, as_json, quiet):
        console.print(rich_table(instances_listing(rows, own_registry)))


@app.command(rich_help_panel=PANEL)
def inspect(
    refs: list[str] = typer.Argument(
        ..., autocompletion=complete_instances, help="Instance names, ids or id prefixes."
    ),
) -> None:
    """Show instances as JSON (one object, or a list for several)."""
    with client() as api:
        found = [api.instance(ref) for ref in refs]
    emit_json(found[0] if len(found) == 1 else found)


@app.command(rich_help_panel=PANEL)
def logs(
    ref: str = typer.Argument(
        ..., autocompletion=complete_instances, help="Instance name, id or id prefix."
    ),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
    tail: int = typer.Option(100, "--tail", "-n", help="Lines from the end to start with."),
    source: str = typer.Option(
        "app", "--source", "-s", help="app (the workload), vmm (QEMU) or hypeman (Ember's)."
    ),
) -> None:
    """Print (and follow) an instance's logs."""
    with client() as api:
        try:
            for line in api.logs(ref, source=source, tail=tail, follow=follow):
                typer.echo(line)
        except KeyboardInterrupt:
            return


# ---- lifecycle -------------------------------------------------------------------------


def report(result: dict[str, Any], as_json: bool, elapsed: float | None = None) -> None:
    if as_json:
        emit_json(result)
        return
    took = f" [dim]in {elapsed:.2f}s[/dim]" if elapsed is not None else ""
    console.print(f"{coloured(result['state'])} {result['name']}{took}")


def timed_action(ref: str, action: str, as_json: bool, body: dict[str, Any] | None = None) -> None:
    with client() as api:
        started = time.monotonic()
        result = api.instance_action(ref, action, body)
        report(result, as_json, time.monotonic() - started)


@app.command(rich_help_panel=PANEL)
def stop(
    refs: list[str] = typer.Argument(..., autocompletion=complete_instances, help="Instances."),
    as_json: bool = JsonOption,
) -> None:
    """Stop instances (graceful, then forced)."""
    for ref in refs:
        timed_action(ref, "stop", as_json)


@app.command(rich_help_panel=PANEL)
def start(
    refs: list[str] = typer.Argument(..., autocompletion=complete_instances, help="Instances."),
    until_running: bool = typer.Option(
        False, "--wait", "-w", help="Return once each runs (as `run -d` does), not at boot."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Start stopped instances (they boot in the background; --wait for Running)."""
    for ref in refs:
        if not until_running:
            timed_action(ref, "start", as_json)
            continue
        with client() as api:
            started = time.monotonic()
            api.instance_action(ref, "start")
            state = wait_running(api, ref, ref)
            report(api.instance(ref), as_json, time.monotonic() - started)
        if state.get("state_error") or state.get("timed_out"):
            fail(f"{ref}: {state.get('state_error') or 'not Running after 120s'}")


@app.command(rich_help_panel=PANEL)
def standby(
    ref: str = typer.Argument(..., autocompletion=complete_instances, help="Instance."),
    as_json: bool = JsonOption,
) -> None:
    """Pause an instance and snapshot its memory (restore resumes it where it was)."""
    timed_action(ref, "standby", as_json)


@app.command(rich_help_panel=PANEL)
def restore(
    ref: str = typer.Argument(..., autocompletion=complete_instances, help="Instance."),
    as_json: bool = JsonOption,
) -> None:
    """Resume an instance from standby."""
    timed_action(ref, "restore", as_json)


@app.command(rich_help_panel=PANEL)
def fork(
    source: str = typer.Argument(..., autocompletion=complete_instances, help="Instance to fork."),
    name: str = typer.Argument(..., help="Name of the new instance."),
    from_running: bool = typer.Option(
        False, "--from-running", help="Fork a running instance (standby, fork, restore)."
    ),
    target_state: str | None = typer.Option(
        None, "--target-state", help="Stopped, Standby or Running (default: the source's)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Fork an instance into a new one."""
    body: dict[str, Any] = {"name": name}
    if from_running:
        body["from_running"] = True
    if target_state:
        body["target_state"] = target_state
    timed_action(source, "fork", as_json, body)


def remove_instance(api: EmberClient, ref: str, *, force: bool) -> str:
    """Delete an instance (and the ingresses `run -p` made for it); its name."""
    record = api.instance(ref)
    if record["state"] not in (*STOPPED, "Standby", "Created") and not force:
        raise CliError(f"{record['name']} is {record['state']}: stop it first or use rm -f")
    api.delete_instance(record["id"])
    for ingress in api.ingresses({RUN_TAG: record["id"]}):
        api.delete_ingress(ingress["id"])
    return str(record["name"])


@app.command(rich_help_panel=PANEL)
def rm(
    refs: list[str] = typer.Argument(..., autocompletion=complete_instances, help="Instances."),
    force: bool = typer.Option(False, "--force", "-f", help="Also running instances."),
) -> None:
    """Delete instances and everything they own."""
    with client() as api:
        each(refs, lambda ref: f"deleted {remove_instance(api, ref, force=force)}")


@app.command(rich_help_panel=PANEL)
def wait(
    ref: str = typer.Argument(..., autocompletion=complete_instances, help="Instance."),
    state: str = typer.Option("Stopped", "--state", help="State to wait for."),
    timeout: float = typer.Option(0, "--timeout", help="Seconds; 0 waits forever."),
    as_json: bool = JsonOption,
) -> None:
    """Wait for an instance to reach a state; prints its exit code when it stopped."""
    state = state_name(state)
    deadline = time.monotonic() + timeout if timeout else None
    with client() as api:
        while True:
            left = 300.0 if deadline is None else max(0.0, min(300.0, deadline - time.monotonic()))
            answer = api.wait(ref, state, f"{left:.0f}s" if left >= 1 else "1s")
            if not answer.get("timed_out") or (deadline and time.monotonic() >= deadline):
                break
        record = api.instance(ref)
    if as_json:
        emit_json(answer | {"exit_code": record.get("exit_code")})
    elif state in STOPPED and record.get("exit_code") is not None:
        typer.echo(record["exit_code"])
    else:
        typer.echo(answer["state"])
    if answer.get("timed_out"):
        fail(f"{ref}: still {answer['state']} after {timeout:g}s")


def stats_table(rows: list[dict[str, Any]]) -> Table:
    out = table(cell("NAME", fold=True), cell("CPU SECONDS"), cell("MEMORY (RSS)"), cell("MEM %"),
                cell("VCPUS"))  # fmt: skip
    for row in rows:
        ratio = row.get("memory_utilization_ratio")
        rss, allocated = row["memory_rss_bytes"], row["allocated_memory_bytes"]
        out.add_row(
            row["instance_name"], f"{row['cpu_seconds']:.2f}",
            f"{human_bytes(rss)} / {human_bytes(allocated)}",
            f"{ratio * 100:.1f}%" if ratio is not None else "", str(row["allocated_vcpus"]),
        )  # fmt: skip
    return out


@app.command(rich_help_panel=PANEL)
def stats(
    refs: list[str] = typer.Argument(None, help="Instances (default: every running one)."),
    watch: bool = typer.Option(False, "--watch", "-w", help="Refresh every second."),
    as_json: bool = JsonOption,
) -> None:
    """Resource use of instances (live with --watch)."""
    with client() as api:

        def sample() -> list[dict[str, Any]]:
            names = refs or [row["id"] for row in api.instances("Running")]
            return [api.stats(ref) for ref in names]

        if as_json:
            emit_json(sample())
            return
        if not watch:
            console.print(stats_table(sample()))
            return
        from rich.live import Live

        try:
            with Live(stats_table(sample()), console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(1)
                    live.update(stats_table(sample()), refresh=True)
        except KeyboardInterrupt:
            return
