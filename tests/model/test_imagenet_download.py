"""The ImageNet weights download against a local HTTP server (127.0.0.1, never the internet):
at most one partial file on disk, as docs/model.md says (issue 23, defect 11)."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

import cxr_cad.model.imagenet as weights_mod
from cxr_cad.errors import WeightsError
from cxr_cad.model import get_arch, init_model
from tests.model.test_model import random_torchvision_state

DOCS = Path(__file__).parents[2] / "docs" / "model.md"


class Server:
    """Serves ``body`` at ``/<name>``: half of it, then waits for ``gate``, then the rest."""

    def __init__(self, body: bytes):
        self.body, self.hits = body, 0
        self.half_sent, self.gate = threading.Event(), threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                server.hits += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                half = len(server.body) // 2
                self.wfile.write(server.body[:half])
                self.wfile.flush()
                server.half_sent.set()
                server.gate.wait(30)
                self.wfile.write(server.body[half:])

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self) -> None:
        self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path, monkeypatch):
    """(server, cache file) for a torchvision-format checkpoint named with its hash prefix."""
    src = tmp_path / "weights.pth"
    torch.save(random_torchvision_state(3), src)
    body = src.read_bytes()
    prefix = hashlib.sha256(body).hexdigest()[:8]
    server = Server(body)
    name = f"resnet18-{prefix}.pth"
    spec = dataclasses.replace(get_arch("resnet18"), weights_url=server.url(name), weights_sha256_prefix=prefix)
    monkeypatch.setattr(weights_mod, "get_arch", lambda arch: spec)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(weights_mod.ENV_WEIGHTS, raising=False)
    monkeypatch.delenv(weights_mod.ENV_OFFLINE, raising=False)
    yield server, tmp_path / "torch_home" / "hub" / "checkpoints" / name
    server.close()


def _start(n: int, results: list) -> list[threading.Thread]:
    def job():
        try:
            results.append(weights_mod.resolve_imagenet_source("download", progress=False))
        except BaseException as exc:  # noqa: BLE001 - checked by the test
            results.append(exc)

    threads = [threading.Thread(target=job) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def test_one_partial_file_at_most_and_leftovers_removed(served):
    server, dst = served
    dst.parent.mkdir(parents=True)
    stale = [dst.with_name(f"{dst.name}.partial-4242"), dst.with_name(f"{dst.name}.partial-4242.0a1b.partial")]
    for f in stale:
        f.write_bytes(b"x" * 100_000)  # what two killed downloads left behind
    results: list = []
    threads = _start(2, results)  # e.g. two torchrun ranks on one machine
    assert server.half_sent.wait(30)
    on_disk = weights_mod.partial_files(dst)
    assert len(on_disk) == 1 and not any(f.exists() for f in stale), on_disk
    server.gate.set()
    for t in threads:
        t.join(60)
    assert results == [dst, dst] and server.hits == 1  # the second waited and found the file
    assert weights_mod.partial_files(dst) == []
    assert dst.read_bytes() == server.body
    _, rec = init_model("imagenet", 2, 1)
    assert rec["verified_imagenet"] and rec["source"] == str(dst)


def test_a_bad_download_leaves_nothing(served):
    server, dst = served
    server.body = b"<html>captive portal</html>" * 1000
    server.gate.set()
    with pytest.raises(WeightsError, match="does not start with"):
        weights_mod.resolve_imagenet_source("download", progress=False)
    assert not dst.exists() and weights_mod.partial_files(dst) == []


def test_docs_state_the_same_bound():
    text = " ".join(DOCS.read_text(encoding="utf-8").split())
    assert "at most one partial file" in text and ".partial" in text
