"""Window sampling from a store served over HTTP on 127.0.0.1 against the same store on local disk.

Workload: batches of 16 windows x 50 consecutive 64x64 RGB walker frames (real frames,
rendered once by ``bench_store.rendered_episodes`` and cached under ``bench-output/``),
uniform random starts, one process. The store is written by ``DatasetWriter`` (format 2,
default codec) and served by python's ``http.server`` in a thread of this process.

Cases, each a fresh ``Dataset.open`` with a decoded-chunk cache far smaller than the data
(so nearly every batch decodes its chunks; what differs is where the bytes come from):

- local: the folder on disk (files in the OS page cache);
- http, no cache dir: every chunk a batch misses is one GET (fetched concurrently per batch);
- http, cache dir cold: the same, also writing the raw chunk bytes to a fresh cache folder;
- http, cache dir warm: the raw-chunk cache folder already full, so chunks are read locally
  (only the metadata files are fetched).

Rounds of all cases are interleaved and the median per case reported with its ratio to
local: the machine may be loaded.

    python benchmarks/bench_remote.py [--episodes 8] [--batches 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_store import ATTRS, OUT, episode_arrays, rendered_episodes  # noqa: E402

B, L = 16, 50


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(folder: Path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def sample_rate(where, batches: int, seed: int, **open_kw) -> float:
    """Frames per second of ``batches`` batches from a freshly opened store (open included)."""
    from lompo_bench.store import Dataset

    rng = np.random.default_rng(seed)
    t = time.perf_counter()
    ds = Dataset.open(where, cache_bytes=4 << 20, **open_kw)  # 4 MiB: far below the decoded data
    for _ in range(batches):
        ds.sample_windows(B, L, rng, keys=["image"])
    return batches * B * L / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=8, help="501-frame episodes in the store")
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from lompo_bench.store import DatasetWriter

    eps = rendered_episodes()
    work = Path(tempfile.mkdtemp(prefix="bench_remote_", dir=OUT if OUT.exists() else None))
    store = work / "walker.zarr"
    writer = DatasetWriter.open(store, ATTRS)
    for i in range(args.episodes):
        writer.add_episode(episode_arrays(eps[i % len(eps)]))
    writer.finalize()
    disk = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    server, root = serve(work)
    url = f"{root}/walker.zarr"
    warm_cache = work / "cache-warm"
    from lompo_bench.store import Dataset

    Dataset.open(url, cache_bytes=0, cache_dir=warm_cache).array("image")  # every image chunk in the folder
    cases = {
        "local": lambda r: sample_rate(store, args.batches, r),
        "http, no cache dir": lambda r: sample_rate(url, args.batches, r),
        "http, cache dir cold": lambda r: sample_rate(url, args.batches, r, cache_dir=work / f"cache-cold-{r}"),
        "http, cache dir warm": lambda r: sample_rate(url, args.batches, r, cache_dir=warm_cache),
    }
    rates = {name: [] for name in cases}
    for r in range(args.rounds):
        for name, case in cases.items():
            rates[name].append(case(r))
    server.shutdown()
    print(f"store: {args.episodes} x 501 frames of 64 px walker, {disk / 2**20:.1f} MiB on disk; "
          f"batches of {B} windows x {L} frames, {args.batches} batches per case, median of {args.rounds} rounds")
    local = statistics.median(rates["local"])
    print(f"{'case':<24}{'frames/s':>12}{'x local':>10}")
    for name, values in rates.items():
        med = statistics.median(values)
        print(f"{name:<24}{med:>12,.0f}{med / local:>10.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
