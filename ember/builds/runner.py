"""One build inside a builder VM: the steps from a queued build to an image in Ember.

The VM is a clone of the builder template of the build's memory and vCPUs
(`templates.py`: the builder image, Debian + buildah, booted once and saved), with the
builder's cache disk hot-attached at /var/lib/containers. Everything the build runs
(every RUN step) runs in that VM; the host only copies files in over the guest agent
and reads the output. The steps, each named for its effect:

    clone_builder -> attach_cache -> place_inputs -> run_buildah -> push_result
    -> (always) sync, detach the cache, delete the VM

Base images are pulled, and the result pushed, through the registry relay on the
network's gateway (`relay.py`) with a short-lived token in an auth file; registry
names the Dockerfile uses for Ember's own registry (`127.0.0.1:4973/...`, bare names)
are rewritten to the relay by a registries.conf written per build.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import tarfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from ember.builds.models import BuilderRecord, BuildRecord
from ember.builds.templates import BuilderTemplates
from ember.errors import EmberError
from ember.guest.client import AgentClient
from ember.instances import InstanceManager
from ember.instances.request import UpdateInstanceRequest

__all__ = ["CACHE_MOUNT", "BuildFailed", "BuildResult", "BuildTools", "run_build"]

CACHE_MOUNT = "/var/lib/containers"
WORK = "/build"
AGENT_WAIT_SECONDS = 300.0  # a TCG boot on a busy host
FLUSH_SECONDS = 60.0
LOCAL_TAG = "localhost/ember-build:latest"
BASE_DIGEST = '{{index .ImageAnnotations "org.opencontainers.image.base.digest"}}'


class BuildFailed(EmberError):
    """The build itself failed (a step's exit, a push refused): the build ends `failed`."""


@dataclass(frozen=True)
class BuildResult:
    image_digest: str  # the manifest digest buildah pushed
    base_image_digest: str | None
    builder_version: str | None


@dataclass(frozen=True)
class BuildTools:
    """What a build run uses, given by the build manager."""

    instances: InstanceManager
    templates: BuilderTemplates  # the builder VM's template, made on first use
    relay: str  # host:port of the registry relay as the guest reaches it
    own_hosts: frozenset[str]  # names of Ember's registry a Dockerfile may use
    mint_token: Callable[[], str]
    log: Callable[[str], Awaitable[None]]  # one line into the build's events
    on_instance: Callable[[str], None]  # the builder VM's instance id, once it exists


@dataclass(frozen=True)
class Inputs:
    source: Path  # the tar.gz as uploaded
    dockerfile: str | None  # None: the archive's own Dockerfile
    secrets: dict[str, str]
    push_ref: str  # repository:tag in Ember's registry


async def run_build(
    tools: BuildTools, build: BuildRecord, builder: BuilderRecord, inputs: Inputs,
    *, pushing: Callable[[], Awaitable[None]],
) -> BuildResult:  # fmt: skip
    """Run one build; the builder VM is deleted however this ends (cancel included), its
    cache disk flushed and detached first. (A VM caught inside its clone, before its id
    is known, is found by its name when the build ends: `BuildManager._finish`.)"""
    instance_id: str | None = None
    agent: AgentClient | None = None
    attached = False
    try:
        instance_id, agent = await clone_builder(tools, build, builder)
        await attach_cache(tools, instance_id, builder)
        attached = True
        await place_inputs(tools, agent, inputs)
        await run_buildah(tools, agent, inputs)
        await pushing()
        return await push_result(tools, agent, inputs)
    finally:
        if agent is not None:
            await flush_cache(agent)
        if attached and instance_id is not None:
            await detach_cache(tools, instance_id, builder)
        if instance_id is not None:
            with contextlib.suppress(EmberError):  # swept by name when the build ends
                await tools.instances.delete(instance_id)


async def flush_cache(agent: AgentClient) -> None:
    """`sync` in the guest before its VM is killed: layers written to the cache disk but
    still in the guest's page cache would be lost, while buildah's records of them stay
    (measured: the next build on the builder failed with `exec format error` on an empty
    /bin/sh). Best effort: a guest that does not answer is killed anyway."""
    with contextlib.suppress(Exception):
        session = await agent.exec(["sync"], env=ENV, timeout=10)
        await asyncio.wait_for(session.wait(), FLUSH_SECONDS)


async def detach_cache(tools: BuildTools, instance_id: str, builder: BuilderRecord) -> None:
    """Unmount the cache disk in the guest (its journal closed clean) and empty its slot,
    before the VM is deleted. Best effort: a guest that does not answer, or still uses the
    disk (a process a RUN step left), is deleted with it attached, after the `sync`."""
    with contextlib.suppress(EmberError, TimeoutError):
        await asyncio.wait_for(
            tools.instances.detach_volume(instance_id, builder.volume_id), FLUSH_SECONDS
        )


async def clone_builder(
    tools: BuildTools, build: BuildRecord, builder: BuilderRecord
) -> tuple[str, AgentClient]:
    """A clone of the builder template of the build's memory and vCPUs (the template is
    made first, once, if this is the first build that asks for them)."""
    options = build.options
    name = f"build-{build.id}"
    await tools.log(f"builder VM {name}: a clone of the builder template "
                    f"({options.cpus} vCPU, {options.memory_mb} MB)")  # fmt: skip
    record = await tools.templates.clone(name, options.memory_mb, options.cpus)
    tools.on_instance(record.id)
    tags = {**record.tags, "ember.build": build.id, "ember.builder": builder.id}
    await tools.instances.update(record.id, UpdateInstanceRequest(tags=tags))
    _, agent = await tools.instances.wait_for_agent(record.id, AGENT_WAIT_SECONDS)
    return record.id, agent


async def attach_cache(tools: BuildTools, instance_id: str, builder: BuilderRecord) -> None:
    """The builder's cache disk, hot-attached read-write at /var/lib/containers."""
    await tools.instances.attach_volume(instance_id, builder.volume_id, CACHE_MOUNT)


def registries_conf(relay: str, own_hosts: frozenset[str]) -> str:
    """Ember's registry names rewritten to the relay (plain HTTP); bare names searched
    there first, as `ember run` does."""
    lines = [f'unqualified-search-registries = ["{relay}"]', "",
             f'[[registry]]\nlocation = "{relay}"\ninsecure = true', ""]  # fmt: skip
    for host in sorted(own_hosts):
        lines += [f'[[registry]]\nprefix = "{host}"\nlocation = "{relay}"\ninsecure = true', ""]
    return "\n".join(lines)


def _tar_files(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


async def place_inputs(tools: BuildTools, agent: AgentClient, inputs: Inputs) -> None:
    """The source unpacked in /build/src; Dockerfile, registry config, auth and secrets
    beside it (never in the build context, so never in a layer)."""
    await _run(tools, agent, ["mkdir", "-p", f"{WORK}/src", f"{CACHE_MOUNT}/tmp"], "mkdir")
    await _run(tools, agent, ["tar", "-xzf", "-", "-C", f"{WORK}/src", "--no-same-owner"],
               "unpacking the source", stdin=inputs.source.read_bytes())  # fmt: skip
    token = tools.mint_token()
    auth = base64.b64encode(f"ember:{token}".encode()).decode()
    files = {
        "registries.conf": registries_conf(tools.relay, tools.own_hosts).encode(),
        "auth.json": json.dumps({"auths": {tools.relay: {"auth": auth}}}).encode(),
        **{f"secrets/{k}": v.encode() for k, v in inputs.secrets.items()},
    }
    if inputs.dockerfile is not None:
        files["Dockerfile"] = inputs.dockerfile.encode()
    await _run(tools, agent, ["tar", "-xf", "-", "-C", WORK], "placing the build files",
               stdin=_tar_files(files), quiet=True)  # fmt: skip


ENV = {
    "CONTAINERS_REGISTRIES_CONF": f"{WORK}/registries.conf",
    "REGISTRY_AUTH_FILE": f"{WORK}/auth.json",
    "BUILDAH_ISOLATION": "chroot",
    "TMPDIR": f"{CACHE_MOUNT}/tmp",
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
}


async def run_buildah(tools: BuildTools, agent: AgentClient, inputs: Inputs) -> None:
    dockerfile = f"{WORK}/Dockerfile" if inputs.dockerfile is not None else f"{WORK}/src/Dockerfile"
    secrets = [f"--secret=id={k},src={WORK}/secrets/{k}" for k in inputs.secrets]
    argv = ["buildah", "bud", "--layers", "--isolation=chroot", "--network=host",
            "-f", dockerfile, "-t", LOCAL_TAG, *secrets, f"{WORK}/src"]  # fmt: skip
    await _run(tools, agent, argv, "the build", scrub=inputs.secrets)


async def push_result(tools: BuildTools, agent: AgentClient, inputs: Inputs) -> BuildResult:
    target = f"docker://{tools.relay}/{inputs.push_ref}"
    # Uncompressed: gzip under TCG costs more than the bytes it saves on the guest network,
    # and Ember's registry and conversion take plain tar layers as they are.
    await _run(tools, agent, ["buildah", "push", "--disable-compression",
               f"--digestfile={WORK}/digest", LOCAL_TAG, target], "the push")  # fmt: skip
    digest = (await _output(agent, ["cat", f"{WORK}/digest"])).strip()
    base = (await _output(agent, ["buildah", "inspect", "--type", "image", "--format",
                                  BASE_DIGEST, LOCAL_TAG])).strip()  # fmt: skip
    version = (await _output(agent, ["buildah", "--version"])).strip()
    return BuildResult(
        image_digest=digest,
        base_image_digest=base if base.startswith("sha256:") else None,
        builder_version=version or None,
    )


async def _output(agent: AgentClient, argv: list[str]) -> str:
    session = await agent.exec(argv, env=ENV, timeout=30)
    result, out, _ = await session.wait()
    return out.decode(errors="replace") if result.exit_code == 0 else ""


async def _run(
    tools: BuildTools, agent: AgentClient, argv: list[str], what: str, *,
    stdin: bytes | None = None, quiet: bool = False, scrub: dict[str, str] | None = None,
) -> None:  # fmt: skip
    """Run a step in the guest; its output goes to the events line by line (secret values
    blotted out), and a non-zero exit fails the build naming the step."""
    session = await agent.exec(argv, env=ENV, cwd="/", timeout=60)
    if stdin is not None:
        await session.write(stdin)
    await session.close_stdin()
    pending = b""
    while (chunk := await session.read_merged()) is not None:
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines if not quiet else []:
            await tools.log(_blot(line.decode(errors="replace"), scrub))
    if pending and not quiet:
        await tools.log(_blot(pending.decode(errors="replace"), scrub))
    result = session.result
    assert result is not None
    if result.exit_code != 0 or result.signal:
        why = f"signal {result.signal}" if result.signal else f"exit code {result.exit_code}"
        raise BuildFailed(f"{what} failed ({why})", code="build_failed")


def _blot(line: str, secrets: dict[str, str] | None) -> str:
    for value in (secrets or {}).values():
        if value:
            line = line.replace(value, "****")
    return line.rstrip("\r")
