"""A torch ``IterableDataset`` of window batches, for ``DataLoader(ds, batch_size=None, num_workers=k)``.

Each worker opens the store itself (its own chunk cache) and draws from its own generator,
seeded from ``(seed, worker id)``: the stream of batches is the same on every run with the
same seed and number of workers.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from . import format as fmt
from .reader import Dataset


class WindowDataset(IterableDataset):
    """Endless (or ``num_batches`` long) stream of ``{key: tensor (batch, length, ...)}``."""

    def __init__(self, path, length: int, batch_size: int, seed: int, keys=None, *,
                 cache_bytes: int = fmt.DEFAULT_CACHE_BYTES, num_batches: int | None = None):
        super().__init__()
        self.path, self.length, self.batch_size, self.seed = path, length, batch_size, seed
        self.keys, self.cache_bytes, self.num_batches = keys, cache_bytes, num_batches
        Dataset.open(path, cache_bytes=0)._window_starts(length)  # fail early, in the main process

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        rng = np.random.default_rng([self.seed, worker])
        # workers share the cores: split the decoding threads between them
        threads = max(1, fmt.DEFAULT_DECODE_THREADS // workers)
        data = Dataset.open(self.path, cache_bytes=self.cache_bytes, decode_threads=threads)
        count = None if self.num_batches is None else len(range(worker, self.num_batches, workers))
        produced = 0
        while count is None or produced < count:
            batch = data.sample_windows(self.batch_size, self.length, rng, keys=self.keys)
            produced += 1
            yield {k: torch.from_numpy(v) for k, v in batch.items()}
