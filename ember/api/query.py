"""Query-string shapes the official client sends."""

from __future__ import annotations

from fastapi import Request

from ember.validation import validate_tags


def tag_filter(request: Request) -> dict[str, str]:
    """`tags[key]=value` pairs (the client's bracket encoding of a dict) as a dict."""
    tags = {
        key[5:-1]: value
        for key, value in request.query_params.multi_items()
        if key.startswith("tags[") and key.endswith("]")
    }
    return validate_tags(tags)
