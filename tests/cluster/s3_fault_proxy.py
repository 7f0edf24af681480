"""A fault-injecting HTTP proxy for S3 on loopback: forwards requests to a real S3 server and,
for a seeded fraction of them, answers 503 SlowDown, drops the connection before forwarding,
or forwards and then drops the connection (the request took effect, the response is lost).

Test helper only. The Host header and body are forwarded untouched, so SigV4 signatures
computed for the proxy's address still verify upstream.
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

SLOWDOWN_XML = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                b"<Message>Please reduce your request rate.</Message><RequestId>fault-proxy</RequestId></Error>")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
FAULTS = ("slowdown", "drop_before", "drop_after")


class FaultProxy:
    """`with FaultProxy(upstream, fault_rate=0.2) as proxy:` -> proxy.endpoint, proxy.faults (Counter)."""

    def __init__(self, upstream: str, fault_rate: float = 0.2, seed: int = 0, faults=FAULTS,
                 max_faults: int | None = None):
        parsed = urlparse(upstream)
        self.upstream_host, self.upstream_port = parsed.hostname, parsed.port or 80
        self.fault_rate, self.fault_kinds, self.max_faults = fault_rate, tuple(faults), max_faults
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.faults: Counter = Counter()
        self.requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _drop(self):
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def _handle(self):
                body = self._body()
                fault = proxy._pick_fault()
                if fault == "slowdown":
                    self.send_response(503, "Slow Down")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOWDOWN_XML)))
                    self.end_headers()
                    self.wfile.write(SLOWDOWN_XML if self.command != "HEAD" else b"")
                    return
                if fault == "drop_before":
                    return self._drop()
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    payload = response.read()
                    if fault == "drop_after":  # the request took effect upstream; the client never hears
                        return self._drop()
                    self.send_response(response.status, response.reason)
                    for key, value in response.getheaders():
                        if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                            self.send_header(key, value)
                    # HEAD keeps the object's length (s3fs reads the size from it); others the payload's.
                    length = response.getheader("Content-Length", "0") if self.command == "HEAD" else len(payload)
                    self.send_header("Content-Length", str(length))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                finally:
                    upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _pick_fault(self) -> str | None:
        with self.lock:
            self.requests += 1
            if self.random.random() >= self.fault_rate:
                return None
            if self.max_faults is not None and sum(self.faults.values()) >= self.max_faults:
                return None
            fault = self.random.choice(self.fault_kinds)
            self.faults[fault] += 1
            return fault

    def start(self) -> "FaultProxy":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
