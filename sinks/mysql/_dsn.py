"""The Go MySQL DSN kube-eventer takes: ``[user[:password]@][net[(addr)]]/dbname[?param=value&...]``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from eventrouter import check_authority

ADDRESS = re.compile(r"@(?:(\w+)\(([^)]*)\))?/")
NO_USER = re.compile(r"^(?:(\w+)\(([^)]*)\))?/")


@dataclass(frozen=True)
class DSN:
    user: str
    password: str
    net: str  # tcp, tcp6 or unix
    address: str  # host:port or a socket path
    database: str
    params: str  # everything after the database: DSN parameters and sink options, '&'-separated


def parse_dsn(text: str) -> DSN:
    """Split a Go MySQL DSN. The password ends at the last ``@`` before ``net(addr)/`` (it may hold ``&``, ``?``)."""
    matches = list(ADDRESS.finditer(text))
    if matches:
        match = matches[-1]
        userinfo = text[: match.start()]
    else:
        match = NO_USER.match(text)  # type: ignore[assignment]
        if match is None:
            raise ValueError("expected user:password@tcp(host:port)/database")
        userinfo = ""
    user, _, password = userinfo.partition(":")
    net = match.group(1) or "tcp"
    address = match.group(2) or ""
    tail = text[match.end() :]
    split = re.search(r"[?&]", tail)
    database, params = (tail[: split.start()], tail[split.end() :]) if split else (tail, "")
    if net not in ("tcp", "tcp6", "unix"):
        raise ValueError(f"network {net!r} is not supported; use tcp(host:port) or unix(/path/to/socket)")
    if net == "unix" and not address:
        raise ValueError("unix() needs the socket path, for example unix(/run/mysqld/mysqld.sock)")
    if net != "unix" and address:
        problem = check_authority(address)  # the one host:port check every flag gets (exit 2, one line)
        if problem:
            raise ValueError(f"tcp({address}): {problem}")
    return DSN(user, password, net, address or "127.0.0.1:3306", database, params)


def split_host(address: str) -> tuple[str, int]:
    if address.startswith("["):
        host, _, port = address[1:].partition("]")
        port = port.lstrip(":")
    elif address.count(":") == 1:
        host, _, port = address.partition(":")
    else:
        host, port = address, ""
    if port and not port.isdigit():
        raise ValueError(f"port {port!r} is not a number")
    return host or "127.0.0.1", int(port or 3306)
