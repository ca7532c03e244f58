"""`python -m ember.testkit push`: push a test image into a registry."""

from __future__ import annotations

import argparse

from ember.testkit import hello_image, padded_image, push


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m ember.testkit")
    commands = parser.add_subparsers(dest="command", required=True)
    push_cmd = commands.add_parser("push", help="build a test image and push it")
    push_cmd.add_argument("reference", help="REPOSITORY:TAG inside the registry")
    push_cmd.add_argument("--registry", required=True, help="base URL, e.g. http://127.0.0.1:4973")
    push_cmd.add_argument("--token", help="bearer token (Ember's: `ember token`)")
    push_cmd.add_argument("--kind", choices=["hello", "big"], default="hello")
    args = parser.parse_args()
    repository, _, tag = args.reference.partition(":")
    image = hello_image() if args.kind == "hello" else padded_image(100 * 1024 * 1024)
    digest = push(image, args.registry, repository, tag or "latest", token=args.token)
    print(digest)


if __name__ == "__main__":
    main()
