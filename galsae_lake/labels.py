"""The label side of the analysis: which catalogs a lake holds, and their labels as a matrix.

A catalog is either Galaxy Zoo votes (table ``votes``, read through the catalog's decision tree,
value = the vote fraction) or plain labels without a tree (table ``labels``, value as given:
continuous, or 0/1 flags). The ``catalogs`` table records each catalog's kind and tree; catalogs
written before it existed (or by ``synth`` / ``ingest hf``) are votes of the Euclid tree.

SQL users find every label of every catalog in one place, the ``all_labels`` view
(``catalog, split, id_str, label, question, value``) that :func:`create_views` adds to every
``galsae-lake sql`` connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from galsae_lake import trees
from galsae_lake.errors import InputError

#: the tree of a votes catalog that the catalogs table does not name (lakes before it; synth)
DEFAULT_TREE = "euclid"


@dataclass(frozen=True)
class Catalog:
    """A label catalog of the lake: its name, kind (``votes`` or ``labels``) and tree (votes only)."""

    name: str
    kind: str
    tree: trees.Tree | None

    @property
    def table(self) -> str:
        return self.kind

    @property
    def root(self) -> str | None:
        """The tree's root question (the secondary view leaves it out); None without a tree."""
        return self.tree.root if self.tree else None


def catalog_row(catalog: str, kind: str, tree: str | None, n_labels: int, file: str | None) -> pa.Table:
    """The ``catalogs`` row an ingest writes with its data (in the same transaction)."""
    return pa.table({"catalog": [catalog], "kind": [kind], "tree": pa.array([tree], pa.string()),
                     "n_labels": pa.array([n_labels], pa.int32()),
                     "file": pa.array([file], pa.string()),
                     "created_at": pa.array([datetime.now(timezone.utc)], pa.timestamp("us", tz="UTC"))})


def catalogs(lake) -> dict[str, Catalog]:
    """Every catalog with data in the lake, by name."""
    recorded = {}
    if lake.exists("catalogs"):
        for row in lake.read("catalogs").iter_rows(named=True):
            recorded[row["catalog"]] = row
    found: dict[str, Catalog] = {}
    for kind in ("votes", "labels"):
        for name in sorted({p["catalog"] for p in lake.partitions(kind)}):
            row = recorded.get(name)
            tree = None
            if kind == "votes":
                tree = trees.get((row or {}).get("tree") or DEFAULT_TREE)
            found[name] = Catalog(name, kind, tree)
    return found


def get_catalog(lake, name: str) -> Catalog:
    """The catalog ``name``; one line naming the lake's catalogs when it has none such."""
    found = catalogs(lake)
    if name not in found:
        have = ", ".join(f"{c.name} ({c.kind})" for c in found.values())
        raise InputError(f"no catalog {name!r} in the lake" + (f"; catalogs: {have}" if have else
                         "; ingest one first (galsae-lake ingest votes FILE or ingest labels FILE)"))
    return found[name]


