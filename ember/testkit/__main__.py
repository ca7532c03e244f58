"""`python -m ember.testkit push`: push a test image into a registry."""

from __future__ import annotations

import argparse

from ember.testkit import (
    BuiltImage,
    debian_systemd_image,
    hello_image,
    multilayer_image,
    padded_image,
    push,
)

KINDS = {
    "hello": hello_image,
    "multilayer": multilayer_image,
    "big": lambda: padded_image(100 * 1024 * 1024),
    "systemd": debian_systemd_image,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m ember.testkit")
    commands = parser.add_subparsers(dest="command", required=True)
    push_cmd = commands.add_parser("push", help="build a test image and push it")
    push_cmd.add_argument("reference", help="REPOSITORY:TAG inside the registry")
    push_cmd.add_argument("--registry", required=True, help="base URL, e.g. http://127.0.0.1:4973")
    push_cmd.add_argument("--token", help="bearer token (Ember's: `ember token`)")
    push_cmd.add_argument("--kind", choices=sorted(KINDS), default="hello")
    push_cmd.add_argument("--user", help="Basic auth as USER:PASSWORD (instead of --token)")
    args = parser.parse_args()
    repository, _, tag = args.reference.partition(":")
    image: BuiltImage = KINDS[args.kind]()
    user, _, password = (args.user or "").partition(":")
    basic = (user, password) if args.user else None
    digest = push(image, args.registry, repository, tag or "latest", token=args.token, basic=basic)
    print(digest)


if __name__ == "__main__":
    main()
