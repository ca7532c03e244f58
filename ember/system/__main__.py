"""`python -m ember.system prepare --system-dir DIR` (called by `make setup`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ember.builds import rootfs
from ember.config import Settings
from ember.errors import EmberError
from ember.system import DEFAULT_SYSTEM_DIR, prepare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ember.system")
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser(
        "prepare", help="fetch the guest kernel, build agent and initrd, make the Debian roots"
    )
    prep.add_argument("--system-dir", type=Path, default=DEFAULT_SYSTEM_DIR)
    prep.add_argument(
        "--no-debian-roots", action="store_true",
        help="skip the builder's and the written Dockerfiles' Debian roots (made on first use)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        artifacts = prepare(args.system_dir)
        layers = [] if args.no_debian_roots else _debian_roots(args.system_dir)
    except EmberError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(f"kernel {artifacts.kernel_version}: {artifacts.kernel}")
    print(f"initrd {artifacts.initrd_hash}: {artifacts.initrd}")
    for layer in layers:
        print(f"debian root {layer.key}: {layer.tar}")
    return 0


def _debian_roots(system_dir: Path) -> list[rootfs.BuilderLayer]:
    """Where the builds manager looks for them: `<system dir>/builds`, same mirror."""
    print("debian roots (debootstrap, once): builder, python, static", flush=True)
    return rootfs.prepare(system_dir / "builds", Settings().builds_debian_mirror)


if __name__ == "__main__":
    sys.exit(main())
