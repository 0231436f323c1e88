"""storage.allowed_protocols: a manifest row outside the list is never opened, on the driver's plan
or in a decode worker, and ends as an error row "ProtocolNotAllowed" (stage functions, no Ray)."""
from __future__ import annotations

import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import fsspec
import pyarrow as pa
import pytest

from r2p1d_batch import config as config_mod
from r2p1d_batch.config import ConfigError
from r2p1d_batch.decoding.stage import decode_video
from r2p1d_batch.runs.fingerprints import fingerprints
from r2p1d_batch.storage import allowed_mask, disallowed, protocols

from tests.helpers.videos import make_video


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server that serves one real video and records every request it gets."""
    video = make_video(tmp_path / "v.mp4", n_frames=20, fps=15, size=(64, 48)).read_bytes()
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, body: bool):
            seen.append(f"{self.command} {self.path}")
            self.send_response(200)
            self.send_header("Content-Length", str(len(video)))
            self.send_header("Content-Type", "video/mp4")
            self.end_headers()
            if body:
                self.wfile.write(video)

        def do_GET(self):  # noqa: N802 (http.server's names)
            self._reply(True)

        def do_HEAD(self):  # noqa: N802
            self._reply(False)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v.mp4", seen
    server.shutdown()


def _video_row(cfg, uri: str) -> dict:
    rows = list(decode_video({"video_id": "v", "uri": uri, "start_sec": None, "end_sec": None}, cfg))
    return rows[-1]


def test_protocols_of_plain_and_chained_urls():
    assert protocols("/data/a.mp4") == ["file"] and protocols("a.mp4") == ["file"]
    assert protocols("s3://b/k") == ["s3"] and protocols("https://h/x") == ["https"]
    assert protocols("simplecache::s3://b/k") == ["simplecache", "s3"]
    assert protocols("zip://a.mp4::s3://b/x.zip") == ["zip", "s3"]
    assert protocols("zip://a.mp4::/tmp/x.zip") == ["zip", "file"]
    assert protocols("filecache::http://h/x") == ["filecache", "http"]
    assert protocols("testhook:sleep=1") == ["file"]  # what fsspec makes of it: a relative path


def test_the_vectorised_check_agrees_with_the_one_by_one_check():
    uris = ["/a.mp4", "rel/b.mp4", "file:///c.mp4", "local://d", "s3://b/k", "s3a://b/k", "S3://b/k", "http://h/x",
            "https://h/x", "memory://x", "gs://b/k", "zip://a::s3://b/z.zip", "simplecache::s3://b/k",
            "simplecache::/x", "data:text/plain,hi", "C://x", "/odd/a://b", "", "testhook:segv:/x.mp4"]
    for allowed in (["file", "local", "s3", "s3a"], ["file", "http", "zip"], ["s3", "simplecache"]):
        got = allowed_mask(pa.array(uris + [None]), allowed).tolist()
        assert got == [disallowed(u, allowed) is None for u in uris] + [False], allowed


def test_rows_outside_the_list_make_no_request_and_are_error_rows(http_server, tmp_path):
    url, seen = http_server
    local = tmp_path / "a.zip"
    with zipfile.ZipFile(local, "w") as z:
        z.writestr("v.mp4", b"not read")
    fsspec.filesystem("memory").pipe("/secret.mp4", b"x" * 100)
    cfg = config_mod.load(None, [])
    for uri in (url, "memory://secret.mp4", f"zip://v.mp4::{local}", f"simplecache::{url}", "gs://b/k.mp4"):
        row = _video_row(cfg, uri)
        assert (row["status"], row["error_class"]) == ("error", "ProtocolNotAllowed"), row
        assert uri in row["error"] and "storage.allowed_protocols" in row["error"], row["error"]
        assert row.get("source_fingerprint") is None
    # the plan asks nothing either
    assert fingerprints(pa.array([url, "memory://secret.mp4", f"zip://v.mp4::{local}"]), cfg.storage).null_count == 3
    assert seen == []


def test_a_listed_protocol_is_opened(http_server):
    url, seen = http_server
    cfg = config_mod.load(None, ["storage.allowed_protocols=[file, local, s3, s3a, http]"])
    row = _video_row(cfg, url)
    assert row["status"] == "ok", row["error"]
    assert seen  # the worker read it
    n = len(seen)
    assert fingerprints(pa.array([url]), cfg.storage).to_pylist()[0] is not None  # one HEAD on the driver
    assert len(seen) == n + 1


def test_the_setting_is_checked():
    assert config_mod.load(None, []).storage.allowed_protocols == ["file", "local", "s3", "s3a"]
    assert config_mod.load(None, ["storage.allowed_protocols=[S3, file]"]).storage.allowed_protocols == ["s3", "file"]
    with pytest.raises(ConfigError, match="storage.allowed_protocols"):
        config_mod.load(None, ["storage.allowed_protocols=[s3://]"])
