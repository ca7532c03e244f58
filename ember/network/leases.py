"""Leases: one IP, MAC and TAP name per instance, kept in the store's `network_leases`."""

from __future__ import annotations

import ipaddress
import secrets
import sqlite3
from dataclasses import dataclass

from ember.errors import Conflict, Unavailable
from ember.store import Store

_COLUMNS = "instance_id, name, ip, mac, tap, download_rate, upload_rate"
TAP_PREFIX = "tap-"  # + 11 id characters: IFNAMSIZ is 15
IFB_PREFIX = "ifb-"
_SHORT_ID = 11


@dataclass(frozen=True, slots=True)
class Lease:
    instance_id: str
    name: str  # the instance's name: its DNS name is <name>.<domain>
    ip: str
    mac: str
    tap: str
    download_rate: int | None = None  # bytes per second toward the guest; None: unlimited
    upload_rate: int | None = None  # bytes per second from the guest; None: unlimited

    @property
    def ifb(self) -> str:
        """The IFB device that shapes this guest's upload (same suffix as the TAP)."""
        return IFB_PREFIX + self.tap.removeprefix(TAP_PREFIX)


def _row(row: sqlite3.Row) -> Lease:
    return Lease(**{key: row[key] for key in row.keys()})  # noqa: SIM118 (Row is not a dict)


def random_mac() -> str:
    """A locally administered unicast MAC (02:...): never clashes with a vendor's."""
    return "02:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))


class LeaseTable:
    """Allocation and lookup of leases; every write is one IMMEDIATE transaction."""

    def __init__(self, store: Store, subnet: ipaddress.IPv4Network, gateway: str) -> None:
        self.store, self.subnet, self.gateway = store, subnet, gateway

    def get(self, instance_id: str) -> Lease | None:
        rows = self.store.query(
            f"SELECT {_COLUMNS} FROM network_leases WHERE instance_id = ?", (instance_id,)
        )
        return _row(rows[0]) if rows else None

    def by_name(self, name: str) -> Lease | None:
        """The newest lease of an instance named ``name`` (names are unique per instance)."""
        rows = self.store.query(
            f"SELECT {_COLUMNS} FROM network_leases WHERE name = ? "
            "ORDER BY created_at DESC LIMIT 1",
            (name,),
        )
        return _row(rows[0]) if rows else None

    def all(self) -> list[Lease]:
        return [
            _row(r) for r in self.store.query(f"SELECT {_COLUMNS} FROM network_leases ORDER BY ip")
        ]

    def allocate(
        self, instance_id: str, name: str, download_rate: int | None, upload_rate: int | None
    ) -> Lease:
        """The instance's lease, created with the lowest free address if it has none.

        An existing lease keeps its address and MAC (a retried create, or a start
        after a stop); its name and limits are brought up to date.
        """
        with self.store.transaction() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM network_leases WHERE instance_id = ?", (instance_id,)
            ).fetchone()
            if row is not None:
                conn.execute(
                    "UPDATE network_leases SET name = ?, download_rate = ?, upload_rate = ? "
                    "WHERE instance_id = ?",
                    (name, download_rate, upload_rate, instance_id),
                )
                return Lease(**(dict(row) | {"name": name, "download_rate": download_rate,
                                             "upload_rate": upload_rate}))  # fmt: skip
            lease = Lease(
                instance_id=instance_id,
                name=name,
                ip=self._lowest_free(conn),
                mac=self._fresh(conn, "mac", random_mac),
                tap=self._fresh(conn, "tap", lambda: TAP_PREFIX + instance_id[:_SHORT_ID]),
                download_rate=download_rate,
                upload_rate=upload_rate,
            )
            conn.execute(
                f"INSERT INTO network_leases ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (lease.instance_id, lease.name, lease.ip, lease.mac, lease.tap,
                 lease.download_rate, lease.upload_rate),
            )  # fmt: skip
        return lease

    def delete(self, instance_id: str) -> bool:
        with self.store.transaction() as conn:
            cur = conn.execute("DELETE FROM network_leases WHERE instance_id = ?", (instance_id,))
        return cur.rowcount > 0

    def _lowest_free(self, conn: sqlite3.Connection) -> str:
        taken = {
            int(ipaddress.IPv4Address(r[0])) for r in conn.execute("SELECT ip FROM network_leases")
        }
        taken.add(int(ipaddress.IPv4Address(self.gateway)))
        first = int(self.subnet.network_address) + 1
        last = int(self.subnet.broadcast_address) - 1
        # Leases are few (one per instance): a linear walk from the bottom is plenty.
        for candidate in range(first, last + 1):
            if candidate not in taken:
                return str(ipaddress.IPv4Address(candidate))
        raise Unavailable(f"network: no free address left in {self.subnet}")

    def _fresh(self, conn: sqlite3.Connection, column: str, make: object) -> str:
        """A value of ``column`` no lease has yet (MACs are random, TAP names id-derived)."""
        assert callable(make)
        for attempt in range(16):
            value = str(make())
            if column == "tap" and attempt:  # the id prefix clashed: add randomness
                value = value[:-4] + secrets.token_hex(2)
            sql = f"SELECT 1 FROM network_leases WHERE {column} = ?"
            if conn.execute(sql, (value,)).fetchone() is None:
                return value
        raise Conflict(f"network: could not find a free {column}")
