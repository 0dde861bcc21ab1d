"""Alignment of SAE features and PCA components with Galaxy Zoo labels: the `analyze` stage.

``analyze(lake, model_id)`` reads one model's codes on one split (``sae_activations`` of an SAE
run or ``pca_scores`` of a PCA) and the split's ``votes``, and writes, for partition
``(model_id, split)``:

* ``feature_label_corr``: Spearman rho and n of every feature with every label, exactly as
  ``scipy.stats.spearmanr`` (average ranks for ties) on the rows where the label is not NULL;
  rho = 0 where either side is constant or n <= 10 (the seed's rules). The implicit zeros of
  sparse codes are values: they form one tie group whose average rank is known from counts.
* ``feature_summary``: frequency and its rank, max |rho| and best label (also without the
  smooth-or-featured question: the seed's "secondary" view), novelty = 1 - R^2 of an OLS fit on
  all labels (NaN imputed with the label's median; the rank of the label matrix decided at the
  labels' float32 precision) and its rank (``sql/feature_summary.sql``).
* ``label_null``: per label, the max |rho| over all features of the model reached with the label
  shuffled (``--permutations`` times), beside the observed max (``sql/label_null.sql``): a 2,048-
  feature SAE gets more chances than 64 PCA components, and the null says how much.

How the work is split: DuckDB reads the codes and votes (``sql/analysis_codes.sql``,
``sql/label_values.sql``, run by :func:`galsae_lake.labels.read_labels`) into one connection with an explicit memory limit, thread count and
spill directory. Two engines compute the same numbers (tested to 1e-9): ``duckdb`` (the default,
``galsae_lake.duckdb_engine``: the Spearman matrix and the novelty projections in SQL, the codes
never leaving DuckDB) and ``numpy`` (``galsae_lake.numpy_engine``: BLAS and scipy.sparse on codes
fetched into memory). The permutation null runs in numpy for both; SQL assembles the summary,
the null table and the comparison.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from galsae_lake import duckdb_engine, gz, numpy_engine
from galsae_lake import labels as label_side
from galsae_lake.errors import InputError
from galsae_lake.lake import Lake, query, vectors
from galsae_lake.models import Model, latest_pca, resolve_model
from galsae_lake.numpy_engine import Codes, label_basis, sort_codes

DEFAULT_SPLIT = "test"
DEFAULT_CATALOG = "volunteers"
DEFAULT_PERMUTATIONS = 20
#: the engines of `analyze --engine`, the default first
ENGINES = ("duckdb", "numpy")
#: DuckDB's memory limit for `analyze` unless told (past it, joins and sorts spill to disk)
MEMORY_LIMIT = "4GB"
#: threads over label row sets in numpy (1: the GIL-bound parts made two slower than one)
WORKERS = 1


@dataclass
class MethodResult:
    method: str
    rho: np.ndarray        # [features x labels]
    n: np.ndarray          # [labels]
    novelty: np.ndarray    # [features]
    frequency: np.ndarray  # [features]
    null: np.ndarray       # [permutations x labels]: max |rho| over features, labels shuffled


# ----------------------------------------------------------------------------- the lake side


def split_ids(lake: Lake, encoder: str, split: str) -> np.ndarray:
    """The galaxies of a split: the encoder's embeddings rows, else the ``galaxies`` table."""
    if lake.exists("embeddings", encoder=encoder, split=split):
        ids = lake.arrow("embeddings", columns=["id_str"], encoder=encoder, split=split)
    elif lake.exists("galaxies", split=split):
        ids = lake.arrow("galaxies", columns=["id_str"], split=split)
    else:
        raise InputError(f"split {split!r} has no embeddings for encoder {encoder!r} and no galaxies")
    return ids.column("id_str").to_numpy(zero_copy_only=False).astype(object)


