"""`/v1/instances`: Unikraft Cloud's instance API over Ember's `InstanceManager` and
`GroupManager` (create in a group, membership), nothing of its own but the shapes."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter, ValidationError

from ember.api.deps import ServicesDep
from ember.api.services import Services
from ember.errors import EmberError, InvalidArgument, InvalidState, NotFound
from ember.groups.requests import InstanceServiceGroupRequest, ScaleToZeroRequest
from ember.ids import new_id
from ember.instances import CreateInstanceRequest, InstanceRecord, State
from ember.instances.logs import LogSource
from ember.instances.request import UpdateInstanceRequest, VolumeMountRequest
from ember.schedules.models import Schedule, ScheduleRequest
from ember.templates import CreateTemplateRequest
from ember.ukc import convert
from ember.ukc import requests as req
from ember.ukc.batch import item_routes
from ember.ukc.envelope import Timer, each, envelope, failure, item_error, named
from ember.ukc.listing import listing
from ember.validation import validate_tags

JSON = dict[str, Any]
KEY = "instances"
router = APIRouter(prefix="/v1/instances", tags=["v1"])
MAX_WAIT_SECONDS = 300.0  # as Ember's own wait: "-1, as long as the platform allows"
# Asked of a create, and not something this Ember does.
CREATE_UNSUPPORTED = (
    "replicas", "features", "roms", "plugins", "gpus", "autokill", "hostname",
    "dependencies", "branch_from", "checkpoint", "network_interfaces", "gateway", "nameserver",
    "annotations", "sched_priority",
)  # fmt: skip
CREATE_FIELDS = {
    "name", "image", "memory_mb", "vcpus", "args", "env", "tags", "service_group",
    "scale_to_zero", "volumes", "autostart", "timeout_s", "wait_timeout_ms",
    "restart_policy", "template", "type", "schedules", *CREATE_UNSUPPORTED,
}  # fmt: skip
# What a clone takes beside its template (`_clone`): the rest is the template's.
CLONE_FIELDS = {
    "name", "template", "autostart", "timeout_s", "wait_timeout_ms", "tags",
    "service_group", "scale_to_zero", "type",
}  # fmt: skip
SCHEDULES = TypeAdapter(list[ScheduleRequest])  # the seed's `Schedule`, Ember's check
# What an autoscale member is made from (`create_args`; see `member_args`).
MEMBER_FIELDS = {
    "image",
    "memory_mb",
    "vcpus",
    "args",
    "env",
    "tags",
    "restart_policy",
    "autostart",
}


def show(svc: Services, record: InstanceRecord, *, details: bool = True) -> JSON:
    instances = svc.instances
    return convert.instance(
        record, instances.lease(record), instances.attachments(record),
        svc.groups.membership(record.id), svc.schedules.of(record.id), details=details,
    )  # fmt: skip


def _get(svc: Services, ref: JSON) -> InstanceRecord:
    return convert.pick(ref, svc.instances.get, "instance")


# ---- create and read ---------------------------------------------------------------------


@router.post("", summary="Create an instance (Unikraft Cloud)")
async def create(request: Request, svc: ServicesDep) -> JSONResponse:
    timer, body = Timer(), await req.body_object(request)
    try:
        record = await _create(svc, body)
    except EmberError as exc:
        return envelope(KEY, [item_error(exc, named(body))], timer)
    wait = body.get("timeout_s", body.get("wait_timeout_ms"))
    if wait is not None and body.get("autostart") is True and record.state != State.RUNNING:
        record, timed_out = await svc.instances.wait(record.id, State.RUNNING, _seconds(body))
        if timed_out:
            item = {"status": "error", **show(svc, record), "message": "timed out"}
            return failure("timed out waiting for the instance to be running", timer, KEY, [item])
    return envelope(KEY, [{"status": "success", **show(svc, record)}], timer)


async def _create(svc: Services, body: JSON) -> InstanceRecord:
    unknown = sorted(set(body) - CREATE_FIELDS)
    if unknown:
        raise InvalidArgument(f"unknown fields: {', '.join(unknown)}")
    req.unsupported(body, CREATE_UNSUPPORTED, "instance")
    if body.get("type") not in (None, "micro"):
        raise InvalidArgument("type: Ember runs microVMs only ('micro')", code="not_supported")
    if body.get("template") is not None:
        return await _clone(svc, body, body["template"])
    if body.get("autostart") is not True:
        raise InvalidArgument(
            "autostart: Ember's create boots the instance: send autostart=true",
            code="not_supported",
        )
    try:
        request, group, scale = _create_request(body)
    except ValidationError as exc:
        raise InvalidArgument(f"invalid instance: {_first(exc)}") from exc
    # checked before anything exists
    schedules = await svc.schedules.check(_schedules(body.get("schedules") or []))
    await svc.images.wait_ready(request.image, svc.settings.image_ready_wait_seconds)
    if group is None and scale is None:
        record = await svc.instances.create(request)
    else:
        record = await svc.groups.create_instance(request, group, scale)
    svc.schedules.put(record.id, schedules)
    return record


def _create_request(
    body: JSON,
) -> tuple[CreateInstanceRequest, InstanceServiceGroupRequest | None, ScaleToZeroRequest | None]:
    fields = {"name": _name(body), **_fields(body)}
    fields["volumes"] = [_mount(v) for v in body.get("volumes") or []] or None
    request = CreateInstanceRequest.model_validate(
        {k: v for k, v in fields.items() if v is not None}
    )
    group, scale = _grouping(body)
    return request, group, scale


def _name(body: JSON) -> str:
    return body.get("name") or f"i-{new_id()[:8]}"


def _grouping(body: JSON) -> tuple[InstanceServiceGroupRequest | None, ScaleToZeroRequest | None]:
    group, scale = body.get("service_group"), body.get("scale_to_zero")
    return (
        InstanceServiceGroupRequest.model_validate(group) if group is not None else None,
        ScaleToZeroRequest.model_validate(scale) if scale is not None else None,
    )


async def _clone(svc: Services, body: JSON, template: object) -> InstanceRecord:
    """A clone of a template (`Templates.clone`): Running with `autostart`, else in
    Standby (not running; `start` restores it). With `prepare`, the template is made
    first from its `create_args` unless it exists (the SDK's `templates.prepare`)."""
    if not isinstance(template, dict):
        raise InvalidArgument("template: an object naming a template by uuid or name")
    others = sorted(set(body) - CLONE_FIELDS)
    if others:
        raise InvalidArgument(
            f"{', '.join(others)}: a clone takes everything else from its template",
            code="not_supported",
        )
    req.unsupported(template, ("autokill",), "template")
    name, tags = _name(body), validate_tags(convert.tags_in(body.get("tags")))
    target = State.RUNNING if body.get("autostart") is True else State.STANDBY
    try:
        group, scale = _grouping(body)
    except ValidationError as exc:
        raise InvalidArgument(f"invalid instance: {_first(exc)}") from exc
    if template.get("prepare"):
        await _prepare(svc, template)
    ref = {k: template[k] for k in ("uuid", "name") if template.get(k) is not None}
    source = convert.pick(ref, svc.templates.get, "template")
    record = await svc.groups.add_instance(
        name, group, scale, lambda: svc.templates.clone(source.id, name, target=target)
    )
    if tags:
        record = await svc.instances.update(record.id, UpdateInstanceRequest(tags=tags))
    return record


async def _prepare(svc: Services, template: JSON) -> None:
    """The template `name` made from `create_args` (the seed's instance create), ready
    once its guest agent is up, within `prepare_timeout_s` (0: Ember's default). Unikraft
    Cloud's guest writes /uk/libukp/template_instance when ready: Ember has no such hook."""
    name = template.get("name")
    if not isinstance(name, str):
        raise InvalidArgument("template.name: `prepare` names the template to make")
    if any(t.name == name for t in svc.templates.all()):
        return
    args = template.get("create_args")
    if not isinstance(args, dict):
        raise InvalidArgument("template.create_args: the instance to make the template from")
    fields = {"name": name, **_args(args, MEMBER_FIELDS, "template.create_args", "a template")}
    timeout = template.get("prepare_timeout_s")
    if timeout:
        fields["readiness"] = {"timeout": f"{_int(timeout, 'template.prepare_timeout_s')}s"}
    try:
        request = CreateTemplateRequest.model_validate(fields)
    except ValidationError as exc:
        raise InvalidArgument(f"invalid template: {_first(exc)}") from exc
    await svc.images.wait_ready(request.image, svc.settings.image_ready_wait_seconds)
    await svc.templates.create(request)


def member_args(body: JSON) -> JSON:
    """An autoscale configuration's `create_args` (the seed's instance create, for every
    member) as Ember's create request without a name (the group names its members)."""
    return _args(body, MEMBER_FIELDS, "create_args", "a member")


def _args(body: JSON, allowed: set[str], field: str, what: str) -> JSON:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidArgument(
            f"{field}: {', '.join(unknown)}: {what} is made from image, memory_mb, "
            "vcpus, args, env, tags and restart_policy only",
            code="not_supported",
        )
    if body.get("autostart") is False:
        raise InvalidArgument(f"{field}.autostart: {what} boots", code="not_supported")
    return {k: v for k, v in _fields(body).items() if v is not None}


def _fields(body: JSON) -> JSON:
    """The seed's create fields as Ember's (`args` -> `cmd`, `memory_mb` -> `size`...)."""
    image = body.get("image")
    if not isinstance(image, str):
        raise InvalidArgument("image: an image reference (string) is required")
    fields: JSON = {
        "image": image,
        "env": body.get("env"),
        "cmd": body.get("args"),
        "tags": convert.tags_in(body.get("tags")) or None,
    }
    if body.get("memory_mb") is not None:
        fields["size"] = f"{_int(body['memory_mb'], 'memory_mb')}MB"
    if body.get("vcpus") is not None:
        fields["vcpus"] = body["vcpus"]
    policy = body.get("restart_policy")
    if policy is not None:
        modes = {v: k for k, v in convert.RESTART_POLICIES.items()}
        if policy not in modes:
            raise InvalidArgument(f"restart_policy: one of {sorted(modes)}, got {policy!r}")
        fields["restart_policy"] = {"policy": modes[policy]}
    return fields


def _mount(volume: object) -> VolumeMountRequest:
    """An existing volume by uuid or name; a volume made on the fly is not built."""
    if not isinstance(volume, dict):
        raise InvalidArgument("volumes: a list of objects")
    req.unsupported(volume, ("size_mb", "host_path", "template", "args", "filesystem"),
                    "volumes: creating a volume with the instance")  # fmt: skip
    ref = volume.get("uuid") or volume.get("name")
    if not isinstance(ref, str) or not isinstance(volume.get("at"), str):
        raise InvalidArgument("volumes: each needs a uuid or name and `at`")
    return VolumeMountRequest(
        volume_id=ref, mount_path=volume["at"], readonly=bool(volume.get("readonly", False))
    )


@router.get("", summary="List instances (Unikraft Cloud)")
async def list_instances(request: Request, svc: ServicesDep) -> JSONResponse:
    timer, details = Timer(), req.flag(request, "details")
    items = listing(
        request, svc.instances.find(), svc.instances.get,
        lambda r: show(svc, r, details=details), "instance", lambda r: r.tags,
    )  # fmt: skip
    return envelope(KEY, items, timer)


# ---- batches (and their by-uuid twins) ---------------------------------------------------


async def _start(svc: Services, ref: JSON) -> JSON:
    """A standby instance is restored (Ember's one restore path), a stopped one booted."""
    record = _get(svc, ref)
    req.unsupported(ref, ("timeout_s",), "start: waiting")
    if record.state == State.STANDBY:
        return _brief(await svc.instances.restore(record.id))
    return _brief(await svc.instances.start(record.id))


async def _stop(svc: Services, ref: JSON) -> JSON:
    record = _get(svc, ref)
    req.unsupported(ref, ("force", "drain_timeout_ms", "quick", "dump", "ifstate"), "stop")
    previous = convert.STATES[record.state]
    return {**_brief(await svc.instances.stop(record.id)), "previous_state": previous}


async def _suspend(svc: Services, ref: JSON) -> JSON:
    record = _get(svc, ref)
    previous = convert.STATES[record.state]
    return {**_brief(await svc.instances.standby(record.id)), "previous_state": previous}


async def _delete(svc: Services, ref: JSON) -> JSON:
    record = _get(svc, ref)
    req.unsupported(ref, ("dont_retain",), "delete")
    previous = convert.STATES[record.state]
    await svc.instances.delete(record.id)
    return {"uuid": record.id, "name": record.name, "previous_state": previous}


async def _update(svc: Services, item: JSON) -> JSON:
    """Tags and schedules only: every other property is refused by name."""
    record = _get(svc, item)
    prop, op = item.get("prop"), item.get("op")
    if prop == "schedules":
        wanted = _schedules_changed(svc.schedules.of(record.id), op, item.get("value"))
        svc.schedules.put(record.id, await svc.schedules.check(wanted))
    elif prop == "tags":
        tags = _changed(record.tags, op, item.get("value"))
        record = await svc.instances.update(record.id, UpdateInstanceRequest(tags=tags))
    else:
        raise InvalidArgument(
            f"prop {prop!r}: only tags and schedules can change here", code="not_supported"
        )
    return {"uuid": record.id, "name": record.name}


def _schedules_changed(current: list[Schedule], op: object, value: object) -> list[ScheduleRequest]:
    """The seed's PATCH: `set`/`add` schedule objects, `del` schedule names."""
    have = [ScheduleRequest(name=s.name, when=s.when, action=s.action, args=s.args or None)
            for s in current]  # fmt: skip
    listed = [] if value is None else value if isinstance(value, list) else [value]
    if op == "del":
        return [s for s in have if s.name not in listed]
    if op not in ("set", "add"):
        raise InvalidArgument(f"op: one of set, add, del, got {op!r}")
    given = _schedules(listed)  # a `set` without a value (the SDK's REMOVE): none
    return given if op == "set" else have + given  # a name given twice: Ember's check refuses


def _schedules(value: object) -> list[ScheduleRequest]:
    """The seed's `Schedule` objects as Ember's requests (`ScheduleManager.check` judges)."""
    try:
        return SCHEDULES.validate_python(value)
    except ValidationError as exc:
        raise InvalidArgument(f"schedules: {_first(exc)}", code="invalid_schedule") from exc


def _changed(tags: dict[str, str], op: object, value: object) -> dict[str, str]:
    given = convert.tags_in(value if isinstance(value, list) else [value])  # type: ignore[list-item]
    if op == "set":
        return given
    if op == "add":
        return {**tags, **given}
    if op == "del":
        return {k: v for k, v in tags.items() if k not in given}
    raise InvalidArgument(f"op: one of set, add, del, got {op!r}")


# ---- wait, log, metrics (before /{uuid}: these are paths of their own) ----------------


@router.get("/wait", summary="Wait for instances to reach a state (JSON body)")
async def wait(request: Request, svc: ServicesDep) -> JSONResponse:
    return await _waits(svc, await req.body_items(request), Timer())


@router.get("/{uuid}/wait", summary="Wait for an instance to reach a state (JSON body)")
async def wait_one(uuid: str, request: Request, svc: ServicesDep) -> JSONResponse:
    body = await req.optional_object(request)
    return await _waits(svc, [{**body, "uuid": uuid}], Timer())


async def _waits(svc: Services, items: list[JSON], timer: Timer) -> JSONResponse:
    """One after the other; any lapse makes the envelope `error` "timed out" (what the
    SDK's `_timed_out` reads), the items carrying their state."""
    out, lapsed = [], False
    for ref in items:
        try:
            record, reached, timed_out = await _wait_one(svc, ref)
        except EmberError as exc:
            out.append(item_error(exc, named(ref)))
            continue
        state = convert.STATES[record.state]
        entry = {"uuid": record.id, "name": record.name, "state": state}
        lapsed = lapsed or timed_out
        if reached:
            out.append({"status": "success", **entry})
        else:
            why = "timed out" if timed_out else f"the instance settled as {state}"
            out.append({"status": "error", **entry, "message": why})
    if lapsed:
        return failure("timed out waiting for the instances' state", timer, KEY, out)
    return envelope(KEY, out, timer)


async def _wait_one(svc: Services, ref: JSON) -> tuple[InstanceRecord, bool, bool]:
    record = _get(svc, ref)
    wanted = ref.get("state", "running")
    state = convert.WAITABLE.get(wanted) if isinstance(wanted, str) else None
    if state is None:
        raise InvalidArgument(
            f"state: Ember waits for one of {sorted(convert.WAITABLE)}, got {wanted!r}",
            code="not_supported",
        )
    record, timed_out = await svc.instances.wait(record.id, state, _seconds(ref))
    return record, record.state == state, timed_out


def _seconds(item: JSON) -> float:
    """`timeout_s` (or `timeout_ms`/`wait_timeout_ms`); -1 or none: Ember's longest wait."""
    if isinstance(item.get("timeout_s"), int):
        seconds = float(item["timeout_s"])
    else:
        millis = item.get("timeout_ms", item.get("wait_timeout_ms"))
        seconds = millis / 1000 if isinstance(millis, int) else -1.0
    return MAX_WAIT_SECONDS if seconds < 0 else min(seconds, MAX_WAIT_SECONDS)


async def _log(svc: Services, ref: JSON) -> JSON:
    record = _get(svc, ref)
    path = svc.instances.log_path(record.id, LogSource.APP)
    data, start, size = await asyncio.to_thread(_read_range, path, ref)
    return {
        "uuid": record.id, "name": record.name, "state": convert.STATES[record.state],
        "output": base64.b64encode(data).decode(),
        "range": {"start": start, "end": start + len(data)},
        "available": {"start": 0, "end": size},
    }  # fmt: skip


def _read_range(path: Any, ref: JSON) -> tuple[bytes, int, int]:
    """`offset` (negative: from the end) and `limit` bytes of the log, clamped to it."""
    offset, limit = ref.get("offset", 0), ref.get("limit")
    if not isinstance(offset, int) or (limit is not None and not isinstance(limit, int)):
        raise InvalidArgument("offset and limit are integers")
    try:
        with open(path, "rb") as log_file:
            size = log_file.seek(0, 2)
            start = max(0, size + offset if offset < 0 else min(offset, size))
            log_file.seek(start)
            return log_file.read(-1 if limit is None or limit < 0 else limit), start, size
    except FileNotFoundError:
        return b"", 0, 0


@router.get("/metrics", summary="Resource usage per instance")
async def metrics(request: Request, svc: ServicesDep) -> JSONResponse:
    timer, refs = Timer(), req.filters(request)
    refs = refs or [{"uuid": r.id} for r in svc.instances.find()]
    return envelope(KEY, await each(refs, lambda ref: _metrics(svc, ref)), timer)


@router.get("/{uuid}/metrics", summary="Resource usage of an instance")
async def metrics_one(uuid: str, svc: ServicesDep) -> JSONResponse:
    timer = Timer()
    return envelope(KEY, await each([{"uuid": uuid}], lambda ref: _metrics(svc, ref)), timer)


async def _metrics(svc: Services, ref: JSON) -> JSON:
    record = _get(svc, ref)
    item: JSON = {"uuid": record.id, "name": record.name}
    try:
        record, stats = svc.instances.stats(record.id)
    except InvalidState:  # not running: nothing in use
        return {**item, "rss_bytes": 0, "cpu_time_ms": 0, "rx_bytes": 0, "tx_bytes": 0}
    rx, tx = await svc.instances.network_counters(record)
    return {**item, "rss_bytes": stats.rss_bytes, "cpu_time_ms":
            int(stats.cpu_seconds * 1000), "rx_bytes": rx, "tx_bytes": tx}  # fmt: skip


item_routes(router, KEY, "PUT", "/start", _start, "Start instances (standby: restored)")
item_routes(router, KEY, "PUT", "/stop", _stop, "Stop instances")
item_routes(router, KEY, "PUT", "/suspend", _suspend, "Suspend instances (Ember's standby)")
item_routes(router, KEY, "DELETE", "", _delete, "Delete instances")
item_routes(router, KEY, "PATCH", "", _update, "Update instances' tags")
item_routes(router, KEY, "GET", "/log", _log, "Console output, base64 byte ranges (JSON body)")


@router.get("/{uuid}", summary="Get an instance by uuid")
async def get_instance(uuid: str, svc: ServicesDep) -> JSONResponse:
    timer = Timer()
    try:
        item = {"status": "success", **show(svc, _get(svc, {"uuid": uuid}))}
    except NotFound as exc:
        item = item_error(exc, {"uuid": uuid})
    return envelope(KEY, [item], timer)


def _brief(record: InstanceRecord) -> JSON:
    return {"uuid": record.id, "name": record.name, "state": convert.STATES[record.state]}


def _int(value: object, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"{field}: an integer")
    return value


def _first(exc: ValidationError) -> str:
    error = exc.errors()[0]
    return f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
