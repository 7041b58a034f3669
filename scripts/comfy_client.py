"""A small ComfyUI HTTP + WebSocket client using only the Python standard library.

Used by the example headless client (``scripts/headless.py``), the demo and the test suite's host fixture.

    client = ComfyClient("http://127.0.0.1:8188")
    result = client.run(api_prompt, timeout=600, on_event=print_progress)
    video_bytes = client.view(**result.files()[0])
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import ssl
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ComfyClient", "PromptRejected", "RunResult", "WebSocket", "ws_endpoint"]

log = logging.getLogger("mochi.comfy_client")


class PromptRejected(RuntimeError):
    """POST /prompt refused the prompt (HTTP 400: no output node passed validation): ``body`` holds ``error`` and
    ``node_errors``. An HTTP 200 answer is never a rejection, even with ``node_errors``: ComfyUI then queued the
    outputs that passed and dropped the others (see :attr:`ComfyClient.last_node_errors`)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"prompt rejected ({status}): {json.dumps(body)[:2000]}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class WsEndpoint:
    """Where a ``ws://`` / ``wss://`` URL connects: ``host``, ``port``, ``tls``, the ``Host`` header, the request path."""

    host: str
    port: int
    tls: bool
    host_header: str
    path: str


def ws_endpoint(url: str) -> WsEndpoint:
    """Parse a WebSocket URL (``http(s)://`` accepted as ``ws(s)://``). Default ports 80 / 443; the ``Host`` header
    carries the port when it is not the scheme's default (RFC 6455 4.1, RFC 7230 5.4), IPv6 hosts in brackets."""
    u = urllib.parse.urlsplit(url)
    scheme = u.scheme.lower()
    if scheme not in ("ws", "wss", "http", "https"):
        raise ValueError(f"websocket URL must start with ws://, wss://, http:// or https://, got {url!r}")
    tls = scheme in ("wss", "https")
    default = 443 if tls else 80
    host = u.hostname or "127.0.0.1"
    port = u.port or default
    shown = f"[{host}]" if ":" in host else host
    header = shown if port == default else f"{shown}:{port}"
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    return WsEndpoint(host=host, port=port, tls=tls, host_header=header, path=path)


