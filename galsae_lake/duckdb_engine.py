"""The default engine of `analyze` (``--engine duckdb``): Spearman and novelty as DuckDB SQL.

The codes stay in DuckDB: a ``codes(feature, "row", value)`` relation of the connection (the
lake's Parquet read by ``sql/analysis_codes.sql`` into a temp table, which spills to the
connection's ``temp_directory`` past its ``memory_limit``). ``sql/feature_label_corr.sql``
ranks and correlates, ``sql/feature_novelty.sql`` projects the codes on a basis table of the
labels; only the [features x labels] results come back to numpy. What stays in numpy: the
factorization of the small label matrix (``numpy_engine.label_basis``) and the permutation null
(``numpy_engine.spearman`` on codes fetched from the same relation).
"""

from __future__ import annotations

import re

import duckdb
import numpy as np
import pyarrow as pa

from galsae_lake.lake import query
from galsae_lake.numpy_engine import CONSTANT_STD, MIN_ROWS

_PARAMETER = re.compile(r"\$([A-Za-z_]\w*)")
# (set, code) rows that sql/feature_label_corr.sql sorts in one batch: ~20 bytes each, so ~10 GB
# of table (and as much of sort runs) spilled at most; 35k galaxies (8.2M) and 1M (234M) are one
# batch, 10M galaxies (~2.3 billion) seven (one per set but two)
SET_BATCH_ROWS = 1 << 29


def statements(name: str) -> list[str]:
    """The statements of ``sql/<name>.sql`` (separated by ';' at a line end), comments kept."""
    parts = re.split(r";[ \t]*\n", query(name))
    return [part for part in parts
            if any(line.strip() and not line.strip().startswith("--") for line in part.splitlines())]


def temp_tables(name: str) -> list[str]:
    """The temp tables that ``sql/<name>.sql`` creates (and leaves in the connection)."""
    return re.findall(r"^CREATE OR REPLACE TEMP TABLE (\w+)", query(name), re.MULTILINE)


def named(sql: str) -> set[str]:
    """The parameters a statement uses ($name outside comments)."""
    return set(_PARAMETER.findall(re.sub(r"--[^\n]*", "", sql)))


def execute(con: duckdb.DuckDBPyConnection, sql: str, params: dict) -> None:
    """Run one statement with the named parameters it uses."""
    con.execute(sql, {k: params[k] for k in named(sql)})


def run_statements(con: duckdb.DuckDBPyConnection, sqls: list[str], params: dict) -> pa.Table:
    """Run the statements in order, each with the named parameters it uses; the last one's
    result as Arrow."""
    *setup, last = sqls
    for sql in setup:
        execute(con, sql, params)
    return con.sql(last, params={k: params[k] for k in named(last)}).to_arrow_table()


