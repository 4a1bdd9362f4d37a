"""Datasets anywhere: a real store served over HTTP and from an S3-compatible server, both on
127.0.0.1, reads back the same windows as the local folder; the raw-chunk cache folder fills
on the first read and serves the second; a missing remote chunk is an error, never zeros."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lompo_bench.cli import cli
from lompo_bench.errors import UserError
from lompo_bench.store import Dataset, verify
from test_store import write_synthetic


@pytest.fixture(scope="module")
def local_store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("served")
    write_synthetic(root / "s.zarr", [5, 20, 9, 30], chunk_len=4)
    return root / "s.zarr"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).requests += 1
        super().do_GET()


@pytest.fixture(scope="module")
def http_root(local_store):
    """python's http.server in a thread, serving the folder that holds the store."""
    handler = functools.partial(_QuietHandler, directory=str(local_store.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def same_windows(a: Dataset, b: Dataset, seed: int = 0):
    wa = a.sample_windows(16, 6, np.random.default_rng(seed))
    wb = b.sample_windows(16, 6, np.random.default_rng(seed))
    assert set(wa) == set(wb) and all(np.array_equal(wa[k], wb[k]) for k in wa)
    ea, eb = a.episode(3), b.episode(3)
    assert all(np.array_equal(ea[k], eb[k]) for k in a.keys)


def test_http_store_reads_the_same_windows_as_the_local_one(local_store, http_root, tmp_path):
    url = f"{http_root}/s.zarr"
    local, remote = Dataset.open(local_store), Dataset.open(url, cache_bytes=100_000)
    assert remote.path == url and (remote.num_rows, remote.checksum) == (local.num_rows, local.checksum)
    same_windows(local, remote)
    assert remote.cache.nbytes <= 100_000  # the same bounded decoded-chunk cache
    assert verify(url) == []
    runner = CliRunner()
    info = runner.invoke(cli, ["datasets", "info", url])
    assert info.exit_code == 0 and f"episodes   {local.num_episodes} (" in info.output, info.output
    ok = runner.invoke(cli, ["datasets", "verify", url])
    assert ok.exit_code == 0 and "ok" in ok.output


def test_http_raw_chunk_cache_serves_the_second_open(local_store, http_root, tmp_path):
    url = f"{http_root}/s.zarr"
    cache = tmp_path / "cache"
    first = Dataset.open(url, cache_dir=cache)
    before = _QuietHandler.requests
    first.sample_windows(32, 6, np.random.default_rng(1))
    cold = _QuietHandler.requests - before
    cached = [p for p in cache.rglob("*") if p.is_file()]
    assert cold > 0 and cached and all(first.checksum in str(p) for p in cached)
    before = _QuietHandler.requests
    second = Dataset.open(url, cache_dir=cache)
    second.sample_windows(32, 6, np.random.default_rng(1))
    warm = _QuietHandler.requests - before
    assert warm < cold and warm <= 12  # only the metadata files are fetched again
    same_windows(Dataset.open(local_store), second, seed=1)


def test_a_missing_remote_chunk_is_an_error_not_zeros(local_store, http_root, tmp_path):
    damaged = local_store.parent / "damaged.zarr"
    shutil.copytree(local_store, damaged)
    chunk = Dataset.open(damaged).reader("image").chunk_path(3)
    chunk.unlink()
    ds = Dataset.open(f"{http_root}/damaged.zarr")  # remote: presence is checked when a chunk is read
    with pytest.raises(UserError, match=r"data/image: chunk 3 \(rows 12-15\) is missing.*datasets verify"):
        ds.read("image", 10, 14)
    assert any("data/image" in p for p in verify(f"{http_root}/damaged.zarr"))
    with pytest.raises(UserError, match="not reachable or not a Zarr store"):
        Dataset.open(f"{http_root}/nothing-here.zarr")


def test_file_url_is_the_local_folder(local_store):
    same_windows(Dataset.open(local_store), Dataset.open(local_store.resolve().as_uri()))


@pytest.fixture(scope="module")
def s3_bucket(local_store):
    """moto's S3-compatible server on 127.0.0.1 holding a copy of the store; dummy credentials."""
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("s3fs")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
    s3 = boto3.client("s3", endpoint_url=endpoint, **creds)
    s3.create_bucket(Bucket="lompo")
    for f in local_store.rglob("*"):
        if f.is_file():
            s3.upload_file(str(f), "lompo", f"datasets/s.zarr/{f.relative_to(local_store).as_posix()}")
    yield endpoint, {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    server.stop()


def test_s3_store_reads_the_same_windows_as_the_local_one(local_store, s3_bucket, tmp_path, monkeypatch):
    endpoint, options = s3_bucket
    url = "s3://lompo/datasets/s.zarr"
    remote = Dataset.open(url, storage_options=options, cache_dir=tmp_path / "cache")
    same_windows(Dataset.open(local_store), remote)
    assert verify(url, storage_options=options) == []
    # the CLI reaches it through the standard AWS environment variables alone
    for name, value in (("AWS_ENDPOINT_URL", endpoint), ("AWS_ACCESS_KEY_ID", "testing"),
                        ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    info = CliRunner().invoke(cli, ["datasets", "info", url])
    assert info.exit_code == 0 and "data/image" in info.output, info.output


def test_writing_stays_local(tmp_path):
    from lompo_bench.store import DatasetWriter

    with pytest.raises(UserError, match="written to local folders only"):
        DatasetWriter.open("s3://lompo/new.zarr", {"env": {"name": "synthetic"}, "split": "random"})
