"""Literal and pattern hostnames (`api.example.com`, `{instance}.example.com`) and targets.

A pattern's captures match one run of `[a-z0-9-]` (what instance names and ids are
made of), so a capture never spans a dot and a capture in the first label is covered
by a wildcard certificate for the rest of the name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ember.errors import InvalidArgument

HOSTNAME_MAX = 253
LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
CAPTURE_RE = re.compile(r"\{([a-z_][a-z0-9_]{0,31})\}")
# A pattern label: literal characters and captures, nothing else.
PATTERN_LABEL_RE = re.compile(r"^(?:[a-z0-9-]|\{[a-z_][a-z0-9_]{0,31}\})+$")
CAPTURE_VALUE = "[a-z0-9-]+"
INSTANCE_REF_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# Matches every Host header (an Ember extension): what `ember run -p PORT:PORT` publishes,
# as `docker run -p` does, whatever name the client used to reach this machine.
ANY_HOST = "*"


@dataclass(frozen=True)
class Hostname:
    text: str
    captures: tuple[str, ...]

    @property
    def is_pattern(self) -> bool:
        return bool(self.captures)

    @property
    def is_any(self) -> bool:
        """`*`: every host; routed after every literal and pattern on its port."""
        return self.text == ANY_HOST

    @property
    def regexp(self) -> str:
        """Go regexp matching the request host (no port) and naming each capture."""
        out, pos = [], 0
        for m in CAPTURE_RE.finditer(self.text):
            out.append(re.escape(self.text[pos : m.start()]))
            out.append(f"(?P<{m.group(1)}>{CAPTURE_VALUE})")
            pos = m.end()
        out.append(re.escape(self.text[pos:]))
        return "(?i)^" + "".join(out) + "$"

    @property
    def wildcard(self) -> str | None:
        """`*.rest` when every capture sits in the first label (what a certificate covers)."""
        first, _, rest = self.text.partition(".")
        if not rest or CAPTURE_RE.search(rest):
            return None
        return f"*.{rest}" if CAPTURE_RE.search(first) else None

    @property
    def shape(self) -> str:
        """The pattern with capture names erased: equal shapes match the same hosts."""
        return CAPTURE_RE.sub("{}", self.text)

    @property
    def literal_length(self) -> int:
        """How much of the name is fixed: longer means more specific, routed first."""
        return len(CAPTURE_RE.sub("", self.text))


def parse_hostname(text: str, *, field: str = "hostname") -> Hostname:
    name = text.strip().lower().rstrip(".")
    if name == ANY_HOST:
        return Hostname(name, ())
    if not name or len(name) > HOSTNAME_MAX:
        raise InvalidArgument(f"{field}: must be a hostname of 1-{HOSTNAME_MAX} characters")
    if "*" in name:
        raise InvalidArgument(
            f"{field}: wildcards are not supported; use a pattern such as "
            f"'{{instance}}.example.com', or '*' alone for any host, got {text!r}"
        )
    captures = tuple(CAPTURE_RE.findall(name))
    label_re = PATTERN_LABEL_RE if captures else LABEL_RE
    for label in name.split("."):
        if not label_re.fullmatch(label) or len(CAPTURE_RE.sub("x", label)) > 63:
            raise InvalidArgument(
                f"{field}: {text!r} is not a valid hostname (label {label!r}); labels are "
                "lowercase letters, digits and '-', patterns add captures like {instance}"
            )
    if len(set(captures)) != len(captures):
        raise InvalidArgument(f"{field}: {text!r} names a capture twice")
    return Hostname(name, captures)


@dataclass(frozen=True)
class Target:
    text: str
    captures: tuple[str, ...]

    @property
    def is_dynamic(self) -> bool:
        """Named by the request's host: which instance is known only per request."""
        return bool(self.captures)

    def dns_name(self, domain: str, regexp_name: str) -> str:
        """The DNS name Caddy resolves per request, captures as Caddy placeholders."""
        name = CAPTURE_RE.sub(lambda m: f"{{http.regexp.{regexp_name}.{m.group(1)}}}", self.text)
        return f"{name}.{domain}"


def parse_target(text: str, hostname: Hostname, *, field: str = "target.instance") -> Target:
    captures = tuple(CAPTURE_RE.findall(text))
    unknown = [c for c in captures if c not in hostname.captures]
    if unknown:
        known = ", ".join(f"{{{c}}}" for c in hostname.captures) or "none"
        raise InvalidArgument(
            f"{field}: {text!r} references capture {{{unknown[0]}}} that the hostname "
            f"does not define (it defines: {known})"
        )
    # What the captures leave must still spell an instance name or id.
    if not INSTANCE_REF_RE.fullmatch(CAPTURE_RE.sub("x", text)):
        raise InvalidArgument(
            f"{field}: {text!r} is not an instance name, id or capture reference like "
            "'{instance}'"
        )
    return Target(text, captures)
