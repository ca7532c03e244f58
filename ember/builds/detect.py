"""Source without a Dockerfile, the Unik way: Ember recognises the app and writes one.

Two kinds, recognised from the archive's file names at the top level (read on the host
as tar headers only; nothing is unpacked here):

- **Python** (`requirements.txt`, `pyproject.toml`, or `app.py` / `main.py`): the app in
  /app, its requirements installed by pip, run with `python3 <app.py|main.py>`.
- **Static site** (`index.html`): the files served by busybox httpd on port 8080.

Each is built on a Debian image Ember makes with debootstrap (`rootfs.PYTHON`,
`rootfs.STATIC`). Why these two: they need nothing but Debian packages (python3, pip,
busybox), so their bases are made here with no registry beyond Debian's, and together
they cover the common "a directory of code" and "a directory of HTML" cases. Rejected
for now: Node and Go (their toolchains from Debian are large and old; a wrong guess of
the start command is worse than asking for a Dockerfile).
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

from ember.builds.rootfs import PYTHON, STATIC, Recipe
from ember.errors import InvalidArgument

__all__ = ["BASES", "Detected", "detect_source"]

PYTHON_ENTRIES = ("app.py", "main.py")
BASES: dict[str, Recipe] = {"python": PYTHON, "static": STATIC}  # language -> its base


@dataclass(frozen=True)
class Detected:
    language: str  # "python" | "static"
    base: Recipe
    template: str  # the Dockerfile, with {base} for the base image's name

    def dockerfile(self, base: str) -> str:
        return self.template.format(base=base)


def _python(entry: str) -> Detected:
    return Detected("python", PYTHON, (
        "FROM {base}\n"
        "WORKDIR /app\n"
        "COPY . /app\n"
        "RUN if [ -f requirements.txt ]; then pip3 install --no-cache-dir "
        "--break-system-packages -r requirements.txt; fi\n"
        "ENV PYTHONUNBUFFERED=1\n"
        f'CMD ["python3", "/app/{entry}"]\n'
    ))  # fmt: skip


STATIC_SITE = Detected("static", STATIC, (
    "FROM {base}\n"
    "COPY . /srv/www\n"
    "EXPOSE 8080\n"
    'CMD ["busybox", "httpd", "-f", "-v", "-p", "8080", "-h", "/srv/www"]\n'
))  # fmt: skip


def top_level_names(archive: Path) -> set[str]:
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            return {m.name.removeprefix("./").split("/", 1)[0] for m in tar if m.name}
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InvalidArgument(
            f"source: not a tar.gz archive ({exc})", code="invalid_source"
        ) from None


def detect_source(archive: Path) -> Detected | None:
    """None when the archive has its own Dockerfile; else what Ember will build it as."""
    names = top_level_names(archive)
    if "Dockerfile" in names:
        return None
    entry = next((n for n in PYTHON_ENTRIES if n in names), None)
    if entry is not None:
        return _python(entry)
    if "index.html" in names:
        return STATIC_SITE
    if names & {"requirements.txt", "pyproject.toml"}:
        raise InvalidArgument("source: a Python project without app.py or main.py at its top; "
                              "add one or a Dockerfile", code="no_dockerfile")  # fmt: skip
    raise InvalidArgument(
        "source: no Dockerfile (in the archive or the `dockerfile` field), and not an app Ember "
        "recognises (a Python app: app.py or main.py; a static site: index.html)",
        code="no_dockerfile",
    )