def drop_temp_tables(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Drop what ``sql/<name>.sql`` left in the connection (gigabytes at Euclid's size)."""
    for table in temp_tables(name):
        con.execute(f"DROP TABLE IF EXISTS {table}")


def run_script(con: duckdb.DuckDBPyConnection, name: str, params: dict) -> pa.Table:
    """Run ``sql/<name>.sql`` statement by statement; the last one's result as Arrow."""
    return run_statements(con, statements(name), params)


def register_labels(con: duckdb.DuckDBPyConnection, labels: np.ndarray) -> None:
    """``labels(label, "row", value)``: the non-NaN entries of a [rows x labels] matrix.

    A temp table (DuckDB's memory, spilled past its limit) unpivoted from the matrix's columns,
    which reach DuckDB as Arrow without a copy when the matrix is column-major (as
    ``labels.read_labels`` makes it): no long copy of every entry in numpy.
    """
    n_rows, n_labels = labels.shape
    if n_labels == 0:
        con.execute('CREATE OR REPLACE TEMP TABLE labels (label INTEGER, "row" INTEGER, '
                    'value DOUBLE)')
        return
    columns = {"row": pa.array(np.arange(n_rows, dtype=np.int32))}
    columns.update({f"l{j}": pa.array(np.ascontiguousarray(labels[:, j], dtype=np.float64))
                    for j in range(n_labels)})
    con.register("label_columns", pa.table(columns))
    con.execute('CREATE OR REPLACE TEMP TABLE labels AS '
                'SELECT name[2:]::INTEGER AS label, "row", value '
                'FROM (UNPIVOT label_columns ON COLUMNS(* EXCLUDE ("row")) INTO NAME name VALUE value) '
                'WHERE NOT isnan(value)')
    con.unregister("label_columns")


def set_batches(con: duckdb.DuckDBPyConnection, n_rows: int,
                batch_rows: int | None = None) -> list[dict]:
    """Consecutive runs of the row sets of ``label_sets`` whose (set, code) rows, estimated as
    the set's rows times the codes per row, stay under ``batch_rows`` (one set at least), as
    the $first_set / $last_set parameters of sql/feature_label_corr.sql's batch statements."""
    batch_rows = SET_BATCH_ROWS if batch_rows is None else batch_rows
    sizes = con.sql("SELECT set_id, any_value(n) FROM label_sets GROUP BY set_id "
                    "ORDER BY set_id").fetchall()
    per_row = con.sql("SELECT count(*) FROM codes").fetchall()[0][0] / max(n_rows, 1)
    batches: list[dict] = []
    total = 0.0
    for set_id, n in sizes:
        if batches and total + n * per_row <= batch_rows:
            batches[-1]["last_set"] = set_id
            total += n * per_row
        else:
            batches.append({"first_set": set_id, "last_set": set_id})
            total = n * per_row
    return batches


def spearman(con: duckdb.DuckDBPyConnection, labels: np.ndarray, n_features: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """(rho [features x labels], n [labels]) by sql/feature_label_corr.sql over ``codes``.

    The script's statements before the first that names $first_set run once; the rest run once
    per batch of row sets (``set_batches``), each giving the rows of its sets' labels.
    """
    register_labels(con, labels)
    params = {"min_rows": MIN_ROWS, "n_features": n_features,
              "last_row": max(labels.shape[0] - 1, 0)}
    sqls = statements("feature_label_corr")
    first = next(i for i, sql in enumerate(sqls) if "first_set" in named(sql))
    for sql in sqls[:first]:  # these drop the labels table too, when done with it
        execute(con, sql, params)
    parts = [run_statements(con, sqls[first:], {**params, **batch})
             for batch in set_batches(con, labels.shape[0])]
    drop_temp_tables(con, "feature_label_corr")
    rho = np.zeros((n_features, labels.shape[1]))
    for out in parts:
        rho[out.column("feature").to_numpy(), out.column("label").to_numpy()] = \
            out.column("spearman").to_numpy()
    n = np.array([np.count_nonzero(~np.isnan(labels[:, j])) for j in range(labels.shape[1])],
                 np.int64)
    return rho, n


def novelty(con: duckdb.DuckDBPyConnection, basis: np.ndarray, n_features: int) -> np.ndarray:
    """1 - R^2 per feature by sql/feature_novelty.sql over ``codes`` and ``basis``."""
    n_rows = len(basis)
    if basis.shape[1] == 0:  # no label varies: nothing is explained (one zero direction)
        basis = np.zeros((n_rows, 1))
    columns = {"row": pa.array(np.arange(n_rows, dtype=np.int32))}
    columns.update({f"b{k}": pa.array(basis[:, k]) for k in range(basis.shape[1])})
    con.register("basis", pa.table(columns))
    out = run_script(con, "feature_novelty", {"n_rows": n_rows, "n_features": n_features,
                                              "constant_std": CONSTANT_STD})
    con.unregister("basis")  # the basis array is freed with the caller's reference
    result = np.ones(n_features)
    result[out.column("feature").to_numpy()] = out.column("novelty").to_numpy()
    return result


def concentration(con: duckdb.DuckDBPyConnection, n_features: int) -> np.ndarray:
    """Share of each feature's activation mass in its strongest tenth of firing galaxies, by
    sql/feature_concentration.sql over ``codes`` (NaN for a feature that never fires)."""
    out = run_script(con, "feature_concentration", {})
    drop_temp_tables(con, "feature_concentration")
    result = np.full(n_features, np.nan)
    result[out.column("feature").to_numpy()] = out.column("concentration").to_numpy()
    return result
