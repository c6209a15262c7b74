"""Parquet feature shards: one file per table and manifest shard, read back per clip without copies.

Tables (``data/features/<table>/<shard>.parquet``):
  visual one row per frame: video_id, frame, time, ``tokens`` FixedShapeTensor float16 [50, 768]
  motion one row per map:   video_id, frame, time, ``magnitude`` FixedShapeTensor uint8 [S, S], ``scale``
  codes  one row per frame: video_id, frame, ``codes`` FixedShapeTensor int16 [K] (50 rows a second;
         clips may differ in length, a per-clip [K, T] tensor could not have one fixed shape)
Every clip is its own row group, so reading one clip reads one row group; the file metadata holds
the schema version, the model id and params that made it, and a ``video_id -> row group`` index.
Writes go to a temp name and are renamed at the end (a killed stage leaves no half file).
Fast settings measured on our machines: no dictionary, no statistics (FixedShapeTensor float16 is
slow otherwise); no compression for float tensors, zstd for the sparse uint8 flow maps.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.files import atomic_path

SCHEMA_VERSION = 1
META_KEY = b"v2m.features"


def _tensor_type(dtype: np.dtype, shape: Sequence[int]) -> pa.ExtensionType:
    return pa.fixed_shape_tensor(pa.from_numpy_dtype(np.dtype(dtype)), list(shape))


def tensor_column(array: np.ndarray) -> pa.ExtensionArray:
    """``[N, *shape]`` numpy -> a FixedShapeTensor column of N rows (no copy for contiguous input)."""
    return pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(array))


class ShardWriter:
    """Writes one table shard clip by clip; use as a context manager.

    Args:
        path: the final file; it appears only when the block ends without error.
        table: ``visual``, ``motion`` or ``codes``.
        fields: the per-row columns besides ``video_id`` (a pyarrow schema's fields).
        metadata: model id, params and units, stored as JSON in the file metadata.
        compression: parquet codec for this table.
    """

    def __init__(self, path: Path | str, table: str, fields: list[pa.Field], metadata: dict,
                 compression: str = "none"):
        self.path, self.table, self.metadata = Path(path), table, metadata
        self.schema = pa.schema([pa.field("video_id", pa.string())] + fields)
        self.compression = compression
        self.index: dict[str, int] = {}
        self._atomic = None
        self._writer = None

    def __enter__(self) -> "ShardWriter":
        self._atomic = atomic_path(self.path)
        temp = self._atomic.__enter__()
        self._writer = pq.ParquetWriter(temp, self.schema, compression=self.compression, use_dictionary=False,
                                        write_statistics=False)
        return self

    def write_clip(self, video_id: str, columns: dict[str, pa.Array | np.ndarray | list]) -> None:
        """Append one clip as one row group; every column has the clip's row count."""
        rows = len(next(iter(columns.values())))
        arrays = [pa.array([video_id] * rows, pa.string())]
        for field in list(self.schema)[1:]:
            value = columns[field.name]
            arrays.append(value if isinstance(value, pa.Array) else pa.array(value, field.type))
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema), row_group_size=max(rows, 1))
        self.index[video_id] = len(self.index)

    def __exit__(self, exc_type, exc, tb) -> None:
        meta = {"schema_version": SCHEMA_VERSION, "table": self.table, "index": self.index, **self.metadata}
        self._writer.add_key_value_metadata({META_KEY: json.dumps(meta).encode()})
        self._writer.close()
        self._atomic.__exit__(exc_type, exc, tb)


class FeatureShard:
    """One table shard, memory-mapped: ``shard[video_id]`` gives that clip's columns as numpy arrays.

    Tensor columns come back as ``[rows, *shape]`` views on the file's buffers (zero-copy for
    uncompressed shards; decompressed once otherwise).
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no feature shard (has its features stage run?)")
        self.file = pq.ParquetFile(self.path, memory_map=True)
        raw = (self.file.metadata.metadata or {}).get(META_KEY)
        if raw is None:
            raise ValueError(f"{self.path}: not a v2m feature shard (no {META_KEY.decode()} metadata)")
        self.metadata = json.loads(raw)
        if self.metadata["schema_version"] != SCHEMA_VERSION:
            raise ValueError(f"{self.path}: feature schema version {self.metadata['schema_version']}, "
                             f"this code reads {SCHEMA_VERSION}; rerun its features stage")
        self.index: dict[str, int] = self.metadata["index"]

    def __contains__(self, video_id: str) -> bool:
        return video_id in self.index

    def __len__(self) -> int:
        return len(self.index)

    def ids(self) -> list[str]:
        return list(self.index)

    def __getitem__(self, video_id: str) -> dict[str, np.ndarray]:
        table = self.file.read_row_group(self.index[video_id])
        return {name: to_numpy(table.column(name)) for name in table.column_names if name != "video_id"}


def to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    """A column as numpy; FixedShapeTensor columns as ``[rows, *shape]`` without copying one chunk."""
    array = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    if isinstance(array.type, pa.FixedShapeTensorType):
        return array.to_numpy_ndarray()
    return array.to_numpy(zero_copy_only=False)


class FeatureReader:
    """Several shards of one table as one mapping ``video_id -> columns`` (the shards listed, no glob).

    ``cache_bytes`` > 0 keeps the most recently read clips' columns (up to that many bytes of
    arrays, least recently used out first): reading a row group costs tens of milliseconds (a
    ``[12, 50, 768]`` visual clip ~38 ms on 2 cores), which a training loop that reads the same
    clips every epoch would otherwise pay per segment. Cached arrays are shared: callers must
    not modify them (the dataset's reads copy what they slice).
    """

    def __init__(self, paths: Iterable[Path | str], cache_bytes: int = 0):
        self.shards = [FeatureShard(p) for p in paths]
        self.where = {video_id: shard for shard in self.shards for video_id in shard.ids()}
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[str, tuple[dict[str, np.ndarray], int]] = OrderedDict()   # columns, bytes
        self._cached_bytes = 0

    def ids(self) -> list[str]:
        return list(self.where)

    def __contains__(self, video_id: str) -> bool:
        return video_id in self.where

    def __getitem__(self, video_id: str) -> dict[str, np.ndarray]:
        if not self.cache_bytes:
            return self.where[video_id][video_id]
        if video_id in self._cache:
            self._cache.move_to_end(video_id)
            return self._cache[video_id][0]
        columns = self.where[video_id][video_id]
        size = sum(a.nbytes for a in columns.values())
        if size <= self.cache_bytes:
            while self._cached_bytes + size > self.cache_bytes:
                self._cached_bytes -= self._cache.popitem(last=False)[1][1]
            self._cache[video_id] = (columns, size)
            self._cached_bytes += size
        return columns

    def __iter__(self) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        for video_id, shard in self.where.items():
            yield video_id, shard[video_id]
