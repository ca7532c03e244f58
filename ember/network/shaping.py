"""Bandwidth shaping with tc over netlink: HTB on the TAP (download) and on an IFB (upload).

Download (host -> guest) leaves the host through the TAP's egress: an HTB root
with one class at the rate shapes it (packets wait in the queue; nothing is
dropped while the queue has room). Upload (guest -> host) *enters* the host on
the TAP, and Linux can only shape egress: an ingress qdisc on the TAP redirects
every frame (u32 match-all + mirred) to the egress of a per-guest IFB device,
which carries the same HTB. Policing the ingress instead would drop packets
above the rate, which TCP answers with sawtooth throughput well under it.
"""

from __future__ import annotations

from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from ember.network import links

ROOT = 0x10000  # 1:
CLASS = 0x10001  # 1:1
INGRESS = 0xFFFF0000  # ffff:
ETH_P_ALL = 0x0003
_ENOENT = 2
_EINVAL = 22
MIN_BURST = 16 * 1024  # >= a few full frames (and GSO segments are up to 64 KiB)


def burst_for(rate: int) -> int:
    """Bucket size: 10 ms worth of the rate, at least MIN_BURST (timer granularity)."""
    return max(rate // 100, MIN_BURST)


def _htb_rate(ipr: Any, index: int) -> int | None:
    """The rate (bytes/s) of our HTB class 1:1 on this device, None if there is none."""
    for cls in ipr.get_classes(index=index):
        if cls["handle"] != CLASS or cls.get("TCA_KIND") != "htb":
            continue
        options = cls.get("TCA_OPTIONS")
        rate64 = options.get("TCA_HTB_RATE64") if options else None
        parms = options.get("TCA_HTB_PARMS") if options else None
        if rate64:
            return int(rate64)
        if parms:
            return int(parms["rate"])
    return None


def _root_kind(ipr: Any, index: int) -> str | None:
    for qdisc in ipr.get_qdiscs(index=index):
        if qdisc["parent"] == 0xFFFFFFFF:  # TC_H_ROOT
            return str(qdisc.get("TCA_KIND"))
    return None


def _delete_root(ipr: Any, index: int) -> None:
    try:
        ipr.tc("del", index=index, handle=ROOT, root=True)
    except NetlinkError as exc:
        if exc.code not in (_ENOENT, _EINVAL):  # nothing of ours there
            raise


def set_egress_rate(ipr: Any, index: int, rate: int | None) -> None:
    """Shape the device's egress to ``rate`` bytes/s (None: remove our shaping)."""
    if rate is None:
        if _root_kind(ipr, index) == "htb":
            _delete_root(ipr, index)
        return
    if _htb_rate(ipr, index) == rate and _root_kind(ipr, index) == "htb":
        return  # already so: leave the queue alone (an adopted VM keeps its traffic)
    if _root_kind(ipr, index) == "htb":
        _delete_root(ipr, index)
    ipr.tc("add", "htb", index, ROOT, default=CLASS & 0xFFFF)
    burst = burst_for(rate)
    ipr.tc("add-class", "htb", index, CLASS, parent=ROOT, rate=rate, ceil=rate,
           burst=burst, cburst=burst)  # fmt: skip


def _has_ingress(ipr: Any, index: int) -> bool:
    return any(q.get("TCA_KIND") == "ingress" for q in ipr.get_qdiscs(index=index))


def _redirect_target(ipr: Any, index: int) -> int | None:
    """The ifindex our ingress filter redirects to, if the filter is there."""
    for flt in ipr.get_filters(index=index, parent=INGRESS):
        options = flt.get("TCA_OPTIONS")
        acts = options.get("TCA_U32_ACT") if options else None
        if not acts:
            continue
        for act in acts.get("attrs", []):
            act_options = act[1].get("TCA_ACT_OPTIONS")
            parms = act_options.get("TCA_MIRRED_PARMS") if act_options else None
            if parms:
                return int(parms["ifindex"])
    return None


def redirect_ingress(ipr: Any, index: int, target: int) -> None:
    """Send every frame entering ``index`` to the egress of ``target`` (an IFB)."""
    if _has_ingress(ipr, index) and _redirect_target(ipr, index) == target:
        return
    remove_ingress(ipr, index)
    ipr.tc("add", "ingress", index, INGRESS)
    ipr.tc(
        "add-filter", "u32", index, parent=INGRESS, prio=1, protocol=ETH_P_ALL,
        target=CLASS, keys=["0x0/0x0+0"],
        action={"kind": "mirred", "direction": "egress", "action": "redirect",
                "ifindex": target},
    )  # fmt: skip


def remove_ingress(ipr: Any, index: int) -> None:
    if _has_ingress(ipr, index):
        ipr.tc("del", "ingress", index, INGRESS)


def apply(tap: str, ifb: str, download: int | None, upload: int | None) -> None:
    """Bring the TAP's shaping to the given limits (bytes/s; None: unlimited)."""
    with links.netlink() as ipr:
        tap_index = links.index_of(ipr, tap)
        if tap_index is None:
            raise LookupError(tap)
        set_egress_rate(ipr, tap_index, download)
    if upload is None:
        with links.netlink() as ipr:
            remove_ingress(ipr, tap_index)
        links.delete_link(ifb)
        return
    ifb_index = links.ensure_ifb(ifb)
    with links.netlink() as ipr:
        set_egress_rate(ipr, ifb_index, upload)
        redirect_ingress(ipr, tap_index, ifb_index)


def describe(name: str) -> dict[str, object]:
    """What shaping a device has (for tests and diagnostics)."""
    with links.netlink() as ipr:
        index = links.index_of(ipr, name)
        if index is None:
            return {}
        return {
            "root": _root_kind(ipr, index),
            "rate": _htb_rate(ipr, index),
            "ingress": _has_ingress(ipr, index),
            "redirect": _redirect_target(ipr, index),
        }
