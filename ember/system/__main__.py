"""`python -m ember.system prepare --system-dir DIR` (called by `make setup`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ember.errors import EmberError
from ember.system import DEFAULT_SYSTEM_DIR, prepare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ember.system")
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="fetch the guest kernel, build agent and initrd")
    prep.add_argument("--system-dir", type=Path, default=DEFAULT_SYSTEM_DIR)
    args = parser.parse_args(argv)
    try:
        artifacts = prepare(args.system_dir)
    except EmberError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(f"kernel {artifacts.kernel_version}: {artifacts.kernel}")
    print(f"initrd {artifacts.initrd_hash}: {artifacts.initrd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
