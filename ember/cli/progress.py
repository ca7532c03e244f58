"""Progress display: an image pull's phases, a push's bytes, and byte bars for load and cp."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from rich import filesize
from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from ember.client.push import Progress as ProgressCallback

_BYTE_COLUMNS = (
    TextColumn("{task.description}"),
    BarColumn(),
    DownloadColumn(),
    TransferSpeedColumn(),
    TimeRemainingColumn(elapsed_when_finished=True),
)


class _BytesOnly(ProgressColumn):
    """A column shown only for phases measured in bytes (download, unpack)."""

    def __init__(self, column: ProgressColumn) -> None:
        super().__init__()
        self.column = column

    def render(self, task: Task) -> RenderableType:
        if task.fields.get("bytes") and task.total is not None:
            return self.column.render(task)
        return Text("")


class _Rate(ProgressColumn):
    """Bytes per second: rich's recent estimate while running; once finished, the average
    since the bar appeared (a phase's last poll lands after its end, in one jump)."""

    def render(self, task: Task) -> RenderableType:
        speed = task.speed
        if task.finished:
            elapsed = task.elapsed or 0
            moved = task.completed - task.fields.get("first", 0)
            speed = moved / elapsed if elapsed > 0 and moved > 0 else None
        text = f"{filesize.decimal(int(speed))}/s" if speed else "?"
        return Text(text, style="progress.data.speed")


def show_pull(
    updates: Iterable[dict[str, Any]], out: Console, *, transient: bool = False
) -> dict[str, Any]:
    """Render an image's progress (queue, then one bar per phase) until it settles."""
    image: dict[str, Any] = {}
    tasks: dict[str, TaskID] = {}
    columns = (
        TextColumn("{task.description:<12}"),
        BarColumn(),
        _BytesOnly(DownloadColumn()),
        _BytesOnly(_Rate()),
        _BytesOnly(TimeRemainingColumn(elapsed_when_finished=True)),
        TextColumn("{task.fields[note]}"),
    )
    with Progress(*columns, console=out, transient=transient) as bars:

        def finish_others(phase: str | None) -> None:
            for other, task_id in tasks.items():
                task = bars.tasks[task_id]
                if other != phase and not task.finished:
                    total = task.total if task.total is not None else 1
                    waiting = other in ("queued", "resolving")  # no work to show once over
                    bars.update(task_id, total=total, completed=total, note="", visible=not waiting)

        for image in updates:
            status, progress = image["status"], image.get("progress") or {}
            if status in ("ready", "failed"):
                if status == "ready":
                    finish_others(None)
                break
            phase = "queued" if status == "pending" else progress.get("phase") or status
            done, total = progress.get("bytes_done"), progress.get("bytes_total")
            where = image.get("queue_position")
            note = f"position {where}" if where else ""
            finish_others(phase)
            if phase not in tasks:
                tasks[phase] = bars.add_task(
                    phase, total=total, completed=done or 0, bytes=total is not None, note=note,
                    first=done or 0,  # cached layers are not part of the rate
                )  # fmt: skip
            else:
                bars.update(
                    tasks[phase], total=total, completed=done or 0, bytes=total is not None,
                    note=note,
                )  # fmt: skip
    return image


def show_push(updates: Iterable[dict[str, Any]], out: Console, *, show: bool) -> dict[str, Any]:
    """Render a push to another registry (its place in the queue, then one bar of the
    bytes the target holds) until it settles; nothing is drawn unless `show`."""
    push: dict[str, Any] = {}
    with Progress(*_BYTE_COLUMNS, console=out, disable=not show) as bars:
        task = bars.add_task("push", total=None)
        for push in updates:
            progress = push.get("progress") or {}
            where = push.get("queue_position")
            step = f"queued (position {where})" if where else f"push {push['target']}"
            total = progress.get("bytes_total")
            bars.update(task, description=step, total=total, completed=progress.get("bytes_done"))
            if push["status"] == "pushed":
                bars.update(task, total=total or 1, completed=total or 1)
    return push


@contextmanager
def byte_bar(
    out: Console, description: str, total: int | None, *, show: bool = True
) -> Iterator[ProgressCallback]:
    """One bar in bytes; yields the callback that advances it. Hidden when `show` is off
    (quiet, JSON, or no terminal): the callback then does nothing."""
    if not show:
        yield lambda _: None
        return
    with Progress(*_BYTE_COLUMNS, console=out) as bars:
        task = bars.add_task(description, total=total)
        yield lambda count: bars.advance(task, count)