def load_codes(lake: Lake, model: Model, split: str, rows_of_split: np.ndarray, ids: np.ndarray,
               con: duckdb.DuckDBPyConnection) -> np.ndarray:
    """Put the model's non-zero codes on ``split`` into DuckDB; returns each feature's frequency.

    Creates the temp table ``split_codes`` (``sql/analysis_codes.sql``: every galaxy of the split,
    ``row`` its analysis row or -1 without votes) and the view ``codes`` of the rows with votes,
    which the engines read. ``rows_of_split[i]`` is the analysis row of the split's i-th galaxy.
    Frequency is the share of all the split's galaxies where a code is non-zero.
    """
    table, key, feature, value = model.codes
    if not lake.exists(table, **{key: model.model_id, "split": split}):
        raise InputError(f"{table} has no rows for {model.model_id!r} on split {split!r}")
    source = lake.duckdb_source(table, **{key: model.model_id, "split": split})
    con.execute(f'CREATE OR REPLACE TEMP VIEW codes_source AS SELECT id_str, "{feature}" AS '
                f'feature, "{value}" AS value FROM {source}')
    con.register("split_rows", pa.table({"id_str": pa.array(ids, pa.string()),
                                         "row": pa.array(rows_of_split.astype(np.int32))}))
    con.execute("CREATE OR REPLACE TEMP TABLE split_codes AS " + query("analysis_codes"),
                {"n_features": model.n_features})
    con.unregister("split_rows")
    con.execute('CREATE OR REPLACE TEMP VIEW codes AS SELECT * FROM split_codes WHERE "row" >= 0')
    counts = con.sql("SELECT feature, count(*) AS n FROM split_codes GROUP BY feature").to_arrow_table()
    frequency = np.zeros(model.n_features)
    frequency[counts.column("feature").to_numpy()] = counts.column("n").to_numpy()
    return frequency / max(len(ids), 1)


def read_codes(lake: Lake, model: Model, split: str, rows_of_split: np.ndarray, ids: np.ndarray,
               con: duckdb.DuckDBPyConnection) -> Codes:
    """The model's non-zero codes on ``split`` as numpy Codes (:func:`load_codes`, then
    :func:`fetch_codes`), for callers that compute in memory (the demo's planted factors)."""
    frequency = load_codes(lake, model, split, rows_of_split, ids, con)
    n_rows = int(rows_of_split.max()) + 1 if len(rows_of_split) else 1
    return fetch_codes(con, model.kind, model.n_features, frequency, n_rows)


def use_codes(con: duckdb.DuckDBPyConnection, codes: Codes) -> None:
    """Make numpy ``codes`` the connection's ``codes`` relation (for codes made in memory)."""
    con.register("memory_codes", pa.table({"feature": codes.feature, "row": codes.row,
                                           "value": codes.value}))
    con.execute("CREATE OR REPLACE TEMP VIEW codes AS SELECT * FROM memory_codes")


def fetch_codes(con: duckdb.DuckDBPyConnection, method: str, n_features: int,
                frequency: np.ndarray, n_rows: int) -> Codes:
    """The connection's ``codes`` as numpy Codes, sorted by (feature, value) (sort_codes)."""
    result = con.sql('SELECT feature, "row", value FROM codes').to_arrow_table()
    f = result.column("feature").to_numpy()
    r = result.column("row").to_numpy()
    v = result.column("value").to_numpy()
    del result
    f, r, v = sort_codes(f, r, v, n_rows)
    return Codes(method, n_features, f, r, v, frequency)


def dense_relu_activations(lake: Lake, model: Model, X: np.ndarray) -> np.ndarray:
    """The seed's dense ReLU codes of embeddings ``X`` under SAE ``model`` [rows x features]."""
    from galsae_lake.sae import encode_embeddings  # imported here: torch only for this option
    from galsae_lake.train import load_sae

    return encode_embeddings(load_sae(lake, model.model_id), X, dense=True)


def compute(con: duckdb.DuckDBPyConnection, method: str, n_features: int, frequency: np.ndarray,
            labels: np.ndarray, permutations: int, seed: int = 0, engine: str = "duckdb",
            workers: int = 1, codes: Codes | None = None,
            control: np.ndarray | None = None) -> MethodResult:
    """Spearman matrix, novelty and the permutation null of the connection's ``codes``.

    ``codes``: numpy codes to analyze instead (made the ``codes`` relation first). ``labels``:
    [analysis rows x labels], NaN where not asked. ``control`` ([rows x columns], optional):
    non-morphological properties that novelty is also fitted on (1 - R^2 on the labels and the
    controls together). The null always runs in numpy.
    """
    if codes is not None:
        use_codes(con, codes)
    def basis() -> np.ndarray:  # [rows x rank]: as large as the labels, so made when needed
        return label_basis(labels if control is None else np.hstack([labels, control]))

    n_rows = len(labels)
    null = np.zeros((permutations, labels.shape[1]))
    if engine == "duckdb":
        rho, n = duckdb_engine.spearman(con, labels, n_features)
        novelty = duckdb_engine.novelty(con, basis(), n_features)  # not held through the sorts
        if permutations:
            codes = codes if codes is not None else fetch_codes(con, method, n_features, frequency, n_rows)
            null = numpy_engine.spearman(codes, labels, permutations, seed, threads=workers)[2]
    else:
        codes = codes if codes is not None else fetch_codes(con, method, n_features, frequency, n_rows)
        rho, n, null = numpy_engine.spearman(codes, labels, permutations, seed, threads=workers)
        novelty = numpy_engine.novelty(codes, basis())
    return MethodResult(method, rho, n, novelty, frequency, null)


