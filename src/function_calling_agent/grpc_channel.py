"""gRPC channel options for tritonclient: a loopback Triton is never reached through a proxy.

gRPC honours `grpc_proxy` / `https_proxy` / `http_proxy` (lowercase) for every target, loopback included, unless
`no_proxy` names it. A machine or container with a corporate proxy set would send the agent's engine streams, the
gateway's calls and the CLI's local requests to that proxy. For a loopback URL (`localhost`, `127.x.y.z`, `::1`)
these options turn the proxy off; any other URL keeps tritonclient's defaults, proxy variables included.
"""

from __future__ import annotations

import ipaddress
from typing import Optional


def _host(url: str) -> str:
    url = url.split("://", 1)[-1]
    if url.startswith("["):
        return url[1:url.index("]")]
    return url.rsplit(":", 1)[0] if url.count(":") == 1 else url


def is_loopback(url: str) -> bool:
    """Whether `host:port` (or `[v6]:port`, optionally with a scheme) names this machine's loopback interface."""
    host = _host(url)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def channel_args(url: str) -> Optional[list]:
    """`channel_args` for `tritonclient.grpc[.aio].InferenceServerClient(url, channel_args=...)`: tritonclient's own
    defaults (unlimited message sizes, its keepalive settings) plus `grpc.enable_http_proxy=0` for a loopback URL;
    None (tritonclient's defaults unchanged) for any other."""
    if not is_loopback(url):
        return None
    from tritonclient.grpc._client import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

    keepalive = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.enable_http_proxy", 0),
    ]
