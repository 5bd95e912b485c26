"""A loopback Triton is never reached through a proxy: gRPC honours lowercase `http_proxy` for every target, so a
machine with a corporate proxy set would send the agent's engine streams and the gateway's calls to it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from function_calling_agent.grpc_channel import channel_args, is_loopback


@pytest.mark.parametrize("url", ["localhost:8001", "127.0.0.1:8001", "127.1.2.3:1", "[::1]:8001", "grpc://localhost:1"])
def test_loopback_urls_turn_the_proxy_off(url):
    assert is_loopback(url)
    assert ("grpc.enable_http_proxy", 0) in channel_args(url)


@pytest.mark.parametrize("url", ["triton:8001", "10.0.0.5:8001", "[2001:db8::1]:8001", "example.com:443"])
def test_other_urls_keep_tritonclients_defaults(url):
    assert not is_loopback(url)
    assert channel_args(url) is None


def test_a_dead_http_proxy_does_not_stop_a_loopback_connection():
    # A raw listener stands for the server: with the options the connection reaches it; gRPC's default goes to the
    # proxy (a refused port) instead. Run in a child so the proxy variable cannot leak into other tests.
    script = textwrap.dedent("""
        import socket, sys, grpc
        from function_calling_agent.grpc_channel import channel_args
        listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen(4); listener.settimeout(10)
        url = f"127.0.0.1:{listener.getsockname()[1]}"
        options = channel_args(url) if sys.argv[1] == "ours" else []
        channel = grpc.insecure_channel(url, options=options)
        channel.subscribe(lambda state: None, try_to_connect=True)
        try:
            listener.accept()
            print("reached")
        except socket.timeout:
            print("not reached")
    """)
    env = {**os.environ, "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "no_proxy": ""}
    results = {mode: subprocess.run([sys.executable, "-c", script, mode], env=env, capture_output=True, text=True,
                                    timeout=60).stdout.strip() for mode in ("ours", "default")}
    assert results == {"ours": "reached", "default": "not reached"}
