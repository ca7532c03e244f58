"""The egress tables: steer each mediated guest's TCP to the proxy and hold its other
traffic to the policy's addresses.

Two tables of our own, `inet <table>` and `bridge <table>`, rebuilt whole from
every mediated instance in one `nft -f -` transaction (never seen half built),
beside the network's `inet ember` (never touched from here):
- prerouting (nat): the guest's TCP to anything outside the guests' subnet is
  redirected to the proxy on the gateway (mode `all`), or only ports 80/443
  (`http_https_only`);
- input and forward (filter): what is not redirected (UDP, ICMP, other TCP) to a
  denied address is rejected (TCP reset, ICMP admin-prohibited: never a silent
  drop); with an allow list, every address outside its CIDRs is; UDP 443 (QUIC)
  is rejected so browsers and HTTP/3 clients fall back to TCP, where names are
  judged;
- bridge prerouting: a frame from the guest's TAP must carry the guest's own
  address, so no guest can wear another's policy.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from typing import Literal

from ember.egress.policy import CompiledPolicy, Network
from ember.errors import Unavailable

Mode = Literal["all", "http_https_only"]


@dataclass(frozen=True, slots=True)
class GuestRules:
    ip: str
    tap: str
    mode: Mode
    policy: CompiledPolicy


@dataclass(frozen=True, slots=True)
class Site:
    """Where the rules apply: the network's bridge, subnet and gateway, the proxy's port."""

    table: str
    bridge: str
    subnet: ipaddress.IPv4Network
    gateway: str
    proxy_port: int


def _set(networks: tuple[Network, ...]) -> str:
    return "{ " + ", ".join(str(n) for n in networks if n.version == 4) + " }"


def _v4(networks: tuple[Network, ...]) -> tuple[Network, ...]:
    return tuple(n for n in networks if n.version == 4)


def _chain(guest: GuestRules) -> str:
    name = _chain_name(guest)
    reject = ("meta l4proto tcp reject with tcp reset", "reject with icmpx admin-prohibited")
    rules = ['udp dport 443 reject with icmpx admin-prohibited comment "QUIC: use TCP"']
    deny = _v4(guest.policy.deny_networks)
    if deny:
        rules += [f"ip daddr {_set(deny)} {r}" for r in reject]
    if guest.policy.restricts:
        allow = _v4(guest.policy.allow_networks)
        match = f"ip daddr != {_set(allow)} " if allow else ""
        rules += [f"{match}{r}" for r in reject]
    body = "\n".join(f"        {rule}" for rule in rules)
    return f"    chain {name} {{\n{body}\n    }}\n"


def _chain_name(guest: GuestRules) -> str:
    return "guest_" + guest.ip.replace(".", "_")


def ruleset(site: Site, guests: list[GuestRules]) -> str:
    """Both tables' whole definitions, each preceded by its own removal."""
    redirect, jumps, chains, spoof = [], [], [], []
    for g in guests:
        src = f'iifname "{site.bridge}" ip saddr {g.ip}'
        ports = "meta l4proto tcp" if g.mode == "all" else "tcp dport { 80, 443 }"
        redirect.append(f"{src} ip daddr != {site.subnet} {ports} redirect to :{site.proxy_port}")
        jumps.append(f"{src} ip daddr != {site.gateway} jump {_chain_name(g)}")
        chains.append(_chain(g))
        spoof.append(f'iifname "{g.tap}" ether type ip ip saddr != {g.ip} drop')

    def lines(rules: list[str]) -> str:
        return "".join(f"        {rule}\n" for rule in rules)

    t = site.table
    return f"""table inet {t}
delete table inet {t}
table bridge {t}
delete table bridge {t}
table inet {t} {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
{lines(redirect)}    }}
    chain input {{
        type filter hook input priority filter; policy accept;
{lines(jumps)}    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
{lines(jumps)}    }}
{"".join(chains)}}}
table bridge {t} {{
    chain prerouting {{
        type filter hook prerouting priority filter; policy accept;
{lines(spoof)}    }}
}}
"""


def apply(script: str) -> None:
    if shutil.which("nft") is None:
        raise Unavailable("egress: the nft command is missing (install Debian's nftables)")
    proc = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True)
    if proc.returncode != 0:
        raise Unavailable(f"egress: nft failed: {proc.stderr.strip()}")
