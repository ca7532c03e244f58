"""One build inside a builder VM: the steps from a queued build to an image in Ember.

The VM is a clone of the builder template of the build's memory and vCPUs
(`templates.py`: the builder image, Debian + buildah, booted once and saved), with the
builder's cache disk hot-attached at /var/lib/containers. Everything the build runs
(every RUN step) runs in that VM; the host only copies files in over the guest agent
and reads the output. The steps, each named for its effect:

    clone_builder -> attach_cache | place_inputs (at once) -> run_buildah -> push_result
    -> (always) detach the cache (else `sync`); the caller deletes the VM

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
import time
from collections.abc import AsyncIterator, Awaitable, Callable
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
SOURCE = "source.tar.gz"


class BuildFailed(EmberError):
    """The build itself failed (a step's exit, a push refused): the build ends `failed`."""


@dataclass(frozen=True)
class BuildResult:
    image_digest: str  # the manifest digest buildah pushed
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
    on_cache_released: Callable[[], None]  # the cache disk is in no VM now
    versions: dict[str, str]  # buildah's version per builder image digest, as it said


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
    """Run one build in a builder VM; however this ends (cancel included), the cache disk
    is detached first (`on_cache_released` says so), or else `sync`ed in the guest. The
    VM itself is deleted by the caller (`BuildManager._run`, by its name, which also
    finds one caught inside its clone): after the build's end, and after the builder
    is free for its next build when the disk was released."""
    instance_id: str | None = None
    agent: AgentClient | None = None
    try:
        async with timed(tools, "clone"):
            instance_id, agent, builder_image = await clone_builder(tools, build, builder)
        async with timed(tools, "attach + inputs"):  # at once: disk and files are apart
            results = await asyncio.gather(attach_cache(tools, instance_id, builder),
                                           place_inputs(tools, agent, inputs),
                                           return_exceptions=True)  # fmt: skip
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        async with timed(tools, "bud"):
            await run_buildah(tools, agent, inputs)
        await pushing()
        async with timed(tools, "push"):
            return await push_result(tools, agent, inputs, builder_image)
    finally:
        # Released only by a detach that worked: an attach cut short may have mounted it.
        released = instance_id is None
        if instance_id is not None:
            async with timed(tools, "detach"):
                released = await detach_cache(tools, instance_id, builder)
        if released:
            tools.on_cache_released()
        elif agent is not None:  # the VM will be deleted with the disk mounted
            await flush_cache(agent)


@contextlib.asynccontextmanager
async def timed(tools: BuildTools, what: str) -> AsyncIterator[None]:
    started = time.monotonic()
    yield
    await tools.log(f"[ember] {what}: {time.monotonic() - started:.2f} s")


async def flush_cache(agent: AgentClient) -> None:
    """`sync` in the guest before its VM is killed: layers written to the cache disk but
    still in the guest's page cache would be lost, while buildah's records of them stay
    (measured: the next build on the builder failed with `exec format error` on an empty
    /bin/sh). Best effort: a guest that does not answer is killed anyway."""
    with contextlib.suppress(Exception):
        session = await agent.exec(["sync"], env=ENV, timeout=10)
        await asyncio.wait_for(session.wait(), FLUSH_SECONDS)


async def detach_cache(tools: BuildTools, instance_id: str, builder: BuilderRecord) -> bool:
    """Unmount the cache disk in the guest (which writes back all it holds and closes its
    journal clean) and empty its slot, before the VM is deleted. False when the guest
    does not answer or still uses the disk (a process a RUN step left): the caller
    `sync`s and the VM is deleted with the disk attached."""
    try:
        await asyncio.wait_for(
            tools.instances.detach_volume(instance_id, builder.volume_id), FLUSH_SECONDS
        )
    except (EmberError, TimeoutError):
        return False
    return True


async def clone_builder(
    tools: BuildTools, build: BuildRecord, builder: BuilderRecord
) -> tuple[str, AgentClient, str]:
    """A clone of the builder template of the build's memory and vCPUs (the template is
    made first, once, if this is the first build that asks for them)."""
    options = build.options
    name = f"build-{build.id}"
    await tools.log(f"builder VM {name}: a clone of the builder template "
                    f"({options.cpus} vCPU, {options.memory_mb} MB)")  # fmt: skip
    record = await tools.templates.clone(name, options.memory_mb, options.cpus)
    tools.on_instance(record.id)
    if record.state_error:  # not made its own (random state, network): not used for a build
        raise BuildFailed(f"the builder VM is not usable: {record.state_error}")
    tags = {**record.tags, "ember.build": build.id, "ember.builder": builder.id}
    await tools.instances.update(record.id, UpdateInstanceRequest(tags=tags))
    _, agent = await tools.instances.wait_for_agent(record.id, AGENT_WAIT_SECONDS)
    return record.id, agent, record.image_digest


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
    beside it (never in the build context, so never in a layer). One exec: the files
    and the source archive go in as one tar."""
    token = tools.mint_token()
    auth = base64.b64encode(f"ember:{token}".encode()).decode()
    files = {
        "registries.conf": registries_conf(tools.relay, tools.own_hosts).encode(),
        "auth.json": json.dumps({"auths": {tools.relay: {"auth": auth}}}).encode(),
        **{f"secrets/{k}": v.encode() for k, v in inputs.secrets.items()},
        SOURCE: inputs.source.read_bytes(),
    }
    if inputs.dockerfile is not None:
        files["Dockerfile"] = inputs.dockerfile.encode()
    script = (f"mkdir -p {WORK}/src && tar -xf - -C {WORK} && tar -xzf {WORK}/{SOURCE} "
              f"-C {WORK}/src --no-same-owner && rm {WORK}/{SOURCE}")  # fmt: skip
    await _run(tools, agent, ["sh", "-c", script], "placing the source and build files",
               stdin=_tar_files(files), scrub=inputs.secrets)  # fmt: skip


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
    # TMPDIR is on the cache disk, made here: the disk is mounted while the inputs go in.
    script = 'mkdir -p "$TMPDIR" && exec "$@"'
    await _run(tools, agent, ["sh", "-c", script, "sh", *argv], "the build", scrub=inputs.secrets)


async def push_result(
    tools: BuildTools, agent: AgentClient, inputs: Inputs, builder_image: str
) -> BuildResult:
    """The push, and what the record keeps: the digest buildah pushed (its last line), the
    base image's digest (read by the manager from the pushed manifest's annotations, no
    buildah run for it), buildah's version (once per builder image: a buildah run under
    TCG costs about a second)."""
    target = f"docker://{tools.relay}/{inputs.push_ref}"
    # Uncompressed: gzip under TCG costs more than the bytes it saves on the guest network,
    # and Ember's registry and conversion take plain tar layers as they are.
    script = f'buildah push "$@" && printf "pushed %s\\n" "$(cat {WORK}/digest)"'
    args = ["--disable-compression", f"--digestfile={WORK}/digest", LOCAL_TAG, target]
    last = await _run(tools, agent, ["sh", "-c", script, "sh", *args], "the push")
    if builder_image not in tools.versions:
        session = await agent.exec(["buildah", "--version"], env=ENV, timeout=30)
        result, out, _ = await session.wait()
        if result.exit_code == 0:
            tools.versions[builder_image] = out.decode(errors="replace").strip()
    return BuildResult(image_digest=last.removeprefix("pushed ").strip(),
                       builder_version=tools.versions.get(builder_image))  # fmt: skip


async def _run(
    tools: BuildTools, agent: AgentClient, argv: list[str], what: str, *,
    stdin: bytes | None = None, scrub: dict[str, str] | None = None,
) -> str:  # fmt: skip
    """Run a step in the guest; its output goes to the events line by line (secret values
    blotted out), and a non-zero exit fails the build naming the step. Returns the last
    line it printed."""
    session = await agent.exec(argv, env=ENV, cwd="/", timeout=60)
    if stdin is not None:
        await session.write(stdin)
    await session.close_stdin()
    pending, last = b"", ""
    while (chunk := await session.read_merged()) is not None:
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            last = _blot(line.decode(errors="replace"), scrub)
            await tools.log(last)
    if pending:
        last = _blot(pending.decode(errors="replace"), scrub)
        await tools.log(last)
    result = session.result
    assert result is not None
    if result.exit_code != 0 or result.signal:
        why = f"signal {result.signal}" if result.signal else f"exit code {result.exit_code}"
        raise BuildFailed(f"{what} failed ({why})", code="build_failed")
    return last


def _blot(line: str, secrets: dict[str, str] | None) -> str:
    for value in (secrets or {}).values():
        if value:
            line = line.replace(value, "****")
    return line.rstrip("\r")