def analyze(lake: Lake, model_id: str, split: str = DEFAULT_SPLIT,
            catalog: str | list[str] = DEFAULT_CATALOG, exclude_question: str | None = None,
            permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0,
            reference_variant: bool = False, skip_empty_labels: bool = False,
            engine: str = "duckdb", threads: int | None = None,
            memory_limit: str = MEMORY_LIMIT, temp_directory: str | None = None,
            control: str | None = None) -> dict[str, Any]:
    """Write feature_label_corr, feature_summary and label_null for (model_id, split).

    ``catalog``: one catalog or several ("a,b" or a list; labels then named ``<catalog>:<label>``),
    votes of any tree or plain labels (:mod:`galsae_lake.labels`); labels with no value on the
    split are left out and listed in the result's ``empty_labels``. ``exclude_question`` None
    leaves out the tree's root question in the secondary view (none for plain labels).
    ``reference_variant`` adds method ``sae_relu``: the reference code's (the seed's) dense ReLU
    activations of the same SAE (pre-activation > 0, no top-k), computed from the split's
    embeddings. ``seed`` is the random seed of the label shuffles. ``engine``: duckdb
    (SQL, the default) or numpy. DuckDB runs with ``threads`` (default: all cores) under
    ``memory_limit``, spilling to a fresh folder inside ``temp_directory`` (default: the system's
    temporary folder), removed afterwards; the summary reports all three. Returns a summary dict.
    ``control`` (``truth`` or a votes catalogue) fits novelty on the labels plus those
    non-morphological columns (:func:`galsae_lake.discovery.control_matrix`); feature_summary's
    discovery columns come from :mod:`galsae_lake.discovery`.
    """
    started = time.perf_counter()
    if permutations < 0:
        raise InputError("--permutations must be >= 0")
    catalog = label_side.parse_catalogs(catalog)  # one or several catalogs (labels.py)
    if engine not in ENGINES:
        raise InputError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if temp_directory is not None and not os.path.isdir(temp_directory):
        raise InputError(f"--temp-directory {temp_directory!r} is not a folder")
    model = resolve_model(lake, model_id)
    if reference_variant and model.kind != "sae":
        raise InputError("--reference-variant needs an SAE run id (dense ReLU codes of its latents)")
    spill = tempfile.TemporaryDirectory(prefix="galsae-analyze-", dir=temp_directory)
    con = duckdb.connect(":memory:")
    threads = int(threads or os.cpu_count() or 1)
    try:
        con.execute(f"SET threads = {threads}")
        try:
            con.execute("SET memory_limit = $limit", {"limit": memory_limit})
        except duckdb.Error as exc:
            raise InputError(f"--memory-limit {memory_limit!r} is not a size DuckDB takes "
                             f"(e.g. 4GB): {str(exc).splitlines()[0]}") from None
        con.execute("SET temp_directory = $dir", {"dir": spill.name})  # past the limit: spill here
        con.execute("SET preserve_insertion_order = false")  # no order is relied on: less memory
        duck = {"threads": threads, "memory_limit": memory_limit, "temp_directory": spill.name}
        result = _analyze(lake, con, model, split, catalog, exclude_question, permutations, seed,
                          reference_variant, skip_empty_labels, engine, started, control)
        return {**result, "engine": engine, "duckdb": duck}
    finally:
        con.close()
        spill.cleanup()


