"""Static network settings of an environment: parsed, checked and handed to the guest.

Data centres often have no DHCP server, so an environment may carry its addresses::

    [env.prod]
    network = { address = "10.0.0.5/24", gateway = "10.0.0.1", dns = ["10.0.0.2"] }

or, for a machine with several network cards, one table per card chosen by its MAC address::

    network = [ { mac = "52:54:00:12:34:56", address = "10.0.0.5/24" },
                { mac = "52:54:00:12:34:57", address = "192.168.1.5/24" } ]

Everything is checked here, at config time: a malformed address is a ConfigError (exit 2), never
a guest that boots without a network. The guest receives each setting as one line of the
environment file (config drive, ``flash --env`` partition, ``serve --env`` layer, EC2 user-data),
``IMAGEBUILDER_NET_<n>=mac=... address=... gateway=... dns=a,b``: the values are addresses only
(no spaces, no shell syntax), so the init splits them with plain word splitting.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

#: The variable-name prefix of the network lines in the environment file.
VAR_PREFIX = "IMAGEBUILDER_NET_"
#: What ``mac`` stands for when a setting applies to the one card with a link.
ANY_MAC = "any"
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_KEYS = ("mac", "address", "gateway", "dns")
_LINE_RE = re.compile(
    r"^mac=(any|[0-9a-f:]{17}) address=[0-9./]+( gateway=[0-9.]+)?( dns=[0-9.,]+)?$"
)

Fail = Callable[[str, str], Exception]


@dataclass(frozen=True)
class StaticNetwork:
    """One card's static IPv4 settings."""

    address: str  # "10.0.0.5/24"
    gateway: str | None = None
    dns: tuple[str, ...] = ()
    mac: str = ANY_MAC  # lower-case "52:54:00:12:34:56", or "any"

    def env_value(self) -> str:
        """The value of its ``IMAGEBUILDER_NET_<n>`` line."""
        parts = [f"mac={self.mac}", f"address={self.address}"]
        if self.gateway:
            parts.append(f"gateway={self.gateway}")
        if self.dns:
            parts.append(f"dns={','.join(self.dns)}")
        return " ".join(parts)


def env_vars(settings: Sequence[StaticNetwork]) -> dict[str, str]:
    """The environment-file entries for ``settings`` (``IMAGEBUILDER_NET_1`` ...)."""
    return {f"{VAR_PREFIX}{i}": s.env_value() for i, s in enumerate(settings, 1)}


def is_network_var(name: str) -> bool:
    return name.startswith(VAR_PREFIX) and name[len(VAR_PREFIX):].isdigit()


def check_env_value(value: str) -> str | None:
    """What is wrong with an ``IMAGEBUILDER_NET_<n>`` value (None if nothing)."""
    if not _LINE_RE.match(value):
        return f"expected 'mac=... address=A/N [gateway=G] [dns=D,...]', got {value!r}"
    return None


def parse(value: object, key: str, fail: Fail) -> tuple[StaticNetwork, ...]:
    """``[env.NAME] network``: one table, or a list of tables each with a ``mac``."""
    if isinstance(value, dict):
        return (_one(value, key, fail, need_mac=False),)
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        several = len(value) > 1
        settings = tuple(_one(v, f"{key}[{i}]", fail, need_mac=several)
                         for i, v in enumerate(value))
        macs = [s.mac for s in settings]
        dupes = sorted({m for m in macs if macs.count(m) > 1})
        if dupes:
            raise fail(key, f"MAC address {dupes[0]} is given more than once")
        return settings
    raise fail(key, 'expected a table like { address = "10.0.0.5/24", gateway = "10.0.0.1",'
                    ' dns = ["10.0.0.2"] } or a list of them, each with a mac')


