"""Listings: filters by reference, tags (all must match) and the `count` + `from` cursor."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fastapi import Request

from ember.errors import EmberError
from ember.ukc import requests as req
from ember.ukc.convert import Named, pick
from ember.ukc.envelope import item_error, named, ok

JSON = dict[str, Any]
R = TypeVar("R", bound=Named)


def listing(
    request: Request,
    records: Sequence[R],
    get: Callable[[str], R],
    show: Callable[[R], JSON],
    kind: str,
    tags_of: Callable[[R], dict[str, str]] | None = None,
) -> list[JSON]:
    """With `uuid`/`name` filters: one entry per reference (a miss is an error 8 item).
    Without: every record by creation, those carrying every `tags` entry, from the
    `from` record (included: the SDK's cursor is inclusive), at most `count`."""
    refs = req.filters(request)
    if refs:
        out = []
        for ref in refs:
            try:
                out.append(ok(show(pick(ref, get, kind))))
            except EmberError as exc:
                out.append(item_error(exc, named(ref)))
        return out
    wanted = req.tag_list(request)
    chosen = [r for r in records if tags_of is None or _tagged(tags_of(r), wanted)]
    chosen = sorted(chosen, key=lambda r: (getattr(r, "created_at", None), r.id))
    start = request.query_params.get("from")
    if start is not None:
        ids = [r.id for r in chosen]
        if start not in ids:  # gone: an empty page, from which the SDK resumes
            return []
        chosen = chosen[ids.index(start) :]
    limit = req.count(request)
    return [ok(show(r)) for r in (chosen if limit is None else chosen[:limit])]


def _tagged(tags: dict[str, str], wanted: list[str]) -> bool:
    have = {f"{k}={v}" if v else k for k, v in tags.items()}
    return all(tag in have for tag in wanted)