def _analyze(lake, con, model, split, catalog, exclude_question, permutations, seed,
             reference_variant, skip_empty_labels, engine, started, control=None):
    from galsae_lake import discovery

    model_id = model.model_id
    ids = split_ids(lake, model.encoder, split)
    label_set = label_side.read_labels(lake, ids, split, catalog, exclude_question, con)
    exclude_question = label_set.exclude_question
    voted = label_set.voted()
    if not voted.any():
        raise InputError(f"no labels for split {split!r} in catalog {','.join(catalog)!r} match the "
                         f"{len(ids)} galaxies of {model.model_id!r}")
    # labels with no value on the split are left out (and named in the result), not an error
    filled = np.array([(~np.isnan(label_set.values[voted, j])).any()
                       for j in range(len(label_set.names))], bool)
    empty = [name for name, ok in zip(label_set.names, filled) if not ok]
    label_set = label_set.select(voted, filled)  # the analysis rows, column-major
    rows_of_split = np.full(len(ids), -1, np.int64)
    rows_of_split[voted] = np.arange(int(voted.sum()))
    labels = label_set.values
    controls = None
    if control:
        controls = discovery.control_matrix(lake, ids[voted], split, control)[0]
    frequency = load_codes(lake, model, split, rows_of_split, ids, con)
    timings = {"read": time.perf_counter() - started}
    results = [compute(con, model.kind, model.n_features, frequency, labels, permutations, seed,
                       engine, WORKERS, control=controls)]
    concentrated = duckdb_engine.concentration(con, model.n_features)
    control_r2 = None
    if controls is not None:  # the same projection in either engine (tested equal to 1e-9)
        control_r2 = 1.0 - duckdb_engine.novelty(con, label_basis(controls), model.n_features)
    con.execute("DROP TABLE split_codes")
    timings["compute"] = time.perf_counter() - started - timings["read"]
    if reference_variant:
        X = vectors(lake.arrow("embeddings", columns=["id_str", "embedding"],
                               encoder=model.encoder, split=split))
        dense = dense_relu_activations(lake, model, X)
        relu = Codes.from_dense("sae_relu", dense[voted], frequency_rows=dense)
        results.append(compute(con, relu.method, relu.n_features, relu.frequency, labels,
                               permutations, seed, engine, WORKERS, codes=relu, control=controls))
    mark = time.perf_counter()
    tables = summarize(con, results, exclude_question, label_set.names, label_set.questions)
    siblings = discovery.sibling_runs(lake, model_id) if model.kind == "sae" else []
    stable = discovery.stability(lake, model_id, siblings) if siblings else None
    if stable is None:  # no other seed to compare with (or a PCA): stability unknown
        stable = np.full(model.n_features, np.nan)
    tables["feature_summary"] = discovery.add_columns(
        tables["feature_summary"], model.kind, stable, concentrated, control_r2,
        band=discovery.FREQUENCY_BAND if model.kind == "sae" else (0.0, 1.0))
    timings["summarize"] = time.perf_counter() - mark
    mark = time.perf_counter()
    parameters = {"model_id": model_id, "split": split, "catalog": ",".join(catalog),
                  "exclude_question": exclude_question, "permutations": permutations,
                  "seed": seed, "reference_variant": reference_variant,
                  "skip_empty_labels": skip_empty_labels, "control": control}
    partition = {"model_id": model_id, "split": split}
    info = {"kind": model.kind, "encoder": model.encoder, "n_features": model.n_features,
            "catalog": ",".join(catalog), "rows": int(voted.sum()), "galaxies": int(len(ids)),
            "empty_labels": empty, "labels": label_set.names, "stability_runs": siblings,
            "trees": {c.name: c.tree.name if c.tree else None for c in label_set.catalogs}}
    upstream = [model.codes.table, *sorted({c.table for c in label_set.catalogs})]
    with lake.transaction("analyze", parameters, upstream=upstream) as tx:
        for name, table in tables.items():
            tx.write(name, table, partition=partition, info=info)
    timings["write"] = time.perf_counter() - mark
    main = results[0]
    best = float(np.abs(main.rho).max()) if main.rho.size else 0.0
    return {"model_id": model_id, "kind": model.kind, "split": split, "rows": int(voted.sum()),
            "features": model.n_features, "labels": len(label_set.names), "empty_labels": empty,
            "max_abs_spearman": best, "median_novelty": float(np.median(main.novelty)),
            "null_q95_median": float(np.median(np.quantile(main.null, 0.95, axis=0)))
            if permutations else None,
            "seconds": time.perf_counter() - started, "timings": timings}


def _by_label(method: str, row_name: str, matrix: np.ndarray, value_name: str) -> pa.Table:
    """A [rows x labels] matrix as a long table: method, row_name, label_index, value_name."""
    rows, labels = matrix.shape
    return pa.table({
        "method": pa.repeat(method, rows * labels),
        row_name: pa.array(np.repeat(np.arange(rows, dtype=np.int32), labels)),
        "label_index": pa.array(np.tile(np.arange(labels, dtype=np.int32), rows)),
        value_name: pa.array(matrix.reshape(-1)),
    })


