"""A table's metadata sidecar, ``<table>/_table.json``, read and written through typed classes
(as HATS keeps ``hats.properties`` in its ``TableProperties``).

The JSON on disk keeps its shape: one object per table with its lineage and a ``partitions``
object mapping each partition's name (``encoder=x/split=test``, ``.`` for an unpartitioned
table) to that partition's entry. What a stage records beyond the common fields (an embedding's
weights id, a device) stays in :attr:`PartitionProperties.recorded` and is written back as it was.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from galsae_lake.errors import LakeError

#: the newest sidecar layout this package reads and writes
SCHEMA_VERSION = 1


def _split(cls, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(values of the dataclass's plain fields, the keys it has no field for)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    plain = fields - {"recorded", "partitions"}
    return ({k: v for k, v in values.items() if k in plain},
            {k: v for k, v in values.items() if k not in fields})


@dataclass
class PartitionProperties:
    """One partition's entry: who wrote it, when, from what, and what the writer recorded."""

    rows: int = 0
    command: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    config_hash: str = ""
    package_version: str = ""
    upstream: list[str] = field(default_factory=list)
    written_at: str = ""  # ISO time of the commit (UTC, seconds)
    #: images that could not be decoded and were left out (embed)
    skipped_corrupt: int = 0
    corrupt_ids: list[str] = field(default_factory=list)  # the first 100 of them
    #: for embeddings merged from ``embed --shard i/n``: n
    merged_shards: int | None = None
    #: for a catalogue joined to ``galaxies`` (ingest votes, embeddings, hf-embeddings): how many
    #: ids matched and did not (:class:`galsae_lake.sources.ids.IdMatch` as a dict)
    id_match: dict[str, Any] | None = None
    #: whatever else the writing stage recorded (e.g. embed's weights_id, images_written_at)
    recorded: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "PartitionProperties":
        own, rest = _split(cls, values)
        return cls(**own, recorded=rest)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "recorded"}
        for optional in ("merged_shards", "id_match"):
            if out[optional] is None:
                del out[optional]
        return {**out, **self.recorded}

    def matches(self, recorded: dict[str, Any]) -> bool:
        """Whether every given key holds the given value (in the fields or the recorded ones)."""
        values = self.to_json()
        return all(values.get(k) == v for k, v in recorded.items())


@dataclass
class TableProperties:
    """A table's sidecar: its contract (columns, partition keys), the last write's lineage and
    every partition's entry."""

    table: str
    schema_version: int = SCHEMA_VERSION
    description: str = ""
    partition_by: list[str] = field(default_factory=list)
    columns: dict[str, str] = field(default_factory=dict)
    command: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    config_hash: str = ""
    package_version: str = ""
    updated_at: str | None = None
    rows: int = 0
    upstream: list[str] = field(default_factory=list)
    partitions: dict[str, PartitionProperties] = field(default_factory=dict)
    recorded: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "TableProperties":
        own, rest = _split(cls, values)
        partitions = {name: PartitionProperties.from_json(entry or {})
                      for name, entry in (values.get("partitions") or {}).items()}
        return cls(**own, partitions=partitions, recorded=rest)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("recorded", "partitions")}
        out["partitions"] = {name: p.to_json() for name, p in self.partitions.items()}
        return {**out, **self.recorded}

    def partition(self, name: str) -> PartitionProperties | None:
        """The entry of partition ``name`` (``.`` for an unpartitioned table), or None."""
        return self.partitions.get(name or ".")

    @classmethod
    def read(cls, path: Path, table: str) -> "TableProperties | None":
        """The sidecar at ``path`` (None when there is none); refuses a newer schema version."""
        if not path.exists():
            return None
        try:
            values = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise LakeError(f"{path} is unreadable: {exc}") from None
        if not isinstance(values, dict):
            raise LakeError(f"{path} is unreadable: not a JSON object")
        version = values.get("schema_version", SCHEMA_VERSION)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            from galsae_lake import __version__

            raise LakeError(
                f"table {table} was written with lake schema version {version}; this galsae-lake "
                f"{__version__} reads up to version {SCHEMA_VERSION}: upgrade galsae-lake")
        values.setdefault("table", table)
        return cls.from_json(values)

    def write(self, path: Path) -> None:
        """Replace the sidecar at ``path`` atomically (write a temporary file, then rename)."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2, default=str))
        os.replace(tmp, path)
