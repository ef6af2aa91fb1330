"""Readiness checks (seed 000 §5.2): each returns (ok, detail) and never raises.

External ones are bounded by a short timeout and speak as little as possible: a TCP connect for an LLM
server (no tokens spent), the AMQP protocol header for RabbitMQ, a real login for PostgreSQL.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

from chenu_agents.providers import Chain, ScriptedProvider

AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


def rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def check_memory(limit_mb: int | None) -> tuple[bool, str]:
    try:
        rss = rss_bytes()
    except (OSError, ValueError, IndexError) as exc:
        return False, f"cannot read /proc/self/statm: {exc}"
    used = f"RSS {rss / 2**20:.1f} MiB"
    if limit_mb is None:
        return True, f"{used}, no limit set"
    return rss <= limit_mb * 2**20, f"{used} of {limit_mb} MiB"


def _endpoint(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"no host in {url!r}")
    port = parts.port or {"https": 443, "http": 80, "amqps": 5671}.get(parts.scheme, default_port)
    return parts.hostname, port


def check_tcp(host: str, port: int, timeout_s: float) -> tuple[bool, str]:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True, f"{host}:{port} accepts connections"
    except OSError as exc:
        return False, f"{host}:{port}: {exc}"


def check_llm(chain: Chain, timeout_s: float) -> tuple[bool, str]:
    """Reachable when at least one provider of the chain is: the chain falls back by itself."""
    details = []
    reachable = False
    for provider in chain.providers:
        if isinstance(provider, ScriptedProvider):
            ok, detail = True, f"loaded ({len(provider.rules)} rules)"
        else:
            base_url = getattr(provider, "base_url", "")
            try:
                ok, detail = check_tcp(*_endpoint(base_url, 443), timeout_s)
            except ValueError as exc:
                ok, detail = False, str(exc)
        reachable |= ok
        details.append(f"{provider.spec}: {'ok' if ok else 'unreachable'} ({detail})")
    return reachable, "; ".join(details)


def check_amqp(url: str, timeout_s: float) -> tuple[bool, str]:
    try:
        host, port = _endpoint(url, 5672)
    except ValueError as exc:
        return False, str(exc)
    if urlsplit(url).scheme == "amqps":
        return check_tcp(host, port, timeout_s)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            sock.sendall(AMQP_HEADER)
            frame = sock.recv(7)
    except OSError as exc:
        return False, f"{host}:{port}: {exc}"
    # A broker answers the header with a method frame (type 1) on channel 0: connection.start.
    if len(frame) == 7 and frame[0] == 1 and frame[1:3] == b"\x00\x00":
        return True, f"{host}:{port} speaks AMQP 0-9-1"
    return False, f"{host}:{port} answered {frame[:8]!r}, not an AMQP connection.start"


def check_database(dsn: str, timeout_s: float) -> tuple[bool, str]:
    try:
        import psycopg
    except ImportError:
        return False, "psycopg is not installed"
    try:
        with psycopg.connect(dsn, connect_timeout=max(1, round(timeout_s))) as conn:
            conn.execute("SELECT 1")
            info = conn.info
            return True, f"{info.host}:{info.port}/{info.dbname} answers"
    except Exception as exc:  # psycopg.Error, but also a malformed DSN (ProgrammingError): report, never raise
        return False, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