def summarize(con: duckdb.DuckDBPyConnection, results: list[MethodResult],
              exclude_question: str | None, label_names: list[str] | None = None,
              questions: list[str] | None = None) -> dict[str, pa.Table]:
    """feature_label_corr, feature_summary (sql/feature_summary.sql) and label_null tables.

    ``label_names`` / ``questions``: the analyzed labels and their questions (default: Euclid's)."""
    label_names = list(gz.LABEL_NAMES) if label_names is None else list(label_names)
    if questions is None:
        questions = [gz.question_of(name) for name in label_names]
    L = len(label_names)
    corr_parts, stat_parts, null_parts = [], [], []
    for result in results:
        F = result.rho.shape[0]
        corr_parts.append(_by_label(result.method, "feature", result.rho, "spearman")
                          .append_column("n", pa.array(np.tile(result.n, F))))
        stat_parts.append(pa.table({
            "method": pa.repeat(result.method, F),
            "feature": pa.array(np.arange(F, dtype=np.int32)),
            "frequency": pa.array(result.frequency),
            "novelty": pa.array(result.novelty),
        }))
        null_parts.append(_by_label(result.method, "permutation", result.null, "max_abs_spearman"))
    con.register("label_names", pa.table({
        "label": pa.array(label_names, pa.string()),
        "label_index": pa.array(np.arange(L, dtype=np.int32)),
        "question": pa.array(questions, pa.string())}))
    corr_values = pa.concat_tables(corr_parts)
    con.register("corr_values", corr_values)
    con.register("feature_stats", pa.concat_tables(stat_parts))
    con.register("null_samples", pa.concat_tables(null_parts))
    params = {"exclude_question": exclude_question or ""}
    names = pa.array(label_names, pa.string())
    corr = pa.table({  # already in (method, feature, label) order
        "method": corr_values.column("method"), "feature": corr_values.column("feature"),
        "label": pa.DictionaryArray.from_arrays(
            corr_values.column("label_index").combine_chunks(), names).cast(pa.string()),
        "spearman": corr_values.column("spearman"), "n": corr_values.column("n")})
    summary = con.sql(query("feature_summary"), params=params).to_arrow_table()
    null = con.sql(query("label_null")).to_arrow_table()
    return {"feature_label_corr": corr, "feature_summary": summary, "label_null": null}


def compare(lake: Lake, sae_id: str, pca_id: str | None = None, split: str = DEFAULT_SPLIT):
    """SAE vs PCA by frequency-rank group (sql/sae_vs_pca.sql) as a Polars DataFrame.

    ``pca_id`` defaults to the newest analyzed PCA of the SAE's encoder.
    """
    model = resolve_model(lake, sae_id)
    if model.kind != "sae":
        raise InputError(f"{sae_id!r} is a PCA; compare takes an SAE run id")
    pca_id = pca_id or latest_pca(lake, model.encoder)
    for model_id in (sae_id, pca_id):
        if not lake.exists("feature_summary", model_id=model_id, split=split):
            raise InputError(f"{model_id!r} is not analyzed on split {split!r}; run galsae-lake "
                             f"analyze --model {model_id} --split {split} first")
    con = lake.connect(["feature_summary", "label_null"])
    return con.sql(query("sae_vs_pca"), params={"sae_id": sae_id, "pca_id": pca_id,
                                                "split": split}).pl()


def analyze_with_pca(lake: Lake, sae_id: str, split: str = DEFAULT_SPLIT, **options: Any
                     ) -> tuple[list[dict[str, Any]], Any]:
    """Analyze SAE run ``sae_id`` and the newest PCA of its encoder on ``split``, then compare
    them (:func:`compare`). ``options`` go to :func:`analyze` (``reference_variant`` to the SAE's
    only). Returns both analyses' summaries and the comparison frame."""
    model = resolve_model(lake, sae_id)
    if model.kind != "sae":
        raise InputError(f"{sae_id!r} is a PCA; --with-pca needs an SAE run id")
    pca_id = latest_pca(lake, model.encoder)
    results = [analyze(lake, sae_id, split, **options)]
    options.pop("reference_variant", None)
    results.append(analyze(lake, pca_id, split, **options))
    return results, compare(lake, sae_id, pca_id, split)