def parse_catalogs(value: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"volunteers,rings"`` -> ``["volunteers", "rings"]`` (order kept, repeats dropped)."""
    names = value.split(",") if isinstance(value, str) else list(value)
    names = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    if not names:
        raise InputError("--catalog names no catalog")
    return names


@dataclass
class LabelMatrix:
    """Labels of one split's galaxies: ``values[galaxy, label]`` (NaN = unknown or not asked).

    ``names`` are the labels as the analysis tables store them (prefixed ``<catalog>:`` when
    several catalogs are analyzed together); ``questions[j]`` is the question a label answers
    (its own name for plain labels); ``exclude_question`` is what the secondary view leaves out
    (the first tree's root question, '' when no catalog has a tree).
    """

    names: list[str]
    questions: list[str]
    values: np.ndarray
    exclude_question: str
    catalogs: list[Catalog]

    def voted(self) -> np.ndarray:
        """Galaxies with at least one known label (column by column: no [rows x labels] mask)."""
        known = np.zeros(len(self.values), bool)
        for j in range(self.values.shape[1]):
            known |= ~np.isnan(self.values[:, j])
        return known

    def select(self, rows: np.ndarray, keep: np.ndarray) -> "LabelMatrix":
        """The galaxies where ``rows`` and the label columns where ``keep`` are True.

        Column-major, built column by column: at Euclid's size the matrix is gigabytes, and when
        every galaxy and label stays this is the same array, not a copy.
        """
        index = np.flatnonzero(keep)
        if rows.all() and len(index) == self.values.shape[1]:
            values = self.values
        else:
            values = np.empty((int(rows.sum()), len(index)), order="F")
            for k, j in enumerate(index):
                values[:, k] = self.values[rows, j]
        return LabelMatrix([self.names[j] for j in index], [self.questions[j] for j in index],
                           values, self.exclude_question, self.catalogs)


def _names_of(lake, catalog: Catalog, split: str) -> list[str]:
    """A catalog's label names: the tree's order for votes, first appearance for plain labels."""
    if catalog.tree is not None:
        return list(catalog.tree.label_names)
    names: list[str] = []
    for path in lake.files("labels", catalog=catalog.name, split=split):
        column = pq.read_table(path, columns=["label"]).column("label")
        names.extend(n for n in pc.unique(column).to_pylist() if n is not None)
    return list(dict.fromkeys(names))


#: rows of (galaxy, label, value) per batch when read_labels streams a catalog from DuckDB
LABEL_BATCH_ROWS = 1 << 20


def read_labels(lake, ids, split: str, catalog_names: list[str],
                exclude_question: str | None = None, con=None) -> LabelMatrix:
    """The labels of ``catalog_names`` for the galaxies ``ids`` (rows in that order) on ``split``.

    Read by DuckDB (``sql/label_values.sql``, on ``con`` or a fresh connection): the one place
    the analysis loads its labels. ``exclude_question`` None takes the first tree's root question
    (smooth-or-featured for every Galaxy Zoo tree); with several catalogs it names a question of
    that first tree.
    """
    import duckdb

    from galsae_lake.lake import query

    chosen = [get_catalog(lake, name) for name in catalog_names]
    for catalog in chosen:
        if not lake.exists(catalog.table, catalog=catalog.name, split=split):
            have = sorted(p["split"] for p in lake.partitions(catalog.table, catalog=catalog.name))
            raise InputError(f"catalog {catalog.name!r} has no {catalog.kind} for split {split!r}"
                             + (f" (it has {', '.join(have)})" if have else ""))
    con = con or duckdb.connect(":memory:")
    n = len(ids)
    con.register("split_ids", pa.table({"id_str": pa.array(np.asarray(ids, dtype=object), pa.string()),
                                        "row": pa.array(np.arange(n, dtype=np.int32))}))
    prefix = len(chosen) > 1
    owns = [_names_of(lake, catalog, split) for catalog in chosen]
    # one column-major matrix for every catalog: each label's column is contiguous, which the
    # engines hand to Arrow and DuckDB without a copy (memory at Euclid's size: docs/benchmarks.md)
    values = np.full((n, sum(map(len, owns))), np.nan, order="F")
    names, questions = [], []
    for catalog, own in zip(chosen, owns):
        block = values[:, len(names):len(names) + len(own)]  # a view: filled in place
        value = "fraction" if catalog.kind == "votes" else "value"
        source = lake.duckdb_source(catalog.table, catalog=catalog.name, split=split)
        con.execute(f'CREATE OR REPLACE TEMP VIEW label_source AS SELECT id_str, label, '
                    f'"{value}" AS value FROM {source}')
        con.register("label_names", pa.table({
            "label": pa.array(own, pa.string()),
            "label_index": pa.array(np.arange(len(own), dtype=np.int32))}))
        # streamed in batches: the long rows of 10M galaxies would be ~7 GB at once
        for batch in con.sql(query("label_values")).to_arrow_reader(LABEL_BATCH_ROWS):
            block[batch.column("row").to_numpy(), batch.column("label_index").to_numpy()] = \
                batch.column("value").to_numpy()
        con.unregister("label_names")
        tag = f"{catalog.name}:" if prefix else ""
        names += [tag + n for n in own]
        questions += [tag + (catalog.tree.question_of(n) if catalog.tree else n) for n in own]
    con.unregister("split_ids")
    first = next((c for c in chosen if c.tree is not None), None)
    exclude = (first.root if first else "") if exclude_question is None else exclude_question
    if exclude:
        if first is None or exclude not in first.tree.questions:
            known = ", ".join(first.tree.questions) if first else "none: no catalog has a tree"
            raise InputError(f"--exclude-question {exclude!r} is not a question of the catalog's "
                             f"tree; questions: {known}")
        if prefix:
            exclude = f"{first.name}:{exclude}"
    return LabelMatrix(names, questions, values, exclude, chosen)


def label_order(lake, catalog_names: list[str] | None = None) -> list[str]:
    """Every label of the given catalogs (default: all) in tree order, for figures and tables."""
    names: list[str] = []
    for catalog in catalogs(lake).values():
        if catalog_names is not None and catalog.name not in catalog_names:
            continue
        if catalog.tree is not None:
            names += catalog.tree.label_names
        else:
            names += lake.read("labels", catalog=catalog.name)["label"].unique(maintain_order=True).to_list()
    return list(dict.fromkeys(names))


def create_views(con, tables: list[str]) -> None:
    """Add ``all_labels`` (every label of every catalog, one place) to a lake connection."""
    parts = []
    if "votes" in tables:
        parts.append("SELECT catalog, split, id_str, label, question, fraction AS value FROM votes")
    if "labels" in tables:
        parts.append("SELECT catalog, split, id_str, label, label AS question, value FROM labels")
    if parts:
        con.execute("CREATE VIEW all_labels AS " + " UNION ALL ".join(parts))

