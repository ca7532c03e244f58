"""A tiny DNS responder for tests: A records from a JSON file, reread on every query.

Stands in for ember/network's responder (`<instance>.<domain>` -> address) so the
ingress tests need no bridge or VM. Run inside the test's network namespace:
`python dns_responder.py 127.0.0.1:4953 records.json`.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
from pathlib import Path

NOERROR, NXDOMAIN = 0, 3


def answer(query: bytes, records: dict[str, str]) -> bytes:
    ident = struct.unpack("!H", query[:2])[0]
    pos, labels = 12, []
    while query[pos]:
        labels.append(query[pos + 1 : pos + 1 + query[pos]].decode().lower())
        pos += 1 + query[pos]
    qtype = struct.unpack("!H", query[pos + 1 : pos + 3])[0]
    question = query[12 : pos + 5]
    address = records.get(".".join(labels))
    if address is None:
        return struct.pack("!6H", ident, 0x8580 | NXDOMAIN, 1, 0, 0, 0) + question
    if qtype != 1:  # the name exists, but has only an A record
        return struct.pack("!6H", ident, 0x8580, 1, 0, 0, 0) + question
    record = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 1, 4) + socket.inet_aton(address)
    return struct.pack("!6H", ident, 0x8580, 1, 1, 0, 0) + question + record


def main() -> None:
    host, port = sys.argv[1].rsplit(":", 1)
    records_file = Path(sys.argv[2])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, int(port)))
    while True:
        query, peer = sock.recvfrom(512)
        try:
            sock.sendto(answer(query, json.loads(records_file.read_text())), peer)
        except (IndexError, struct.error, ValueError):
            continue


if __name__ == "__main__":
    main()
