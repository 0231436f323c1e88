"""A real S3 API on loopback for the tests: moto's server, plus a TCP proxy in front of it
that counts the bytes sent to clients and injects transient faults (503 SlowDown, dropped
connections). Never AWS, never a mocked client.

Its fixtures (``moto_s3``, ``s3_env``, ``s3_proxy``) reach every test through conftest.py's ``pytest_plugins``.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REGION = "us-east-1"
CREDS = {"AWS_ACCESS_KEY_ID": "testing-key", "AWS_SECRET_ACCESS_KEY": "testing-secret-do-not-log"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class MotoS3:
    endpoint: str
    env: dict  # AWS_* for a subprocess or monkeypatch: endpoint, region, credentials

    def client(self, endpoint: str | None = None):
        import boto3

        return boto3.client("s3", endpoint_url=endpoint or self.endpoint, region_name=REGION,
                            aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"])

    def bucket(self, name: str) -> str:
        c = self.client()
        try:
            c.create_bucket(Bucket=name)
        except c.exceptions.BucketAlreadyOwnedByYou:
            pass
        return name

    def deny_reads(self, bucket: str) -> None:
        """A bucket policy that denies every principal reading objects: AccessDenied (403)."""
        policy = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Deny", "Principal": "*", "Action": ["s3:GetObject", "s3:HeadObject"],
            "Resource": f"arn:aws:s3:::{bucket}/*",
        }]}
        self.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))

    def put_many(self, bucket: str, objects: dict[str, bytes]) -> None:
        """Many small objects at once, straight into the in-process server's backend (10,000 in
        well under a second; a PUT each through the API takes minutes on 2 vCPUs)."""
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        for key, body in objects.items():
            backend.put_object(bucket, key, body)

    def put(self, bucket: str, key: str, path_or_bytes, public: bool = False) -> str:
        body = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
        extra = {"ACL": "public-read"} if public else {}
        self.client().put_object(Bucket=bucket, Key=key, Body=body, **extra)
        return f"s3://{bucket}/{key}"


@pytest.fixture(scope="session")
def moto_s3():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_REGION": REGION, **CREDS}
    try:
        yield MotoS3(endpoint, env)
    finally:
        server.stop()


@pytest.fixture
def s3_env(moto_s3, monkeypatch):
    """This process's environment pointed at moto (and at nothing else: no profile, no config)."""
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    for k, v in moto_s3.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    return moto_s3


_SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>proxy</RequestId></Error>"
)


@dataclass
class Fault:
    match: str  # substring of the request line, e.g. "/videos/" or "HEAD "
    mode: str  # "503": a SlowDown reply; "drop": close the connection without a reply


@dataclass
class S3Proxy:
    """127.0.0.1 TCP proxy to moto. Counts response bytes; the first requests on a fresh
    connection that match a queued Fault get that fault instead of moto."""

    target: tuple[str, int]
    endpoint: str = ""
    bytes_down: int = 0
    request_lines: list = field(default_factory=list)
    ranges: list = field(default_factory=list)  # each request's Range header ('' if none), as request_lines
    injected: list = field(default_factory=list)
    _faults: list = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, n: int, match: str = "", mode: str = "503") -> None:
        with self._lock:
            self._faults += [Fault(match, mode) for _ in range(n)]

    def reset(self) -> None:
        with self._lock:
            self.bytes_down, self._faults = 0, []
            self.request_lines.clear()
            self.ranges.clear()
            self.injected.clear()

    @property
    def pending_faults(self) -> int:
        return len(self._faults)

    def start(self) -> S3Proxy:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        head = b""
        try:
            while b"\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    conn.close()
                    return
                head += chunk
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            rng = next((h.split(b":", 1)[1].strip().decode("latin-1") for h in head.split(b"\r\n")[1:]
                        if h.lower().startswith(b"range:")), "")
            with self._lock:
                self.request_lines.append(line)
                self.ranges.append(rng)
                fault = next((f for f in self._faults if f.match in line), None)
                if fault:
                    self._faults.remove(fault)
                    self.injected.append((fault.mode, line))
            if fault:
                if fault.mode == "503":  # as S3 does: an XML body, except for HEAD
                    body = b"" if line.startswith("HEAD ") else _SLOWDOWN
                    conn.sendall(
                        b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_SLOWDOWN), body)
                    )
                conn.close()
                return
            up = socket.create_connection(self.target)
        except OSError:
            conn.close()
            return
        up.sendall(head)
        threading.Thread(target=self._pipe, args=(conn, up, False), daemon=True).start()
        self._pipe(up, conn, True)

    def _pipe(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if count:
                    with self._lock:
                        self.bytes_down += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


@pytest.fixture(scope="session")
def _proxy_server(moto_s3):
    host, port = moto_s3.endpoint.rsplit("/", 1)[1].split(":")
    proxy = S3Proxy((host, int(port))).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def s3_proxy(_proxy_server):
    """The proxy, emptied of counts and queued faults for this test."""
    _proxy_server.reset()
    yield _proxy_server
    _proxy_server.reset()
