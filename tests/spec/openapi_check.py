"""Check real answers against Hypeman's OpenAPI document (`shared/specs`, read in place).

The document says `openapi: 3.1.0` but writes its schemas in OAS 3.0's dialect
(`nullable: true`, never a `type` list), so answers are validated with
`openapi-schema-validator`'s OAS 3.0 read validator: `nullable` is honoured, a
`null` where the schema has no `nullable` is a violation, and date-times are
checked as RFC 3339.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import yaml
from openapi_schema_validator import OAS30ReadValidator, oas30_format_checker

SPEC_PATH = Path(__file__).resolve().parents[3] / "shared/specs/hypeman-openapi-0.3.0.yaml"
METHODS = ("get", "put", "post", "delete", "patch")


def spec_path() -> Path:
    """Beside the checkout (`../shared/specs`), or the workplace's shared copy."""
    for candidate in (SPEC_PATH, Path("/work/shared/specs/hypeman-openapi-0.3.0.yaml")):
        if candidate.exists():
            return candidate
    raise FileNotFoundError("hypeman-openapi-0.3.0.yaml is not in ../shared/specs")


@cache
def spec() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(spec_path().read_text())
    return document


@dataclass(frozen=True)
class Operation:
    id: str
    method: str
    path: str  # the spec's template, e.g. /instances/{id}/volumes/{volumeId}
    responses: dict[str, Any]

    def url(self, *params: str) -> str:
        """The path with its `{...}` parameters filled in order."""
        names = re.findall(r"{[^}]+}", self.path)
        assert len(names) == len(params), f"{self.id} takes {names}"
        path = self.path
        for name, value in zip(names, params, strict=True):
            path = path.replace(name, httpx.URL(value).raw_path.decode() if value else "", 1)
        return path

    def route(self) -> str:
        """The template with parameter names erased, to match Ember's own document."""
        return re.sub(r"{[^}]+}", "{}", self.path)


@cache
def operations() -> dict[str, Operation]:
    return {
        op["operationId"]: Operation(
            op["operationId"],
            method,
            path,
            # YAML reads the status keys as numbers.
            {str(status): answer for status, answer in op.get("responses", {}).items()},
        )
        for path, item in spec()["paths"].items()
        for method, op in item.items()
        if method in METHODS
    }


def _validator(schema: dict[str, Any]) -> OAS30ReadValidator:
    # `#/components/...` references resolve against the root the schema is placed in.
    rooted = {**schema, "components": spec()["components"]}
    return OAS30ReadValidator(rooted, format_checker=oas30_format_checker)


@dataclass
class Walk:
    """Calls operations by their spec id and collects every way an answer breaks the spec.

    `extensions` are the (route, method, status) triples Ember's own `/openapi.json`
    documents: a status the spec does not list is allowed only when it is one of them."""

    client: httpx.Client
    extensions: set[tuple[str, str, str]]
    violations: list[str] = field(default_factory=list)
    called: set[str] = field(default_factory=set)

    def call(
        self, op_id: str, *params: str, expect: int | None = None, **kwargs: Any
    ) -> httpx.Response:
        op = operations()[op_id]
        answer = self.client.request(op.method.upper(), op.url(*params), **kwargs)
        self.called.add(op_id)
        where = f"{op_id} {op.method.upper()} {op.url(*params)} -> {answer.status_code}"
        if expect is not None and answer.status_code != expect:
            self.violations.append(f"{where}: expected {expect}: {answer.text[:300]}")
        self.violations.extend(f"{where}: {problem}" for problem in check(op, answer, self))
        return answer

    def json(self, op_id: str, *params: str, expect: int, **kwargs: Any) -> Any:
        answer = self.call(op_id, *params, expect=expect, **kwargs)
        assert answer.status_code == expect, "\n".join(self.violations)
        return answer.json() if answer.content else None


def check(op: Operation, answer: httpx.Response, walk: Walk) -> list[str]:
    status = str(answer.status_code)
    # Ember's `/openapi.json` must tell the truth too: every status it answers is listed.
    problems = (
        []
        if (op.route(), op.method, status) in walk.extensions
        else [f"Ember's /openapi.json does not list status {status}"]
    )
    documented = op.responses.get(status) or op.responses.get("default")
    if documented is None:
        if problems:
            return [f"status {status} is neither in the spec nor documented by Ember"]
        # An extension status carries the spec's error body.
        documented = {"content": {"application/json": {"schema": _error_ref()}}}
    return problems + _check_body(documented, answer)


def _check_body(documented: dict[str, Any], answer: httpx.Response) -> list[str]:
    content = documented.get("content") or {}
    if not content:
        return [] if not answer.content else [f"spec says no body, got {answer.text[:200]!r}"]
    media = answer.headers.get("content-type", "").split(";")[0].strip()
    if media not in content:
        return [f"content type {media!r} is not one of {sorted(content)}"]
    schema = content[media].get("schema")
    if schema is None or media != "application/json":
        return []
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '<body>'}: {error.message}"
        for error in _validator(schema).iter_errors(answer.json())
    ]


def _error_ref() -> dict[str, str]:
    return {"$ref": "#/components/schemas/Error"}


def ember_extensions(document: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(route, method, status) for every answer Ember's `/openapi.json` documents."""
    return {
        (re.sub(r"{[^}]+}", "{}", path), method, status)
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in METHODS
        for status in op.get("responses", {})
    }
