"""The dataset store: Zarr v3 groups of image episodes, written crash-safely, read lazily.

- ``DatasetWriter.open(path, attrs)`` -> ``add_episode`` ... ``finalize()`` (``writer.py``)
- ``Dataset.open(path_or_url, cache_bytes=..., cache_dir=None, storage_options=None)``: windows,
  transitions, episodes; local folders or fsspec URLs (``reader.py``)
- ``WindowDataset``: torch ``IterableDataset`` of window batches (``torch_dataset.py``)
- ``verify(path) -> list[str]``, ``migrate(path)`` (format 1 -> 2) (``integrity.py``);
  ``export(path, format, out)`` (``exporters.py``)

Layout and row convention: ``shared/DESIGN.md``; on-disk details: ``format.py``.
"""

from .format import DEFAULT_CACHE_BYTES, DEFAULT_CHUNK_LEN, DEFAULT_CODEC, FORMAT_NAME, FORMAT_VERSION
from .reader import CorruptChunk, Dataset, is_url, read_attrs
from .integrity import migrate, verify
from .writer import DatasetWriter, check_out_path, is_store


def __getattr__(name):
    # torch and h5py are imported only by the parts that need them.
    if name == "WindowDataset":
        from .torch_dataset import WindowDataset

        return WindowDataset
    if name == "export":
        from .exporters import export

        return export
    raise AttributeError(name)


__all__ = ["Dataset", "DatasetWriter", "WindowDataset", "verify", "migrate", "export", "read_attrs", "is_store",
           "is_url", "check_out_path", "CorruptChunk",
           "DEFAULT_CACHE_BYTES", "DEFAULT_CHUNK_LEN", "DEFAULT_CODEC", "FORMAT_NAME", "FORMAT_VERSION"]
