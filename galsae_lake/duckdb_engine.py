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


def statements(name: str) -> list[str]:
    """The statements of ``sql/<name>.sql`` (separated by ';' at a line end), comments kept."""
    parts = re.split(r";[ \t]*\n", query(name))
    return [part for part in parts
            if any(line.strip() and not line.strip().startswith("--") for line in part.splitlines())]


def temp_tables(name: str) -> list[str]:
    """The temp tables that ``sql/<name>.sql`` creates (and leaves in the connection)."""
    return re.findall(r"^CREATE OR REPLACE TEMP TABLE (\w+)", query(name), re.MULTILINE)


def run_script(con: duckdb.DuckDBPyConnection, name: str, params: dict) -> pa.Table:
    """Run ``sql/<name>.sql`` statement by statement; the last one's result as Arrow.

    Each statement gets the named parameters it uses.
    """
    def used(sql: str) -> dict:
        code = re.sub(r"--[^\n]*", "", sql)  # parameters named in comments are not used
        return {k: params[k] for k in set(_PARAMETER.findall(code))}

    *setup, last = statements(name)
    for sql in setup:
        con.execute(sql, used(sql))
    return con.sql(last, params=used(last)).to_arrow_table()


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


def spearman(con: duckdb.DuckDBPyConnection, labels: np.ndarray, n_features: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """(rho [features x labels], n [labels]) by sql/feature_label_corr.sql over ``codes``."""
    register_labels(con, labels)
    out = run_script(con, "feature_label_corr", {"min_rows": MIN_ROWS, "n_features": n_features,
                                                 "last_row": max(labels.shape[0] - 1, 0)})
    for table in ["labels", *temp_tables("feature_label_corr")]:  # gigabytes at Euclid's size
        con.execute(f"DROP TABLE IF EXISTS {table}")
    rho = np.zeros((n_features, labels.shape[1]))
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
    for table in temp_tables("feature_concentration"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    result = np.full(n_features, np.nan)
    result[out.column("feature").to_numpy()] = out.column("concentration").to_numpy()
    return result
