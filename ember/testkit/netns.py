"""Run test code inside a network namespace the test created, never in the host's.

``in_netns(name, fn, *args)`` forks; the child enters the namespace with
setns(2) and runs ``fn``; its return value (or exception, with the child's
traceback) comes back pickled. The pytest process itself never changes
namespace, so nothing it does afterwards can reach the host network by mistake.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import secrets
import subprocess
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

CLONE_NEWNET = 0x40000000
T = TypeVar("T")


class ChildFailure(AssertionError):
    pass


def enter(name: str) -> None:
    """Move the calling thread into the named namespace (``ip netns`` keeps it in /run/netns)."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
    finally:
        os.close(fd)


def in_netns(name: str, fn: Callable[..., T], *args: Any) -> T:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_end)
        try:
            enter(name)
            result: tuple[bool, Any] = (True, fn(*args))
        except BaseException as exc:  # reported to the parent
            result = (False, f"{exc!r}\n{traceback.format_exc()}")
        with os.fdopen(write_end, "wb") as out:
            out.write(pickle.dumps(result))
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as src:
        data = src.read()
    os.waitpid(pid, 0)
    if not data:
        raise ChildFailure("the child died without an answer")
    ok, value = pickle.loads(data)
    if not ok:
        raise ChildFailure(value)
    return value  # type: ignore[no-any-return]


_CREATED: list[str] = []


def created_namespaces() -> list[str]:
    """Every namespace `netns()` made in this process (to check none is left)."""
    return list(_CREATED)


@contextmanager
def netns() -> Iterator[str]:
    """A fresh namespace (loopback up), deleted with everything in it afterwards."""
    name = f"ember-test-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    _CREATED.append(name)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def sh(command: str) -> str:
    """Run a shell command (in the caller's namespace) and return its stdout."""
    proc = subprocess.run(command, shell=True, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{command!r} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout
