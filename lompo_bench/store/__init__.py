"""The dataset store: Zarr v3 groups of image episodes, written crash-safely, read lazily.

- ``DatasetWriter.open(path, attrs)`` -> ``add_episode`` ... ``finalize()`` (``writer.py``)
- ``Dataset.open(path, cache_bytes=...)``: windows, transitions, episodes (``reader.py``)
- ``WindowDataset``: torch ``IterableDataset`` of window batches (``torch_dataset.py``)
- ``verify(path) -> list[str]`` (``integrity.py``); ``export(path, format, out)`` (``exporters.py``)

Layout and row convention: ``shared/DESIGN.md``; on-disk details: ``format.py``.
"""

from .format import DEFAULT_CACHE_BYTES, DEFAULT_CHUNK_LEN, DEFAULT_CODEC, FORMAT_NAME, FORMAT_VERSION
from .reader import Dataset, read_attrs
from .integrity import verify
from .writer import DatasetWriter, is_store


def __getattr__(name):
    # torch and h5py are imported only by the parts that need them.
    if name == "WindowDataset":
        from .torch_dataset import WindowDataset

        return WindowDataset
    if name == "export":
        from .exporters import export

        return export
    raise AttributeError(name)


__all__ = ["Dataset", "DatasetWriter", "WindowDataset", "verify", "export", "read_attrs", "is_store",
           "DEFAULT_CACHE_BYTES", "DEFAULT_CHUNK_LEN", "DEFAULT_CODEC", "FORMAT_NAME", "FORMAT_VERSION"]
