"""scripts/comfy_client.py without a ComfyUI: WebSocket endpoint parsing, the handshake it sends over a real socket,
and TLS for ``wss://`` / ``https://``. (Queueing against the real ComfyUI is covered by tests/host.)"""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from comfy_client import ComfyClient, WebSocket, ws_endpoint  # noqa: E402


@pytest.mark.parametrize(
    ("url", "host", "port", "tls", "header", "path"),
    [
        ("ws://127.0.0.1:8188/ws?clientId=a", "127.0.0.1", 8188, False, "127.0.0.1:8188", "/ws?clientId=a"),
        ("http://example.org/ws", "example.org", 80, False, "example.org", "/ws"),
        ("ws://example.org:80/ws", "example.org", 80, False, "example.org", "/ws"),
        ("https://comfy.example.org/prefix/ws", "comfy.example.org", 443, True, "comfy.example.org", "/prefix/ws"),
        ("wss://comfy.example.org:8443/ws", "comfy.example.org", 8443, True, "comfy.example.org:8443", "/ws"),
        ("ws://[::1]:8188/ws", "::1", 8188, False, "[::1]:8188", "/ws"),
    ],
)
def test_ws_endpoint(url: str, host: str, port: int, tls: bool, header: str, path: str) -> None:
    end = ws_endpoint(url)
    assert (end.host, end.port, end.tls, end.host_header, end.path) == (host, port, tls, header, path)


def test_ws_endpoint_refuses_other_schemes() -> None:
    with pytest.raises(ValueError, match="ws://, wss://"):
        ws_endpoint("ftp://example.org/ws")


class OneShotServer:
    """A TCP server on 127.0.0.1 that records the first bytes a client sends and answers ``reply``."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.received = b""
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(10)
            while b"\r\n\r\n" not in self.received:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                self.received += chunk
                if self.received[:1] == b"\x16":  # a TLS ClientHello, not HTTP
                    break
            if self.reply:
                conn.sendall(self.reply)

    def close(self) -> None:
        self.thread.join(timeout=10)
        self.sock.close()


def test_handshake_sends_host_with_port_and_reads_a_text_frame() -> None:
    server = OneShotServer(b"HTTP/1.1 101 Switching Protocols\r\n\r\n" + b"\x81\x05hello")
    try:
        client = ComfyClient(f"http://127.0.0.1:{server.port}", client_id="abc")
        ws = client.websocket()
        assert ws.recv(timeout=10) == "hello"
        ws.sock.close()
    finally:
        server.close()
    head = server.received.decode()
    assert head.startswith("GET /ws?clientId=abc HTTP/1.1\r\n")
    assert f"\r\nHost: 127.0.0.1:{server.port}\r\n" in head


def test_https_server_gets_a_tls_websocket() -> None:
    server = OneShotServer(b"")
    try:
        with pytest.raises(OSError):  # the stand-in server speaks no TLS: the handshake fails after the hello
            WebSocket(f"wss://127.0.0.1:{server.port}/ws", timeout=10)
    finally:
        server.close()
    assert server.received[:1] == b"\x16", server.received[:40]  # TLS record type 22 (handshake), not "GET"
