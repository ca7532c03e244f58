"""Forward TCP ports of the host's loopback into a network namespace.

The demo runs Ember inside a namespace of its own (so its VMs' network never
meets the host's); this makes the API and every ingress port reachable from the
host at the same loopback ports, the way a person expects to find them.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterable

from ember.testkit.netns import enter

BUFFER = 64 * 1024


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(BUFFER):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def _connect_inside(namespace: str, port: int) -> socket.socket:
    """A socket connected to 127.0.0.1:port of the namespace (made by a thread inside it;
    a socket keeps its namespace whichever thread uses it afterwards)."""
    made: list[socket.socket | BaseException] = []

    def connect() -> None:
        try:
            enter(namespace)
            made.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        except BaseException as exc:
            made.append(exc)

    worker = threading.Thread(target=connect)
    worker.start()
    worker.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    made[0].settimeout(None)
    return made[0]


def _serve_one(client: socket.socket, namespace: str, port: int) -> None:
    try:
        upstream = _connect_inside(namespace, port)
    except OSError:
        client.close()
        return
    threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()
    _pump(upstream, client)
    client.close()
    upstream.close()


def forward(namespace: str, host_port: int, inner_port: int) -> socket.socket:
    """Listen on 127.0.0.1:host_port and relay each connection to the namespace's
    127.0.0.1:inner_port, in daemon threads; close the returned socket to stop."""
    listener = socket.create_server(("127.0.0.1", host_port), reuse_port=False)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                threading.Thread(
                    target=_serve_one, args=(client, namespace, inner_port), daemon=True
                ).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener


class PortMirror:
    """Keeps 127.0.0.1:P on the host forwarded to 127.0.0.1:P of the namespace for every
    port `ports()` names (the demo: each port an ingress listens on), polling it; so a
    port published while the demo runs (`ember run -p 8081:80`) answers on the host."""

    def __init__(
        self,
        namespace: str,
        ports: Callable[[], Iterable[int]],
        say: Callable[[str], None],
        interval: float = 0.5,
    ) -> None:
        self.namespace, self.ports, self.say, self.interval = namespace, ports, say, interval
        self._listeners: dict[int, socket.socket] = {}
        self._refused: set[int] = set()  # taken on the host: said once, not retried
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> PortMirror:
        self._thread.start()
        return self

    def sync(self) -> None:
        """Forward the ports now named, stop forwarding the others."""
        wanted = set(self.ports())
        for port in sorted(wanted - self._listeners.keys() - self._refused):
            try:
                self._listeners[port] = forward(self.namespace, port, port)
            except OSError as exc:
                self._refused.add(port)
                self.say(f"host port {port} cannot be forwarded ({exc.strerror}): publish another")
            else:
                self.say(f"forwarding http://127.0.0.1:{port}/ to port {port} in the namespace")
        for port in self._listeners.keys() - wanted:
            self._listeners.pop(port).close()
        self._refused &= wanted

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # the server restarting: try again later
                self.sync()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for listener in self._listeners.values():
            listener.close()
        self._listeners.clear()