def _one(table: dict[str, Any], key: str, fail: Fail, *, need_mac: bool) -> StaticNetwork:
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        raise fail(f"{key}.{unknown[0]}", f"unknown key (known: {', '.join(_KEYS)})")
    if "address" not in table:
        raise fail(f"{key}.address", 'required: the card\'s address and prefix, e.g. "10.0.0.5/24"')
    raw = table["address"]
    try:
        if not isinstance(raw, str) or "/" not in raw:
            raise ValueError
        interface = ipaddress.IPv4Interface(raw)
    except ValueError:
        raise fail(f"{key}.address",
                   f'expected an IPv4 address with its prefix length like "10.0.0.5/24", got'
                   f" {_show(raw)}") from None
    network = interface.network
    if network.prefixlen == 0:
        raise fail(f"{key}.address", f"{raw}: a /0 network makes every address a neighbour (no"
                                     " gateway is ever used): give the subnet's prefix, e.g. /24")
    _check_unicast(interface.ip, f"{key}.address", fail)
    if network.prefixlen < 31 and interface.ip in (network.network_address,
                                                    network.broadcast_address):
        raise fail(f"{key}.address", f"{raw} is the network's own or broadcast address, not a"
                                     " host's")
    gateway = table.get("gateway")
    gw = None
    if gateway is not None:
        gw = _check_unicast(_ip(gateway, f"{key}.gateway", fail), f"{key}.gateway", fail)
        if gw not in network:
            raise fail(f"{key}.gateway", f"{gateway} is not in the card's network {network}")
        if gw == interface.ip:
            raise fail(f"{key}.gateway", f"{gateway} is the card's own address")
    dns = table.get("dns", [])
    if not isinstance(dns, list):
        raise fail(f"{key}.dns", f'expected a list of IPv4 addresses like ["10.0.0.2"], got'
                                 f" {_show(dns)}")
    if len(dns) > MAX_DNS:
        raise fail(f"{key}.dns", f"{len(dns)} servers given; the guest's resolver (glibc) asks at"
                                 f" most {MAX_DNS}")
    servers = tuple(str(_check_unicast(_ip(d, f"{key}.dns[{i}]", fail), f"{key}.dns[{i}]", fail))
                    for i, d in enumerate(dns))
    mac = table.get("mac")
    if mac is None:
        if need_mac:
            raise fail(f"{key}.mac", "required when several cards are configured: the card's MAC"
                                     ' address, e.g. "52:54:00:12:34:56"')
        mac = ANY_MAC
    elif not (isinstance(mac, str) and MAC_RE.match(mac.lower().replace("-", ":"))):
        raise fail(f"{key}.mac", f'expected a MAC address like "52:54:00:12:34:56", got'
                                 f" {_show(mac)}")
    else:
        mac = mac.lower().replace("-", ":")
    return StaticNetwork(address=str(interface), gateway=None if gw is None else str(gw),
                         dns=servers, mac=mac)


def _ip(value: object, key: str, fail: Fail) -> ipaddress.IPv4Address:
    try:
        if not isinstance(value, str):
            raise ValueError
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise fail(key, f'expected an IPv4 address like "10.0.0.1", got {_show(value)}') from None


#: What an address of a card, a gateway or a DNS server cannot be, and why, in the order checked.
_NOT_UNICAST = (
    (ipaddress.IPv4Network("0.0.0.0/8"), "is in 0.0.0.0/8 (\"this network\"), never a host's"),
    (ipaddress.IPv4Network("127.0.0.0/8"), "is a loopback address (127.0.0.0/8): it never leaves"
                                           " the machine"),
    (ipaddress.IPv4Network("224.0.0.0/4"), "is a multicast address (224.0.0.0/4), never a host's"),
    (ipaddress.IPv4Network("240.0.0.0/4"), "is reserved (240.0.0.0/4, with the broadcast"
                                           " address 255.255.255.255), never a host's"),
)
#: glibc's MAXNS: the resolver asks the first three nameservers of resolv.conf only.
MAX_DNS = 3


def _check_unicast(ip: ipaddress.IPv4Address, key: str, fail: Fail) -> ipaddress.IPv4Address:
    """``ip`` if a host on a network can have it."""
    for network, why in _NOT_UNICAST:
        if ip in network:
            raise fail(key, f"{ip} {why}")
    return ip


def _show(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)
