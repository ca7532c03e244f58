"""Ember's own nftables table: NAT for the guests and the forwarding policy of the bridge.

Everything lives in one table (``inet <name>``) that only Ember writes: it is
replaced as a whole in one ``nft -f -`` transaction (so it is never seen half
built) and deleted as a whole by uninstall. Nobody else's tables, chains or rules
are read, flushed or reordered.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess

from ember.errors import Unavailable

NFT = "nft"


def _run(args: list[str], script: str | None = None) -> str:
    if shutil.which(NFT) is None:
        raise Unavailable("network: the nft command is missing (install Debian's nftables)")
    proc = subprocess.run([NFT, *args], input=script, capture_output=True, text=True)
    if proc.returncode != 0:
        raise Unavailable(f"network: nft {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def ruleset(table: str, subnet: ipaddress.IPv4Network, bridge: str, isolation: bool) -> str:
    """The table's whole definition, preceded by its own removal (atomic replace)."""
    isolate = (
        f'        iifname "{bridge}" oifname "{bridge}" drop comment "no routing between guests"\n'
        if isolation
        else ""
    )
    return f"""table inet {table}
delete table inet {table}
table inet {table} {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {subnet} ip daddr != {subnet} masquerade comment "guests reach out as the host"
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
{isolate}        iifname "{bridge}" accept comment "guests' outbound traffic"
        oifname "{bridge}" ct state established,related accept comment "its replies"
        oifname "{bridge}" drop comment "nothing else may be routed to a guest"
    }}
}}
"""


def ensure(table: str, subnet: ipaddress.IPv4Network, bridge: str, isolation: bool) -> None:
    _run(["-f", "-"], ruleset(table, subnet, bridge, isolation))


def exists(table: str, family: str = "inet") -> bool:
    listing = json.loads(_run(["-j", "list", "tables", family]))
    return any(item.get("table", {}).get("name") == table for item in listing.get("nftables", []))


def delete(table: str, family: str = "inet") -> bool:
    if not exists(table, family):
        return False
    _run(["delete", "table", family, table])
    return True
