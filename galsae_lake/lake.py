"""The lake: one root folder of Hive-partitioned Parquet tables, and the only code that builds paths.

Layout::

    <root>/<table>/<key>=<value>/.../data.parquet   one file per partition
    <root>/<table>/data.parquet                      an unpartitioned table (e.g. sae_runs)
    <root>/<table>/_table.json                       the table's sidecar (schema version, rows, lineage)
    <root>/_staging/<txid>/...                       files being written; never read
    <root>/_lock                                     the writers' lock (readers never take it)

Every write goes through a :class:`Transaction`: files are written under ``_staging`` and only
at commit are they moved into place, each with one atomic ``os.replace``. A reader therefore sees
either the old or the new file of a partition, never half of one, and a failure before commit
leaves the lake exactly as it was. Commits hold an exclusive lock on ``_lock`` and first write a
journal, so a commit that dies half way is rolled forward by the next writer.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from galsae_lake import __version__
from galsae_lake.errors import LakeError, describe_os_error, first_line
from galsae_lake.properties import SCHEMA_VERSION, PartitionProperties, TableProperties

if TYPE_CHECKING:
    import duckdb

#: the schema version this code writes; it reads lakes up to this version
DATA_FILE = "data.parquet"
SIDECAR = "_table.json"
STAGING = "_staging"
LOCK_FILE = "_lock"
JOURNAL = "_journal.json"
MODELS = "models"
ENV_ROOT = "GALSAE_LAKE"
ENV_LOCK_TIMEOUT = "GALSAE_LOCK_TIMEOUT"
#: flock's answers where the filesystem cannot lock (not "someone holds it")
UNLOCKABLE_ERRNOS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)
DEFAULT_ROOT = "lake"

_PARTITION_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")

#: stands for "fixed-size list of float32, any size" in a table spec (embeddings, loadings)
VECTOR = pa.list_(pa.float32(), 1)


@dataclass(frozen=True)
class TableSpec:
    """A table of the lake: its partition keys and the columns stored inside its files."""

    name: str
    partition_by: tuple[str, ...]
    columns: tuple[tuple[str, pa.DataType], ...]
    description: str
    #: for unpartitioned tables: the column that identifies a row; a write replaces rows by it
    key: str | None = None
    #: who writes it: (command, "module.function"), and the query in sql/ that computes it
    producers: tuple[tuple[str, str], ...] = ()
    sql: str | None = None
    #: columns a writer may leave out: they are stored as NULL
    optional: tuple[str, ...] = ()

    @property
    def column_names(self) -> list[str]:
        return [name for name, _ in self.columns]

    def arrow_type(self, column: str) -> pa.DataType:
        return dict(self.columns)[column]

    @property
    def written_by(self) -> str:
        """``command (module.function)`` of each producer, and the table's query if any."""
        parts = [f"{command} ({code})" for command, code in self.producers]
        return "; ".join(parts) + (f"; sql/{self.sql}" if self.sql else "")


def _spec(name, partition_by, columns, description, key=None, by=(), sql=None,
          optional=()) -> TableSpec:
    return TableSpec(name, tuple(partition_by), tuple(columns), description, key, tuple(by), sql,
                     tuple(optional))


_SYNTH = ("synth", "galsae_lake.sources.synthetic.synthesize")
_HF = ("ingest hf", "galsae_lake.sources.huggingface.ingest_hf")
_TRAIN = (("train-sae", "galsae_lake.train.train_sae"),)
_PCA = (("pca", "galsae_lake.pca.fit_pca"),)
_ANALYZE = (("analyze", "galsae_lake.analysis.analyze"),)


_S, _F64, _F32, _I32, _I64 = pa.string(), pa.float64(), pa.float32(), pa.int32(), pa.int64()
_TS = pa.timestamp("us", tz="UTC")

TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in [
        _spec("galaxies", ["split"], [("id_str", _S), ("source", _S), ("ra", _F64), ("dec", _F64)],
              "one row per galaxy: where it comes from and where it is on the sky", by=(_SYNTH, _HF)),
        _spec("images", ["split"], [("id_str", _S), ("image", pa.binary())],
              "galaxy cutouts as PNG/JPEG bytes", by=(_SYNTH, _HF)),
        _spec("votes", ["catalog", "split"],
              [("id_str", _S), ("question", _S), ("answer", _S), ("label", _S), ("count", _I32),
               ("total", _I32), ("fraction", _F64)],
              "Galaxy Zoo vote counts and fractions of any campaign's tree, long: one row per "
              "galaxy and answer",
              by=(_SYNTH, _HF, ("ingest votes", "galsae_lake.sources.files.ingest_votes"))),
        _spec("labels", ["catalog", "split"], [("id_str", _S), ("label", _S), ("value", _F64)],
              "labels without a decision tree (ingest labels), long: one row per galaxy and label; "
              "NULL = unknown", by=(("ingest labels", "galsae_lake.sources.files.ingest_labels"),)),
        _spec("catalogs", [], [("catalog", _S), ("kind", _S), ("tree", _S), ("n_labels", _I32),
                               ("file", _S), ("created_at", _TS)],
              "one row per label catalog: votes (with its Galaxy Zoo tree) or labels (no tree)",
              key="catalog", by=(_SYNTH, _HF, ("ingest votes", "galsae_lake.sources.files.ingest_votes"),
                                 ("ingest labels", "galsae_lake.sources.files.ingest_labels"))),
        _spec("truth", ["split"], [("id_str", _S), ("factor", _S), ("value", _F64)],
              "the planted morphology of synthetic galaxies, long: one row per galaxy and factor",
              by=(_SYNTH,)),
        _spec("embeddings", ["encoder", "split"], [("id_str", _S), ("embedding", VECTOR)],
              "image-model embeddings, one fixed-size float32 vector per galaxy",
              by=(("embed", "galsae_lake.encoders.stage.embed"),
                  ("ingest embeddings", "galsae_lake.sources.embeddings.ingest_embeddings"),
                  ("ingest hf-embeddings", "galsae_lake.sources.embeddings.ingest_hf_embeddings"))),
        _spec("embedding_shards", ["encoder", "split", "shard"],
              [("id_str", _S), ("embedding", VECTOR)],
              "embeddings of one shard (embed --shard i/n, shard=i-of-n), merged into embeddings "
              "when all n are done", by=(("embed --shard", "galsae_lake.encoders.stage.embed"),)),
        _spec("sae_runs", [], [("run_id", _S), ("encoder", _S), ("config", _S), ("checkpoint", _S),
                               ("metrics", _S), ("created_at", _TS)],
              "one row per trained sparse autoencoder", key="run_id", by=_TRAIN),
        _spec("sae_training_log", ["run_id"],
              [("step", _I64), ("epoch", _I32), ("loss", _F64), ("mse", _F64), ("l1", _F64),
               ("aux", _F64), ("l0", _F64), ("dead_fraction", _F64), ("lr", _F64)],
              "SAE training curves", by=_TRAIN),
        _spec("sae_activations", ["run_id", "split"],
              [("id_str", _S), ("feature", _I32), ("activation", _F32)],
              "non-zero SAE codes only (sparse, long)", by=_TRAIN),
        _spec("sae_features", ["run_id"],
              [("feature", _I32), ("group", _I32), ("frequency", _F64), ("mean_activation", _F64),
               ("max_activation", _F64)],
              "per-feature statistics of an SAE", by=_TRAIN),
        _spec("pca_scores", ["pca_id", "split"], [("id_str", _S), ("component", _I32), ("score", _F32)],
              "PCA scores, long: one row per galaxy and component", by=_PCA),
        _spec("pca_components", ["pca_id"],
              [("component", _I32), ("explained_variance_ratio", _F64), ("loading", VECTOR)],
              "PCA components and their explained variance", by=_PCA),
        _spec("feature_label_corr", ["model_id", "split"],
              [("method", _S), ("feature", _I32), ("label", _S), ("spearman", _F64), ("n", _I64)],
              "Spearman rho of every feature with every Galaxy Zoo label", by=_ANALYZE,
              sql="feature_label_corr.sql"),
        _spec("feature_summary", ["model_id", "split"],
              [("method", _S), ("feature", _I32), ("frequency", _F64), ("frequency_rank", _I32),
               ("max_abs_spearman", _F64), ("best_label", _S), ("novelty", _F64),
               ("novelty_rank", _I32), ("max_abs_spearman_secondary", _F64),
               ("best_label_secondary", _S), ("n_features", _I32),
               # galsae_lake.discovery: how likely a feature is new morphology (0 = most promising)
               ("stability", _F64), ("control_r2", _F64), ("concentration", _F64),
               ("discovery_score", _F64), ("discovery_rank", _I32)],
              "per-feature alignment with the labels, novelty and discovery rank", by=_ANALYZE,
              sql="feature_summary.sql",
              optional=("stability", "control_r2", "concentration", "discovery_score",
                        "discovery_rank")),
        _spec("pca_runs", [], [("pca_id", _S), ("encoder", _S), ("n_components", _I32),
                               ("fit_split", _S), ("n_fit", _I64), ("input_dim", _I32),
                               ("explained_variance", _F64), ("checkpoint", _S),
                               ("created_at", _TS)],
              "one row per fitted PCA baseline (standardized embeddings)", key="pca_id",
              by=_PCA),
        _spec("label_null", ["model_id", "split"],
              [("method", _S), ("label", _S), ("n", _I64), ("n_features", _I32),
               ("permutations", _I32), ("observed_max_abs_spearman", _F64),
               ("null_mean", _F64), ("null_q50", _F64), ("null_q95", _F64), ("null_max", _F64),
               ("excess_over_null", _F64)],
              "max |rho| over all features per label, observed and with shuffled labels",
              by=_ANALYZE, sql="label_null.sql"),
    ]
}


def table_spec(name: str) -> TableSpec:
    try:
        return TABLES[name]
    except KeyError:
        raise LakeError(f"unknown table {name!r}; tables are: {', '.join(TABLES)}") from None


def config_hash(parameters: Mapping[str, Any]) -> str:
    """A short, stable hash of a parameter mapping (canonical JSON)."""
    text = json.dumps(parameters, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def short_id(prefix: str, parameters: Mapping[str, Any]) -> str:
    """A readable, unique-per-parameters id such as ``sae-zoobot-synth-3f9a2c``."""
    return f"{prefix}-{config_hash(parameters)[:6]}"


def check_partition_value(key: str, value: Any) -> str:
    value = str(value)
    if not _PARTITION_VALUE.match(value):
        raise LakeError(
            f"invalid {key} {value!r}: use letters, digits and . _ + - (at most 128 characters)"
        )
    return value


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """``root`` if given, else ``$GALSAE_LAKE``, else ``./lake``."""
    return Path(root or os.environ.get(ENV_ROOT) or DEFAULT_ROOT).expanduser().absolute()


def _to_arrow(data: pa.Table | pl.DataFrame | Any) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pl.DataFrame):
        return data.to_arrow()
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    raise TypeError(f"cannot write {type(data).__name__}; pass a pyarrow Table or a polars DataFrame")