class WebSocket:
    """Minimal RFC 6455 client (``ws://`` and ``wss://``): text and binary frames, ping/pong, close. Enough for
    ComfyUI's /ws."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        end = ws_endpoint(url)
        sock = socket.create_connection((end.host, end.port), timeout=timeout)
        if end.tls:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=end.host)
        self.sock = sock
        key = base64.b64encode(os.urandom(16)).decode()
        req = (
            f"GET {end.path} HTTP/1.1\r\nHost: {end.host_header}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("websocket handshake: connection closed")
            head += chunk
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            raise ConnectionError(f"websocket handshake failed: {status.decode(errors='replace')}")

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("websocket closed")
            buf += chunk
        return buf

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def recv(self, timeout: float | None = None) -> str | bytes:
        """Next complete message: ``str`` for text frames, ``bytes`` for binary ones."""
        self.sock.settimeout(timeout)
        parts: list[bytes] = []
        first_opcode = None
        while True:
            b0, b1 = self._recv_exact(2)
            fin, opcode = b0 & 0x80, b0 & 0x0F
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._recv_exact(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._recv_exact(8))
            mask = self._recv_exact(4) if b1 & 0x80 else None
            data = self._recv_exact(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            if opcode == 0x9:
                self._send(0xA, data)
                continue
            if opcode == 0xA:
                continue
            if opcode == 0x8:
                raise ConnectionError("websocket closed by server")
            if first_opcode is None:
                first_opcode = opcode
            parts.append(data)
            if fin:
                payload = b"".join(parts)
                return payload.decode() if first_opcode == 0x1 else payload

    def close(self) -> None:
        try:
            self._send(0x8, b"")
        except OSError:
            pass
        self.sock.close()


@dataclass
class RunResult:
    """Outcome of one queued prompt, as seen on /ws and in /history."""

    prompt_id: str
    status: str  # "success" | "error" | "interrupted"
    events: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    #: nodes ComfyUI refused while queueing the rest (their outputs were dropped); empty normally
    node_errors: dict[str, Any] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)
    previews: int = 0

    def outputs(self) -> dict[str, Any]:
        return self.history.get("outputs", {})

    def files(self) -> list[dict[str, str]]:
        """Every file an output node reported (images, gifs, videos...), as /view query fields."""
        found = []
        for node_out in self.outputs().values():
            for items in node_out.values():
                if not isinstance(items, list):
                    continue
                for item in items:
                    if isinstance(item, dict) and "filename" in item:
                        found.append(
                            {
                                "filename": item["filename"],
                                "subfolder": item.get("subfolder", ""),
                                "type": item.get("type", "output"),
                            }
                        )
        return found

    def progress(self) -> list[tuple[int, int]]:
        return [(e["data"]["value"], e["data"]["max"]) for e in self.events if e.get("type") == "progress"]


class ComfyClient:
    """Talks to one ComfyUI server: queue API-format prompts, follow /ws, read /history, fetch /view, interrupt."""

    def __init__(self, base_url: str = "http://127.0.0.1:8188", client_id: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id or uuid.uuid4().hex
        #: ``node_errors`` of the last accepted prompt: outputs ComfyUI dropped while running the others
        self.last_node_errors: dict[str, Any] = {}

    # -- plain HTTP -------------------------------------------------------------------------
    def _request(self, method: str, path: str, data: Any = None, timeout: float = 60.0) -> tuple[int, bytes]:
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.base_url + path, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def get_json(self, path: str, timeout: float = 60.0) -> Any:
        status, raw = self._request("GET", path, timeout=timeout)
        if status != 200:
            raise RuntimeError(f"GET {path} -> {status}: {raw[:500]!r}")
        return json.loads(raw)

    def object_info(self) -> dict[str, Any]:
        return self.get_json("/object_info")

    def queue(self, prompt: dict[str, Any]) -> str:
        """POST /prompt; returns the prompt id, or raises :class:`PromptRejected` with ``node_errors``.

        ComfyUI answers 200 with ``prompt_id`` and ``node_errors`` (empty when every output node is valid) when it
        queued the prompt, and 400 with ``error`` and ``node_errors`` when no output node is valid. A 200 with
        non-empty ``node_errors`` means the valid outputs run and the others were dropped: logged as a warning and
        kept in :attr:`last_node_errors`.
        """
        status, raw = self._request("POST", "/prompt", {"prompt": prompt, "client_id": self.client_id})
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            body = {"error": raw[:2000].decode(errors="replace")}
        if status != 200 or "prompt_id" not in body:
            raise PromptRejected(status, body)
        self.last_node_errors = body.get("node_errors") or {}
        if self.last_node_errors:
            log.warning(
                "ComfyUI queued prompt %s without the outputs of these invalid nodes: %s",
                body["prompt_id"],
                json.dumps(self.last_node_errors)[:2000],
            )
        return body["prompt_id"]

    def history(self, prompt_id: str) -> dict[str, Any]:
        return self.get_json(f"/history/{prompt_id}").get(prompt_id, {})

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        q = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": type})
        status, raw = self._request("GET", f"/view?{q}", timeout=120)
        if status != 200:
            raise RuntimeError(f"/view {filename} -> {status}")
        return raw

    def interrupt(self) -> None:
        self._request("POST", "/interrupt", {})

    def websocket(self) -> WebSocket:
        """The server's ``/ws`` for this client id (``wss://`` when the server URL is ``https://``)."""
        return WebSocket(self.base_url + f"/ws?clientId={self.client_id}")

    # -- one prompt, followed to the end ----------------------------------------------------
    def run(
        self,
        prompt: dict[str, Any],
        *,
        timeout: float = 600.0,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> RunResult:
        """Queue ``prompt`` and follow /ws until it succeeds, fails or is interrupted (or ``timeout``)."""
        ws = self.websocket()
        try:
            prompt_id = self.queue(prompt)
            result = RunResult(prompt_id=prompt_id, status="running", node_errors=self.last_node_errors)
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")
                try:
                    msg = ws.recv(timeout=min(left, 30.0))
                except TimeoutError:
                    continue
                if isinstance(msg, bytes):
                    result.previews += 1
                    continue
                event = json.loads(msg)
                data = event.get("data") or {}
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                result.events.append(event)
                if on_event is not None:
                    on_event(event)
                kind = event.get("type")
                if kind == "execution_success":
                    result.status = "success"
                    break
                if kind == "execution_error":
                    result.status, result.error = "error", data
                    break
                if kind == "execution_interrupted":
                    result.status = "interrupted"
                    break
        finally:
            ws.close()
        for _ in range(50):
            result.history = self.history(prompt_id)
            if result.history:
                break
            time.sleep(0.1)
        return result
