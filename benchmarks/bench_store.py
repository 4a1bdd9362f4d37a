"""The dataset store against the formats users have today, side by side in one run.

Workload (issue 3): batches of 64 windows x 50 consecutive 64x64 RGB frames inside one
episode, uniform random starts, one process. Data: real walker frames from
``lompo_bench.envs`` (uniform-random policy, 501-frame episodes), rendered once and cached
under ``bench-output/``; larger datasets repeat those episodes (the codecs see real frames;
each chunk is compressed on its own, so repetition does not flatter the ratio).

Sections:
1. codecs: compression ratio, write throughput (through ``DatasetWriter``, zarr included)
   and decode throughput, per codec, on the rendered frames;
2. chunk length: cold / warm window sampling for 16, 32 and 64-frame chunks;
3. window sampling, frames/s and x in-memory: NumPy array in RAM (the ceiling), our store
   with a warm cache (holds the data) and a cold one (a cache far smaller than the data, so
   nearly every chunk is decoded), plain zarr slicing of the same store, per-episode npz
   files opened per window (V-D4RL / LOMPO style) and all loaded at start, and a
   Minari-layout HDF5 file (episode groups, gzip; minari itself is not installed here);
4. peak RSS of a fresh process sampling from a store larger than its cache cap
   (default: ~0.6 GB store under a 0.15 GB cache; ``--large``: ~3 GB under 0.75 GB).

Files stay in the OS page cache (we do not drop it), as in ``format-measurements.md``.
The machine is shared: figures vary with the load of other processes.

    python benchmarks/bench_store.py [--episodes 40] [--large] [--quick] [--only rss ...]
Writes bench-output/bench_store.json (bench_store_<sections>.json for partial runs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-output"
WORK = OUT / "bench_store"
B, L, SIZE = 64, 50, 64
RENDERED_EPISODES = 8
CODECS = ["none", "lz4-5", "lz4hc-5", "lz4hc-9", "zstd-1", "zstd-3", "zstd-5", "zstd-3-bitshuffle", "lz4-5-shuffle"]
ATTRS = {"env": {"name": "walker", "image_size": SIZE}, "split": "bench", "collector": {"algorithm": "random"}}


# -- data ----------------------------------------------------------------------------------
def rendered_episodes() -> list[np.ndarray]:
    """Real walker episodes (uniform-random policy) at 64 px: ``RENDERED_EPISODES`` x (501, 64, 64, 3)."""
    cache = OUT / "walker_random_64px.npz"
    if cache.exists():
        z = np.load(cache)
        return [z[f"ep{i}"] for i in range(RENDERED_EPISODES)]
    from lompo_bench.collectors.random_policy import make_env, random_episode

    sim = make_env("walker", SIZE, 500)
    t = time.perf_counter()
    eps = [random_episode(sim, 0, i)["image"] for i in range(RENDERED_EPISODES)]
    sim.close()
    print(f"rendered {RENDERED_EPISODES} walker episodes in {time.perf_counter() - t:.0f} s")
    OUT.mkdir(exist_ok=True)
    np.savez(cache, **{f"ep{i}": e for i, e in enumerate(eps)})
    return eps


def episode_arrays(image: np.ndarray) -> dict:
    n = len(image)
    return {"image": image, "action": np.zeros((n, 6), np.float32), "reward": np.zeros(n, np.float32),
            "is_first": np.arange(n) == 0, "is_last": np.arange(n) == n - 1, "is_terminal": np.zeros(n, bool)}


def write_store(path: Path, eps: list[np.ndarray], n_episodes: int, codec: str, chunk_len: int) -> float:
    """Write ``n_episodes`` (cycling through ``eps``); returns image frames written per second."""
    from lompo_bench.store import DatasetWriter

    if path.exists():
        shutil.rmtree(path)
    t = time.perf_counter()
    w = DatasetWriter.open(path, ATTRS, codec=codec, chunk_len=chunk_len)
    frames = 0
    for i in range(n_episodes):
        w.add_episode(episode_arrays(eps[i % len(eps)]))
        frames += len(eps[i % len(eps)])
    w.finalize()
    return frames / (time.perf_counter() - t)


def disk_bytes(path: Path) -> int:
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# -- samplers (all draw the same starts) -----------------------------------------------------
def throughput(sample, starts_batches, min_time: float, rounds: int = 3) -> float:
    """Best frames/s of ``sample(starts)`` over ``rounds`` rounds of at least ``min_time / rounds``
    seconds and 2 batches each (best-of: the machine is shared, the other rounds measure the neighbours)."""
    best, i = 0.0, 0
    for _ in range(rounds):
        frames, t0 = 0, time.perf_counter()
        while True:
            sample(starts_batches[i % len(starts_batches)])
            frames += B * L
            i += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_time / rounds and frames >= 2 * B * L:
                break
        best = max(best, frames / elapsed)
    return best


def interleaved(samplers: list[tuple], starts_batches, min_time: float, rounds: int) -> dict[str, float]:
    """Best frames/s per sampler, the samplers taking turns round by round, so a burst of load from
    other processes does not land on one format only."""
    best = {name: 0.0 for name, _, _ in samplers}
    for _ in range(rounds):
        for name, sample, weight in samplers:
            best[name] = max(best[name], throughput(sample, starts_batches, min_time * weight / rounds, rounds=1))
    return best


def bench_sampling(eps, n_episodes, chunk_len, min_time) -> list[dict]:
    import h5py
    import zarr

    from lompo_bench.store import Dataset

    store = WORK / f"sample_c{chunk_len}.zarr"
    write_store(store, eps, n_episodes, "lz4hc-5", chunk_len)
    ds_probe = Dataset.open(store, cache_bytes=0)
    ends, starts_ep = ds_probe.episode_ends, ds_probe.episode_starts
    rng = np.random.default_rng(0)
    batches = [ds_probe.sample_starts(B, L, rng) for _ in range(200)]
    raw = ds_probe.num_rows * SIZE * SIZE * 3
    ep_of = np.searchsorted(ends, np.arange(ds_probe.num_rows), side="right")

    # the ceiling: one NumPy array in RAM
    memory = np.concatenate([eps[i % len(eps)] for i in range(n_episodes)])
    # our store, warm (the cache holds everything) and cold (a cache << data: decode per batch)
    warm = Dataset.open(store, cache_bytes=2 * raw)
    warm.array("image")
    for s in batches:
        warm._gather("image", s, L)
    cold = Dataset.open(store, cache_bytes=8 << 20)
    cold1 = Dataset.open(store, cache_bytes=8 << 20, decode_threads=1)
    zarr_image = zarr.open_array(str(store / "data/image"), mode="r")
    # per-episode npz files (V-D4RL / LOMPO): opened per window, and all loaded at start
    npz_dir = WORK / f"npz_{n_episodes}"
    if not npz_dir.exists():
        npz_dir.mkdir(parents=True)
        for i in range(n_episodes):
            np.savez_compressed(npz_dir / f"ep{i:05d}.npz", image=eps[i % len(eps)])
    t = time.perf_counter()
    loaded = [np.load(npz_dir / f"ep{i:05d}.npz")["image"] for i in range(n_episodes)]
    npz_load_s = time.perf_counter() - t
    # Minari layout: one HDF5 file, a group per episode, observations gzip-compressed
    h5 = WORK / f"minari_layout_{n_episodes}.hdf5"
    if not h5.exists():
        with h5py.File(h5, "w") as f:
            for i in range(n_episodes):
                f.create_dataset(f"episode_{i}/observations", data=eps[i % len(eps)], chunks=True, compression="gzip")
    h5file = h5py.File(h5, "r")
    h5sets = [h5file[f"episode_{i}/observations"] for i in range(n_episodes)]

    def local(a):
        return a - starts_ep[ep_of[a]]

    samplers = [
        ("NumPy array in RAM (ceiling)", lambda s: np.stack([memory[a:a + L] for a in s]), 1.0, raw),
        ("lompo-bench store, warm cache", lambda s: warm._gather("image", s, L), 1.0, disk_bytes(store / "data/image")),
        (f"lompo-bench store, cold cache (8 MB cap), {cold.decode_threads} decode threads",
         lambda s: cold._gather("image", s, L), 1.0, disk_bytes(store / "data/image")),
        ("lompo-bench store, cold cache (8 MB cap), 1 decode thread", lambda s: cold1._gather("image", s, L), 1.0,
         disk_bytes(store / "data/image")),
        ("zarr v3 plain slicing, same store", lambda s: np.stack([zarr_image[a:a + L] for a in s]), 0.5,
         disk_bytes(store / "data/image")),
        ("per-episode npz, opened per window", lambda s: np.stack(
            [np.load(npz_dir / f"ep{ep_of[a]:05d}.npz")["image"][local(a):local(a) + L] for a in s]), 0.3,
         disk_bytes(npz_dir)),
        ("per-episode npz, all loaded at start", lambda s: np.stack(
            [loaded[ep_of[a]][local(a):local(a) + L] for a in s]), 1.0, disk_bytes(npz_dir)),
        ("Minari-layout HDF5 (episode groups, gzip), h5py slicing", lambda s: np.stack(
            [h5sets[ep_of[a]][local(a):local(a) + L] for a in s]), 0.3, disk_bytes(h5)),
    ]
    best = interleaved([(n, f, w) for n, f, w, _ in samplers], batches, min_time, rounds=3)
    h5file.close()
    ceiling = best[samplers[0][0]]
    rows = []
    for name, _, _, disk in samplers:
        rows.append({"format": name, "frames_per_s": best[name], "x_in_memory": best[name] / ceiling,
                     "disk_mb": disk / 1e6})
        print(f"  {name:<60} {best[name] / 1e3:8.1f}k frames/s  {best[name] / ceiling:6.3f}x in-memory")
    rows[-2]["load_s"] = npz_load_s
    return rows


def bench_codecs(eps, codecs) -> list[dict]:
    from lompo_bench.store import Dataset

    rows = []
    raw = sum(e.nbytes for e in eps)
    for codec in codecs:
        path = WORK / f"codec_{codec}.zarr"
        write_fps = write_store(path, eps, len(eps), codec, 32)
        ds = Dataset.open(path, cache_bytes=0)
        reader = ds.reader("image")
        decode_fps = 0.0
        for _ in range(3):  # best of 3 passes (shared machine)
            t = time.perf_counter()
            for c in range(reader.num_chunks):
                reader.read_chunk(c)
            decode_fps = max(decode_fps, reader.num_chunks * reader.chunk_rows / (time.perf_counter() - t))
        disk = disk_bytes(path / "data/image")
        rows.append({"codec": codec, "ratio": raw / disk, "disk_mb": disk / 1e6, "write_frames_per_s": write_fps,
                     "decode_frames_per_s": decode_fps})
        print(f"  {codec:<20} ratio {raw / disk:5.2f}  write {write_fps / 1e3:6.1f}k fr/s  "
              f"decode {decode_fps / 1e3:6.1f}k fr/s")
        shutil.rmtree(path)
    return rows


def bench_chunk_len(eps, n_episodes, min_time) -> list[dict]:
    from lompo_bench.store import Dataset

    rows, samplers = [], []
    rng = np.random.default_rng(0)
    batches = None
    for chunk_len in (16, 32, 64):
        path = WORK / f"chunks_{chunk_len}.zarr"
        write_store(path, eps, n_episodes, "lz4hc-5", chunk_len)
        probe = Dataset.open(path, cache_bytes=0)
        batches = batches or [probe.sample_starts(B, L, rng) for _ in range(100)]
        cold = Dataset.open(path, cache_bytes=8 << 20)
        warm = Dataset.open(path, cache_bytes=1 << 40)
        warm.array("image")
        for s in batches:
            warm._gather("image", s, L)
        ratio = probe.num_rows * SIZE * SIZE * 3 / disk_bytes(path / "data/image")
        rows.append({"chunk_len": chunk_len, "ratio": ratio})
        samplers += [((chunk_len, "cold"), lambda s, d=cold: d._gather("image", s, L), 1.0),
                     ((chunk_len, "warm"), lambda s, d=warm: d._gather("image", s, L), 0.5)]
    best = interleaved(samplers, batches, min_time, rounds=3)
    for r in rows:
        r["cold_frames_per_s"], r["warm_frames_per_s"] = best[(r["chunk_len"], "cold")], best[(r["chunk_len"], "warm")]
        print(f"  chunk {r['chunk_len']:>3}: ratio {r['ratio']:5.2f}  cold {r['cold_frames_per_s'] / 1e3:6.1f}k fr/s  "
              f"warm {r['warm_frames_per_s'] / 1e3:6.1f}k fr/s")
    for chunk_len in (16, 32, 64):
        shutil.rmtree(WORK / f"chunks_{chunk_len}.zarr")
    return rows


def bench_rss(eps, store_gb: float, cache_gb: float, seconds: float) -> dict:
    episodes = int(np.ceil(store_gb * 1e9 / eps[0].nbytes))
    path = WORK / f"rss_{store_gb:g}gb.zarr"
    marker = path / ".episodes"
    if not (marker.exists() and marker.read_text() == str(episodes)):
        t = time.perf_counter()
        fps = write_store(path, eps, episodes, "lz4hc-5", 32)
        marker.write_text(str(episodes))
        print(f"  wrote {episodes} episodes ({store_gb:g} GB raw) at {fps / 1e3:.1f}k frames/s "
              f"in {time.perf_counter() - t:.0f} s")
    child = subprocess.run([sys.executable, __file__, "--rss-child", str(path), str(int(cache_gb * 1e9)),
                            str(seconds)], capture_output=True, text=True, check=True)
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result.update(store_raw_gb=episodes * eps[0].nbytes / 1e9, store_disk_gb=disk_bytes(path) / 1e9,
                  cache_cap_gb=cache_gb)
    print(f"  store {result['store_raw_gb']:.2f} GB raw ({result['store_disk_gb']:.2f} GB on disk), cache cap "
          f"{cache_gb:g} GB: peak RSS {result['peak_rss_gb']:.2f} GB (after imports {result['base_rss_gb']:.2f}), "
          f"cache {result['cache_gb']:.2f} GB, {result['frames_per_s'] / 1e3:.1f}k frames/s")
    return result


def rss_child(path: str, cache_bytes: int, seconds: float):
    from lompo_bench.store import Dataset

    def peak_gb():
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the (large) parent across exec.
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9

    base = peak_gb()
    ds = Dataset.open(path, cache_bytes=cache_bytes)
    rng = np.random.default_rng(0)
    frames, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        ds.sample_windows(B, L, rng, keys=["image", "action", "reward", "is_first"])
        frames += B * L
    print(json.dumps({"peak_rss_gb": peak_gb(), "base_rss_gb": base, "cache_gb": ds.cache.nbytes / 1e9,
                      "frames_per_s": frames / (time.perf_counter() - t0)}))


def table(rows, cols):
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols]
    print(" | ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(cols, widths)))


def _fmt(v):
    if isinstance(v, float):
        return f"{v / 1e3:.1f}k" if v >= 1e3 else f"{v:.3g}"
    return "" if v is None else str(v)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=40, help="episodes of the sampling dataset (501 frames each)")
    p.add_argument("--large", action="store_true", help="RSS check on a ~3 GB store under a 0.75 GB cache")
    p.add_argument("--quick", action="store_true", help="fewer codecs, shorter timings")
    p.add_argument("--only", action="append", choices=["codecs", "chunks", "sampling", "rss"],
                   help="run only these sections (repeatable; default: all)")
    p.add_argument("--rss-child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rss_child:
        return rss_child(args.rss_child[0], int(args.rss_child[1]), float(args.rss_child[2]))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    WORK.mkdir(parents=True, exist_ok=True)
    min_time = 1.0 if args.quick else 3.0
    eps = rendered_episodes()
    results = {"workload": f"{B} windows x {L} frames of {SIZE}x{SIZE}x3 uint8, walker random-policy frames",
               "machine": _machine()}
    only = set(args.only or ["codecs", "chunks", "sampling", "rss"])
    if "codecs" in only:
        print(f"== codecs ({RENDERED_EPISODES} rendered episodes, {sum(e.nbytes for e in eps) / 1e6:.0f} MB raw, "
              f"32-frame chunks)")
        results["codecs"] = bench_codecs(eps, CODECS[:4] if args.quick else CODECS)
    if "chunks" in only:
        print(f"== chunk length (lz4hc-5, {args.episodes} episodes)")
        results["chunk_len"] = bench_chunk_len(eps, args.episodes, min_time)
    if "sampling" in only:
        print(f"== window sampling ({args.episodes} episodes x 501 frames = "
              f"{args.episodes * eps[0].nbytes / 1e6:.0f} MB raw)")
        results["sampling"] = bench_sampling(eps, args.episodes, 32, min_time)
    if "rss" in only:
        store_gb, cache_gb = (3.0, 0.75) if args.large else (0.6, 0.15)
        print(f"== peak RSS, store {store_gb:g} GB raw under a {cache_gb:g} GB cache")
        results["rss"] = bench_rss(eps, store_gb, cache_gb, 20.0 if args.large else 8.0)

    if "codecs" in results:
        print("\ncodecs (real 64 px walker frames):")
        table(results["codecs"], ["codec", "ratio", "disk_mb", "write_frames_per_s", "decode_frames_per_s"])
    if "chunk_len" in results:
        print("\nchunk length:")
        table(results["chunk_len"], ["chunk_len", "ratio", "cold_frames_per_s", "warm_frames_per_s"])
    if "sampling" in results:
        print("\nwindow sampling:")
        table(results["sampling"], ["format", "frames_per_s", "x_in_memory", "disk_mb"])
    out = OUT / ("bench_store.json" if len(only) == 4 and not args.large else f"bench_store_{'_'.join(sorted(only))}{'_large' if args.large else ''}.json")
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")


def _machine() -> str:
    from lompo_bench.provenance import hardware

    return hardware() + f", load average {os.getloadavg()[0]:.1f}"


if __name__ == "__main__":
    main()