def _conform(spec: TableSpec, table: pa.Table) -> pa.Table:
    """Select and cast ``table`` to the spec's columns; a one-line LakeError if it cannot be."""
    for name, want in spec.columns:
        if name in spec.optional and name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, want))
    missing = [c for c in spec.column_names if c not in table.column_names]
    if missing:
        raise LakeError(f"table {spec.name}: missing column(s) {', '.join(missing)}")
    arrays = []
    fields = []
    for name, want in spec.columns:
        column = table.column(name)
        if want == VECTOR:
            column = _as_vector(spec.name, name, column)
            want = column.type
        elif column.type != want:
            try:
                column = column.cast(want, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise LakeError(
                    f"table {spec.name}: column {name} is {column.type}, expected {want} ({exc})"
                ) from None
        arrays.append(column)
        fields.append(pa.field(name, want))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _as_vector(table: str, name: str, column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A fixed-size list of float32; lists of one length and float64 values are converted."""
    kind = column.type
    if pa.types.is_fixed_size_list(kind) and kind.value_type == pa.float32():
        return column
    if pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind):
        combined = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        if pa.types.is_fixed_size_list(kind):
            size = kind.list_size
            values = combined.flatten()
        else:
            lengths = pa.compute.list_value_length(combined).to_numpy(zero_copy_only=False)
            if len(lengths) == 0:
                raise LakeError(f"table {table}: column {name} is empty")
            if combined.null_count or (lengths != lengths[0]).any():
                raise LakeError(f"table {table}: column {name} has vectors of different lengths")
            size = int(lengths[0])
            values = combined.flatten()
        try:
            values = values.cast(pa.float32(), safe=False)
        except pa.ArrowInvalid as exc:
            raise LakeError(f"table {table}: column {name} is not numeric ({exc})") from None
        return pa.chunked_array([pa.FixedSizeListArray.from_arrays(values, size)])
    raise LakeError(f"table {table}: column {name} is {kind}, expected a list of float32")


def vectors(table: pa.Table | pl.DataFrame, column: str = "embedding") -> np.ndarray:
    """A fixed-size-list column as a 2-d float32 numpy array, without copying where possible."""
    if isinstance(table, pl.DataFrame):
        table = table.select(column).to_arrow()
    array = table.column(column).combine_chunks()
    if isinstance(array, pa.ChunkedArray):  # an empty table
        array = pa.FixedSizeListArray.from_arrays(pa.array([], pa.float32()), 1)
    size = array.type.list_size
    values = array.flatten().to_numpy(zero_copy_only=False)
    return values.astype(np.float32, copy=False).reshape(-1, size)


def vector_array(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """A 2-d numpy array as an Arrow fixed-size list of float32 (values kept bit-for-bit)."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


class Lake:
    """A lake root. Cheap to create; nothing is written until a transaction commits."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = resolve_root(root)
        if self.root.exists() and not self.root.is_dir():
            raise LakeError(f"lake root {self.root} is a file, not a folder")

    def __repr__(self) -> str:
        return f"Lake({str(self.root)!r})"

    # ---------------------------------------------------------------- paths
    def table_dir(self, table: str) -> Path:
        table_spec(table)
        return self.root / table

    def partition_dir(self, table: str, partition: Mapping[str, Any]) -> Path:
        spec = table_spec(table)
        if set(partition) != set(spec.partition_by):
            raise LakeError(
                f"table {table} is partitioned by {', '.join(spec.partition_by) or 'nothing'}, "
                f"got {', '.join(partition) or 'nothing'}"
            )
        path = self.root / table
        for key in spec.partition_by:
            path = path / f"{key}={check_partition_value(key, partition[key])}"
        return path

    def model_dir(self, kind: str, name: str) -> Path:
        """The folder of a stored model (``<root>/models/<kind>/<name>``): checkpoints, weights."""
        return self.root / MODELS / check_partition_value("kind", kind) / check_partition_value(
            "name", name)

    def figures_dir(self, model_id: str) -> Path:
        """Where ``galsae-lake figures`` writes a model's figures: ``<root>/figures/<model_id>``."""
        return self.root / "figures" / check_partition_value("model_id", model_id)

    def partitions(self, table: str, **filters: Any) -> list[dict[str, str]]:
        """The partitions that hold data, as ``{key: value}``, optionally filtered by key."""
        spec = table_spec(table)
        unknown = set(filters) - set(spec.partition_by)
        if unknown:
            raise LakeError(f"table {table} has no partition key {', '.join(sorted(unknown))}")
        base = self.root / table
        if not base.is_dir():
            return []
        found = []
        pattern = "/".join(["*"] * len(spec.partition_by) + [DATA_FILE])
        for path in sorted(base.glob(pattern)):
            parts = path.relative_to(base).parts[:-1]
            values = dict(part.split("=", 1) for part in parts)
            if list(values) != list(spec.partition_by):
                continue
            if all(str(values.get(k)) == str(v) for k, v in filters.items() if v is not None):
                found.append(values)
        return found

    def files(self, table: str, **filters: Any) -> list[Path]:
        return [self.partition_dir(table, p) / DATA_FILE for p in self.partitions(table, **filters)]

    def exists(self, table: str, **filters: Any) -> bool:
        return bool(self.partitions(table, **filters))

    # ---------------------------------------------------------------- metadata
    def info(self, table: str) -> TableProperties | None:
        """The table's ``_table.json`` (None when the table was never written)."""
        return TableProperties.read(self.table_dir(table) / SIDECAR, table)

    def partition_info(self, table: str, **partition: Any) -> PartitionProperties | None:
        """The sidecar entry of one partition (rows, command, parameters, written_at and what
        the writer recorded); None when the partition was never written."""
        self.partition_dir(table, partition)  # checks the keys
        info = self.info(table)
        name = _partition_name({k: partition[k] for k in table_spec(table).partition_by})
        return info.partition(name) if info else None

    def check_versions(self) -> None:
        """Raise if any table of the lake was written by a newer schema version."""
        for table in self.tables():
            self.info(table)

    def tables(self) -> list[str]:
        """Registered tables that hold data, in registry order."""
        return [name for name in TABLES if self.exists(name)]

    def summary(self, problems: list[str] | None = None) -> list[dict[str, Any]]:
        """Rows, partitions and bytes on disk for every registered table.

        A partition whose file cannot be read is left out of the counts and named in
        ``problems`` (when given; else it raises a one-line :class:`LakeError`).
        """
        rows = []
        with self.reading():
            for name in TABLES:
                files = self.files(name)
                info = self.info(name) if files else None
                count = 0
                for path in files:
                    try:
                        count += pq.ParquetFile(path).metadata.num_rows
                    except (pa.ArrowException, OSError) as exc:
                        line = self._unreadable_line(name, path, exc)
                        if problems is None:
                            raise LakeError(line) from None
                        problems.append(line)
                rows.append({
                    "table": name,
                    "rows": count,
                    "partitions": len(files) if TABLES[name].partition_by else int(bool(files)),
                    "bytes": sum(f.stat().st_size for f in files),
                    "updated_at": info.updated_at if info else None,
                    "written_by": TABLES[name].written_by,
                })
        return rows

    def _unreadable_line(self, table: str, path: Path, exc: BaseException) -> str:
        partition = str(path.parent.relative_to(self.table_dir(table))).replace(".", "") or "(the table)"
        return f"table {table}: partition {partition} is unreadable ({path}: {first_line(exc)})"

    def _name_unreadable(self, table: str, files: list[Path], exc: BaseException) -> BaseException:
        """After a failed read: a LakeError naming the first partition that cannot be read
        whole, else ``exc`` itself."""
        for path in files:
            try:
                for _ in pq.ParquetFile(path).iter_batches(batch_size=65_536):
                    pass
            except (pa.ArrowException, OSError) as bad:
                return LakeError(self._unreadable_line(table, path, bad))
        return exc

    # ---------------------------------------------------------------- reads
    def _require(self, table: str, filters: Mapping[str, Any]) -> list[Path]:
        self.info(table)
        files = self.files(table, **filters)
        if not files:
            where = ", ".join(f"{k}={v}" for k, v in filters.items() if v is not None)
            raise LakeError(
                f"table {table}{' (' + where + ')' if where else ''} has no data in {self.root}"
            )
        return files

    def scan(self, table: str, **filters: Any) -> pl.LazyFrame:
        """The table (or the partitions matching ``filters``) as a Polars LazyFrame.

        Partition keys come back as string columns, as Hive readers show them.
        """
        spec = table_spec(table)
        frames = []
        for partition, path in zip(self.partitions(table, **filters), self._require(table, filters)):
            frame = pl.scan_parquet(path)
            if partition:
                frame = frame.with_columns(
                    pl.lit(partition[key], dtype=pl.String).alias(key) for key in spec.partition_by
                )
            frames.append(frame)
        return frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical")

    def read(self, table: str, **filters: Any) -> pl.DataFrame:
        """The table (or its partitions matching ``filters``), as one commit left it."""
        with self.reading():
            try:
                return self.scan(table, **filters).collect()
            except (pl.exceptions.PolarsError, pa.ArrowException, OSError) as exc:
                raise self._name_unreadable(table, self.files(table, **filters), exc) from None

    def arrow(self, table: str, columns: list[str] | None = None, **filters: Any) -> pa.Table:
        """The table as a pyarrow Table (partition keys as string columns)."""
        with self.reading():
            try:
                return self._arrow(table, columns, filters)
            except (pa.ArrowException, OSError) as exc:
                raise self._name_unreadable(table, self.files(table, **filters), exc) from None

    def _arrow(self, table: str, columns: list[str] | None, filters: Mapping[str, Any]) -> pa.Table:
        spec = table_spec(table)
        parts = []
        for partition, path in zip(self.partitions(table, **filters), self._require(table, filters)):
            part = pq.read_table(path, columns=columns)
            for key in spec.partition_by:
                if columns is None or key in columns:
                    part = part.append_column(key, pa.array([partition[key]] * part.num_rows, _S))
            parts.append(part)
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    def duckdb_source(self, table: str, **filters: Any) -> str:
        """A DuckDB FROM-clause expression for the table (vectors as FLOAT[d] where d is unique)."""
        spec = table_spec(table)
        files = self._require(table, filters)
        file_list = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
        hive = ", ".join(f"'{k}': 'VARCHAR'" for k in spec.partition_by)
        options = f", hive_partitioning = true, hive_types = {{{hive}}}" if hive else ""
        source = f"read_parquet([{file_list}]{options})"
        casts = []
        for name, kind in spec.columns:
            if kind == VECTOR:
                sizes = {pq.read_schema(f).field(name).type.list_size for f in files}
                if len(sizes) == 1:
                    casts.append(f'"{name}"::FLOAT[{sizes.pop()}] AS "{name}"')
        if casts:
            replaced = ", ".join(casts)
            return f"(SELECT * REPLACE ({replaced}) FROM {source})"
        return source

    def connect(self, tables: list[str] | None = None,
                sandbox: bool = False) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with one view per table that holds data.

        With ``sandbox`` the views scan the tables through pyarrow datasets and DuckDB's own
        file access is switched off and locked (``enable_external_access = false``,
        ``lock_configuration = true``): SQL run there can read the views and nothing else, and
        can write no file (the ``sql`` command's connection).
        """
        self.check_versions()
        import duckdb  # here, not at import: the training code (GPU machines) needs no SQL

        con = duckdb.connect(":memory:")
        for table in tables or self.tables():
            if sandbox:
                self._sandbox_view(con, table)
            else:
                con.execute(f'CREATE VIEW "{table}" AS SELECT * FROM {self.duckdb_source(table)}')
        if tables is None:
            from galsae_lake.labels import create_views
            create_views(con, self.tables())
        if sandbox:
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
        return con

    def _sandbox_view(self, con: duckdb.DuckDBPyConnection, table: str) -> None:
        """A view of ``table`` over pyarrow datasets (one per vector size; FLOAT[] if several)."""
        import pyarrow.dataset as ds

        spec = table_spec(table)
        files = self._require(table, {})
        vector = [name for name, kind in spec.columns if kind == VECTOR]
        groups: dict[tuple, list[str]] = {}
        for path in files:
            try:
                schema = pq.read_schema(path)
            except (pa.ArrowException, OSError) as exc:
                raise LakeError(self._unreadable_line(table, path, exc)) from None
            sizes = tuple(schema.field(name).type.list_size if name in schema.names else None
                          for name in vector)
            groups.setdefault(sizes, []).append(str(path))
        partitioning = (ds.partitioning(pa.schema([(k, pa.string()) for k in spec.partition_by]),
                                        flavor="hive") if spec.partition_by else None)
        selects = []
        for i, paths in enumerate(groups.values()):
            name = f"_{table}_{i}"
            con.register(name, ds.dataset(paths, format="parquet", partitioning=partitioning,
                                          partition_base_dir=str(self.table_dir(table))))
            if len(groups) > 1 and vector:
                replaced = ", ".join(f'"{v}"::FLOAT[] AS "{v}"' for v in vector)
                selects.append(f'SELECT * REPLACE ({replaced}) FROM "{name}"')
            else:
                selects.append(f'SELECT * FROM "{name}"')
        con.execute(f'CREATE VIEW "{table}" AS ' + " UNION ALL BY NAME ".join(selects))

    # ---------------------------------------------------------------- writes
    def transaction(
        self,
        command: str,
        parameters: Mapping[str, Any] | None = None,
        upstream: list[str] | None = None,
    ) -> "Transaction":
        """Start a write: ``with lake.transaction("embed", params) as tx: tx.write(...)``."""
        if self.root.exists() and not self.root.is_dir():
            raise LakeError(f"lake root {self.root} is a file, not a folder")
        return Transaction(self, command, dict(parameters or {}), list(upstream or []))

    @contextlib.contextmanager
    def lock(self, timeout: float | None = None) -> Iterator[None]:
        """The writers' lock: exclusive between processes, reentrant within one.

        Taken for a commit only (staging needs no lock). It also excludes readers that are
        inside :meth:`reading`, so a reader never sees part of a commit.
        """
        state = _lock_state(self.root)
        if state.mode == "ex":  # this process holds it already
            with _reenter(state):
                yield
            return
        timeout = _lock_timeout() if timeout is None else timeout
        self.root.mkdir(parents=True, exist_ok=True)
        # a process inside reading() converts its shared lock (flock drops it, then waits)
        shared, reads = state.mode == "sh", state.depth
        handle = state.handle if shared else _open_lock(self.root, write=True)
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                _flock(self.root, handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _lock_holder(handle)
                if time.monotonic() >= deadline:
                    if shared:
                        fcntl.flock(handle, fcntl.LOCK_SH)
                    else:
                        handle.close()
                    raise LakeError(
                        f"the lake {self.root} is being written by {holder}; gave up after "
                        f"{timeout:.0f} s (set {ENV_LOCK_TIMEOUT} to wait longer)"
                    ) from None
                if not told:
                    print(f"waiting for the lake lock held by {holder} ...", file=sys.stderr)
                    told = True
                time.sleep(0.05)
        if handle.writable():
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} ({' '.join(sys.argv[:2]) or 'python'}, since "
                         f"{datetime.now(timezone.utc):%H:%M:%S} UTC)")
            handle.flush()
        state.handle, state.mode, state.depth = handle, "ex", 1
        try:
            self.recover()
            yield
        finally:
            if handle.writable():
                with contextlib.suppress(OSError):
                    handle.seek(0)
                    handle.truncate()
            if shared:
                fcntl.flock(handle, fcntl.LOCK_SH)
                state.mode, state.depth = "sh", reads
            else:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
                state.handle, state.mode, state.depth = None, None, 0

    @contextlib.contextmanager
    def reading(self, timeout: float | None = None) -> Iterator[None]:
        """Read the lake as one commit left it: a shared lock, held for the block.

        Writers hold the lock exclusively only while they move a commit's files into place, so
        inside this block every table is as some commit left it, never half way through one.
        A commit that died half way (a journal left behind) is rolled forward first. Reentrant;
        a no-op for a lake that has no lock file yet (nothing was ever committed to it) or no
        root. ``read``, ``arrow``, ``summary`` and the ``sql`` and ``tables`` commands use it;
        wrap several reads (or a LazyFrame's ``collect``) in it to see them from one commit.
        """
        state = _lock_state(self.root)
        if state.mode is not None:  # this process holds it already
            with _reenter(state):
                yield
            return
        handle = _open_lock(self.root, write=False) if self.root.is_dir() else None
        if handle is None:
            yield
            return
        timeout = _lock_timeout() if timeout is None else timeout
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    _flock(self.root, handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LakeError(
                            f"the lake {self.root} is being written by {_lock_holder(handle)}; "
                            f"gave up reading after {timeout:.0f} s (set {ENV_LOCK_TIMEOUT} to "
                            f"wait longer)") from None
                    time.sleep(0.02)
                    continue
                if not self._pending_journals():
                    break
                # a commit died after its journal: finish it (as any writer would) before reading
                fcntl.flock(handle, fcntl.LOCK_UN)
                try:
                    with self.lock(timeout=max(0.0, deadline - time.monotonic())):
                        pass
                except OSError as exc:
                    if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                        raise
                    raise LakeError(
                        f"a commit to {self.root} was interrupted and this user cannot finish "
                        f"it (no write permission); run any galsae-lake command that writes, "
                        f"as the lake's owner") from None
            state.handle, state.mode, state.depth = handle, "sh", 1
            try:
                yield
            finally:
                state.handle, state.mode, state.depth = None, None, 0
        finally:
            handle.close()  # (closing drops the flock)

    def _pending_journals(self) -> list[Path]:
        staging = self.root / STAGING
        if not staging.is_dir():
            return []
        return [path for path in staging.glob(f"*/{JOURNAL}")]

    def recover(self) -> None:
        """Roll forward commits that died half way; drop staging left by dead processes.

        Called under the lock (every commit calls it first).
        """
        staging = self.root / STAGING
        if not staging.is_dir():
            return
        for txdir in sorted(staging.iterdir()):
            journal = txdir / JOURNAL
            if journal.exists():
                try:
                    plan = json.loads(journal.read_text())
                except json.JSONDecodeError:
                    plan = None  # the journal itself was cut short: the commit never started
                if plan is not None:
                    _apply_plan(self, plan)
                shutil.rmtree(txdir, ignore_errors=True)
            elif not _pid_alive(txdir.name):
                shutil.rmtree(txdir, ignore_errors=True)
        with contextlib.suppress(OSError):
            staging.rmdir()  # (only when empty)



@dataclass
class _LockState:
    """This process's hold on one lake's lock (shared by every Lake object of that root)."""

    handle: Any = None
    mode: str | None = None  # None, "sh" (reading) or "ex" (committing)
    depth: int = 0


_LOCKS: dict[Path, _LockState] = {}


def _lock_state(root: Path) -> _LockState:
    return _LOCKS.setdefault(root, _LockState())


@contextlib.contextmanager
def _reenter(state: _LockState) -> Iterator[None]:
    state.depth += 1
    try:
        yield
    finally:
        state.depth -= 1


def _lock_timeout() -> float:
    text = os.environ.get(ENV_LOCK_TIMEOUT, "600")
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:  # (NaN too)
        raise LakeError(f"{ENV_LOCK_TIMEOUT}={text!r} is not a number of seconds (e.g. 600)")
    return value


def _flock(root: Path, handle, operation: int) -> None:
    """``fcntl.flock``, with one line where the filesystem has no flock (some NFSv3, SMB and
    FUSE mounts): the lake is never written or read unlocked."""
    try:
        fcntl.flock(handle, operation)
    except OSError as exc:
        if exc.errno not in UNLOCKABLE_ERRNOS:
            raise
        handle.close()
        raise LakeError(
            f"the lake {root} is on a filesystem without flock locks "
            f"({errno.errorcode.get(exc.errno, exc.errno)}); put the lake on a local disk, "
            f"NFSv4 or Lustre mounted with -o flock (see docs/engines.md)") from None


def _open_lock(root: Path, write: bool):
    """The lock file, opened without following a link; a one-line error for anything that is
    not a plain file. A reader does not create it (``None`` when it does not exist) and opens
    it read-only where it cannot write (a read-only lake)."""
    path = root / LOCK_FILE
    base = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # (a FIFO must not hang the open)
    attempts = [os.O_RDWR | os.O_CREAT] if write else [os.O_RDWR, os.O_RDONLY]
    fd = None
    for i, flags in enumerate(attempts):
        try:
            fd = os.open(path, flags | base, 0o644)
            break
        except FileNotFoundError:
            if not write:
                return None
            raise
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise LakeError(f"the lake's lock file {path} is a symbolic link; remove it "
                                f"(the lock must be a plain file inside the lake)") from None
            if exc.errno == errno.EISDIR:
                raise LakeError(f"the lake's lock file {path} is a folder; remove it") from None
            if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM) and i + 1 < len(attempts):
                continue
            raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LakeError(f"the lake's lock file {path} is not a plain file; remove it")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "r+" if os.O_RDWR & flags else "r")


def _lock_holder(handle) -> str:
    try:
        handle.seek(0)
        return handle.read(200).strip() or "another process (a writer or a reader)"
    except OSError:
        return "another process"

def _pid_alive(txid: str) -> bool:
    try:
        pid = int(txid.split("-", 1)[0])
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


@dataclass
class _Staged:
    table: str
    partition: dict[str, str]
    path: Path
    rows: int
    info: dict[str, Any] = field(default_factory=dict)


class PartitionWriter:
    """Streams record batches into one staged partition file (see :meth:`Transaction.writer`)."""

    def __init__(self, tx: "Transaction", table: str, partition: dict[str, str], info: dict):
        self._tx, self.table, self.partition, self.info = tx, table, partition, info
        self.spec = table_spec(table)
        self.path = tx._staged_path(table, partition)
        self._writer: pq.ParquetWriter | None = None
        self.rows = 0

    def write(self, data: pa.Table | pl.DataFrame) -> None:
        table = _conform(self.spec, _to_arrow(data))
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.path, table.schema, **_parquet_options(self.spec))
        self._writer.write_table(table, row_group_size=256_000)
        self.rows += table.num_rows

    def close(self) -> None:
        if self._writer is None:  # nothing written: an empty partition still replaces the old one
            raise LakeError(f"table {self.table}: nothing to write for {self.partition}")
        writer, self._writer = self._writer, None
        try:
            writer.close()
        except BaseException:
            _abandon(writer)
            raise
        self._tx._staged.append(_Staged(self.table, self.partition, self.path, self.rows, self.info))

    def abort(self) -> None:
        """Drop an unfinished partition file (its transaction failed); never raises."""
        if self._writer is not None:
            _abandon(self._writer)
            self._writer = None


def _abandon(writer: pq.ParquetWriter) -> None:
    """Close a Parquet writer whose file is being thrown away, quietly: a full disk makes its
    close fail, and pyarrow would otherwise retry and print that failure when it is collected."""
    with contextlib.suppress(Exception):
        writer.close()
    writer.is_open = False


class Transaction:
    """Stages writes under ``<root>/_staging`` and moves them into place on commit.

    Used as a context manager: leaving the block normally commits; an exception discards every
    staged file and leaves the lake untouched.
    """

    def __init__(self, lake: Lake, command: str, parameters: dict, upstream: list[str]):
        self.lake, self.command, self.parameters, self.upstream = lake, command, parameters, upstream
        self.txid = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.dir = lake.root / STAGING / self.txid
        self._created_root = not lake.root.exists()
        self._staged: list[_Staged] = []
        self._writers: list[PartitionWriter] = []
        self._merge: dict[str, pa.Table] = {}
        self._dirs: list[tuple[Path, Path]] = []
        self._removed: list[tuple[str, dict[str, str]]] = []
        self.committed = False
        self.journaled = False

    def __enter__(self) -> "Transaction":
        self.dir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if kind is None:
                self.commit()
        finally:
            # once its journal is written a commit must end applied: its staged files and
            # journal then stay for the next writer (or reader) to roll forward
            if not self.journaled or self.committed:
                self._discard()

    def _discard(self) -> None:
        for writer in self._writers:
            writer.abort()
        shutil.rmtree(self.dir, ignore_errors=True)
        # leave no trace of a failed command: drop the folders this transaction created
        with contextlib.suppress(OSError):
            (self.lake.root / STAGING).rmdir()
        if self._created_root and not self.committed:
            with contextlib.suppress(OSError):
                self.lake.root.rmdir()

    def _staged_path(self, table: str, partition: Mapping[str, str]) -> Path:
        target = self.lake.partition_dir(table, partition)
        return self.dir / target.relative_to(self.lake.root) / DATA_FILE

    def writer(self, table: str, partition: Mapping[str, Any] | None = None,
               info: Mapping[str, Any] | None = None) -> PartitionWriter:
        """A writer that streams batches into one partition; call ``close()`` when done."""
        spec = table_spec(table)
        partition = {k: check_partition_value(k, v) for k, v in (partition or {}).items()}
        if set(partition) != set(spec.partition_by):
            raise LakeError(f"table {table} is partitioned by {', '.join(spec.partition_by)}")
        writer = PartitionWriter(self, table, partition, dict(info or {}))
        self._writers.append(writer)
        return writer

    def stage_dir(self, kind: str, name: str) -> Path:
        """An empty folder to write a model into; at commit it replaces ``lake.model_dir(kind, name)``."""
        target = self.lake.model_dir(kind, name)
        staged = self.dir / target.relative_to(self.lake.root)
        if staged.exists():
            raise LakeError(f"model {kind}/{name} staged twice in one command")
        staged.mkdir(parents=True)
        self._dirs.append((staged, target))
        return staged

    def write(self, table: str, data: pa.Table | pl.DataFrame,
              partition: Mapping[str, Any] | None = None,
              info: Mapping[str, Any] | None = None) -> list[dict[str, str]]:
        """Stage ``data`` for ``table``; returns the partitions it will replace.

        With ``partition`` every row goes to that partition; otherwise ``data`` carries the
        partition key columns and is split by them. Each partition written replaces the old one
        whole. For an unpartitioned table with a key (``sae_runs``), rows replace the rows with
        the same key and the others stay.
        """
        spec = table_spec(table)
        arrow = _to_arrow(data)
        if not spec.partition_by:
            if spec.key is None:
                self._stage(table, {}, arrow, info)
            else:
                previous = self._merge.get(table)
                self._merge[table] = arrow if previous is None else pa.concat_tables(
                    [_conform(spec, previous), _conform(spec, arrow)])
            return [{}]
        if partition is not None:
            fixed = {k: check_partition_value(k, v) for k, v in partition.items()}
            for key, value in fixed.items():
                if key in arrow.column_names:
                    arrow = arrow.drop_columns([key])
            if set(fixed) != set(spec.partition_by):
                raise LakeError(f"table {table} is partitioned by {', '.join(spec.partition_by)}")
            self._stage(table, fixed, arrow, info)
            return [fixed]
        missing = [k for k in spec.partition_by if k not in arrow.column_names]
        if missing:
            raise LakeError(f"table {table}: no partition column(s) {', '.join(missing)}")
        frame = pl.from_arrow(arrow)
        written = []
        for keys, group in frame.group_by(list(spec.partition_by), maintain_order=True):
            fixed = {k: check_partition_value(k, v) for k, v in zip(spec.partition_by, keys)}
            self._stage(table, fixed, group.drop(list(spec.partition_by)).to_arrow(), info)
            written.append(fixed)
        return written

    def remove(self, table: str, partition: Mapping[str, Any]) -> None:
        """Drop one partition at commit (with the writes, atomically journaled); a partition
        that holds no data is left as it is."""
        partition = {k: check_partition_value(k, v) for k, v in partition.items()}
        self.lake.partition_dir(table, partition)  # checks the keys
        if any(s.table == table and s.partition == partition for s in self._staged):
            raise LakeError(f"table {table}: partition {partition} written and removed in one command")
        self._removed.append((table, partition))

    def _stage(self, table, partition, arrow, info) -> None:
        spec = table_spec(table)
        if any(s.table == table and s.partition == partition for s in self._staged):
            raise LakeError(f"table {table}: partition {partition} written twice in one command")
        if (table, partition) in self._removed:
            raise LakeError(f"table {table}: partition {partition} written and removed in one command")
        if arrow.num_rows == 0:
            raise LakeError(f"table {table}: nothing to write for {partition or 'the table'}")
        conformed = _conform(spec, arrow)
        path = self._staged_path(table, partition)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(conformed, path, row_group_size=256_000, **_parquet_options(spec))
        self._staged.append(_Staged(table, partition, path, conformed.num_rows, dict(info or {})))

    def commit(self) -> None:
        """Move every staged file into place under the lock (journaled, atomic per partition)."""
        if self.committed:
            return
        with self.lake.lock():
            for table, rows in self._merge.items():
                spec = table_spec(table)
                keys = pa.compute.unique(rows.column(spec.key))
                target = self.lake.partition_dir(table, {}) / DATA_FILE
                if target.exists():
                    old = pq.read_table(target)
                    kept = old.filter(pa.compute.invert(pa.compute.is_in(old.column(spec.key), keys)))
                    rows = pa.concat_tables([_conform(spec, kept), _conform(spec, rows)])
                self._stage(table, {}, rows, None)
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            entries = []
            for staged in self._staged:
                target = self.lake.partition_dir(staged.table, staged.partition) / DATA_FILE
                entries.append({
                    "table": staged.table,
                    "staged": str(staged.path.relative_to(self.lake.root)),
                    "target": str(target.relative_to(self.lake.root)),
                    "partition": _partition_name(staged.partition),
                    "meta": {
                        "rows": staged.rows,
                        "command": self.command,
                        "parameters": self.parameters,
                        "config_hash": config_hash(self.parameters),
                        "package_version": __version__,
                        "upstream": self.upstream,
                        "written_at": now,
                        **staged.info,
                    },
                })
            folders = [{"staged": str(staged.relative_to(self.lake.root)),
                        "target": str(target.relative_to(self.lake.root)),
                        "aside": str((self.dir / "_replaced" / str(i)).relative_to(self.lake.root))}
                       for i, (staged, target) in enumerate(self._dirs)]
            removals = [{"table": table,
                         "target": str((self.lake.partition_dir(table, partition) / DATA_FILE)
                                       .relative_to(self.lake.root)),
                         "aside": str((self.dir / "_removed" / str(i)).relative_to(self.lake.root))}
                        for i, (table, partition) in enumerate(self._removed)]
            plan = {"txid": self.txid, "entries": entries, "folders": folders,
                    "removals": removals}
            journal = self.dir / JOURNAL
            _write_durably(journal, json.dumps(plan, default=str))
            self.journaled = True
            try:
                _apply_plan(self.lake, plan)
            except OSError as exc:
                raise LakeError(
                    f"{describe_os_error(exc)}; the commit of {self.command} is journaled and "
                    f"the next galsae-lake command that uses the lake finishes it") from None
            self.committed = True
            journal.unlink()


def _partition_name(partition: Mapping[str, Any]) -> str:
    """``{"encoder": "x", "split": "test"}`` -> ``encoder=x/split=test``: a partition's key in
    the sidecar and its path under the table ('' for an unpartitioned table)."""
    return "/".join(f"{k}={v}" for k, v in partition.items())


def _parquet_options(spec: TableSpec) -> dict[str, Any]:
    """Parquet writer options: zstd; small pages where rows are large (image bytes).

    A page holds at least ``write_batch_size`` rows, and a reader loads whole pages: 1,024
    images of ~100 KB made 100 MB pages, so streaming readers held hundreds of MB at once.
    """
    options: dict[str, Any] = {"compression": "zstd"}
    if any(pa.types.is_binary(kind) or pa.types.is_large_binary(kind) for _, kind in spec.columns):
        options["write_batch_size"] = 64
    return options


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all: a temporary file, fsync, rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _apply_plan(lake: Lake, plan: dict) -> None:
    """Move staged files into place, then rewrite the sidecars. Idempotent (used by recovery)."""
    for folder in plan.get("folders", []):
        staged, target = lake.root / folder["staged"], lake.root / folder["target"]
        aside = lake.root / folder["aside"]
        if staged.exists():
            if target.exists():
                aside.parent.mkdir(parents=True, exist_ok=True)
                os.replace(target, aside)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, target)
    touched: dict[str, list[dict]] = {}
    for entry in plan["entries"]:
        staged, target = lake.root / entry["staged"], lake.root / entry["target"]
        if staged.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            _fsync(staged)
            os.replace(staged, target)
        touched.setdefault(entry["table"], []).append(entry)
    for removal in plan.get("removals", []):
        target, aside = lake.root / removal["target"], lake.root / removal["aside"]
        if target.exists():
            aside.parent.mkdir(parents=True, exist_ok=True)
            os.replace(target, aside)
        folder, top = target.parent, lake.table_dir(removal["table"])
        while folder != top and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # the emptied partition folders, up to the table's
            folder = folder.parent
        touched.setdefault(removal["table"], [])
    for table, entries in touched.items():
        _update_sidecar(lake, table, entries)


def _update_sidecar(lake: Lake, table: str, entries: list[dict]) -> None:
    spec = table_spec(table)
    path = lake.table_dir(table) / SIDECAR
    info = lake.info(table) or TableProperties(table)
    for entry in entries:
        info.partitions[entry["partition"] or "."] = PartitionProperties.from_json(entry["meta"])
    # forget partitions whose data file is gone (removed by a transaction or by hand)
    live = {_partition_name(p) or "." for p in lake.partitions(table)}
    info.partitions = {k: v for k, v in sorted(info.partitions.items()) if k in live}
    if not info.partitions:  # every partition removed: the table goes with them
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            lake.table_dir(table).rmdir()
        return
    if entries:  # (a commit that only removes partitions keeps the last write's lineage)
        last = info.partitions[entries[-1]["partition"] or "."]
        info.table = table
        info.schema_version = SCHEMA_VERSION
        info.description = spec.description
        info.partition_by = list(spec.partition_by)
        info.columns = {name: str(kind) if kind != VECTOR else "fixed_size_list<float32>"
                        for name, kind in spec.columns}
        info.command, info.parameters = last.command, last.parameters
        info.config_hash, info.package_version = last.config_hash, __version__
        info.updated_at = last.written_at
    info.rows = sum(p.rows for p in info.partitions.values())
    info.upstream = sorted({u for p in info.partitions.values() for u in p.upstream})
    # (a temporary file, fsync, rename; the temporary file removed if that fails)
    _write_durably(path, json.dumps(info.to_json(), indent=2, default=str))


def sql_dir() -> Path:
    """The folder of the project's queries (``sql/``; shipped as ``galsae_lake/sql`` in a wheel)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "sql", here.parent / "sql"):
        if candidate.is_dir():
            return candidate
    raise LakeError("the sql/ folder of galsae-lake is missing from this installation")


def query(name: str) -> str:
    """The text of ``sql/<name>.sql``: one query per produced table or view."""
    path = sql_dir() / f"{name}.sql"
    if not path.exists():
        raise LakeError(f"no query sql/{name}.sql")
    return path.read_text()


#: EXPLAIN [ANALYZE] [(options)] with any comments before and between: what it wraps follows
_EXPLAIN = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*explain\b"
                      r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*(?:analy[sz]e\b)?"
                      r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*(?:\([^()]*\))?", re.I | re.S)


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> list:
    """The statements of ``sql`` as DuckDB parses them, if every one only reads (SELECT, WITH,
    DESCRIBE, SHOW, SUMMARIZE, and EXPLAIN [ANALYZE] of those); else a one-line LakeError."""
    import duckdb

    read_only = {duckdb.StatementType.SELECT}
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise LakeError(f"SQL: {_first_line(exc)}") from None
    if not statements:
        raise LakeError("SQL: no statement given")
    for statement in statements:
        kind = statement.type
        if kind == duckdb.StatementType.EXPLAIN:
            match = _EXPLAIN.match(statement.query)
            try:
                inner = con.extract_statements(statement.query[match.end():]) if match else []
            except duckdb.Error:
                inner = []
            if len(inner) != 1:
                raise LakeError("SQL: could not tell what an EXPLAIN statement wraps; refused it")
            kind = inner[0].type
        if kind not in read_only:
            name = str(kind).rsplit(".", 1)[-1]
            raise LakeError(f"SQL: only read-only queries run over the lake; refused a {name} "
                            f"statement")
    return statements


@contextlib.contextmanager
def user_sql(lake: Lake, sql: str) -> Iterator[duckdb.DuckDBPyRelation | None]:
    """Run read-only SQL over the lake's views; yields the last statement's result.

    Two guards: every statement (and what an EXPLAIN wraps) must be a query, by DuckDB's own
    parse, and the connection cannot touch any file (:meth:`Lake.connect` with ``sandbox``).
    The block holds the lake's read lock, so the result is read from whole commits.
    """
    import duckdb

    with lake.reading():
        con = lake.connect(sandbox=True)
        try:
            statements = check_read_only(con, sql)
            result = None
            try:
                for statement in statements:
                    result = con.sql(statement.query)
            except duckdb.Error as exc:
                raise LakeError(f"SQL: {_first_line(exc)}") from None
            yield result
        finally:
            con.close()


def run_sql(lake: Lake, sql: str) -> pl.DataFrame | None:
    """:func:`user_sql`'s result as a Polars frame (``None`` for a statement with no result)."""
    import duckdb

    with user_sql(lake, sql) as result:
        try:
            return None if result is None else result.pl()
        except duckdb.Error as exc:
            raise LakeError(f"SQL: {_first_line(exc)}") from None


_first_line = first_line
