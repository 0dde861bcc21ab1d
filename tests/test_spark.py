"""Spark reads the lake as it is: every table with spark.read.parquet(<lake>/<table>), its Hive
partition keys found as columns, and one sql/ query's aggregations in Spark SQL equal DuckDB's.

Needs pyspark (the test extra) and a Java runtime: skipped without java, unless
GALSAE_REQUIRE_SPARK=1 (CI installs Debian's headless JRE and sets it)."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from galsae_lake.lake import query, table_spec

if shutil.which("java") is None:
    if os.environ.get("GALSAE_REQUIRE_SPARK"):
        raise RuntimeError("GALSAE_REQUIRE_SPARK is set but there is no java on PATH")
    pytest.skip("no Java runtime (apt-get install default-jre-headless)", allow_module_level=True)
pyspark = pytest.importorskip("pyspark")


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[1]").appName("galsae-lake-test")
               .config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", "2")
               .config("spark.driver.memory", "1g")
               .config("spark.sql.session.timeZone", "UTC")
               .getOrCreate())
    yield session
    session.stop()


def spark_sql(text: str) -> str:
    """A DuckDB query of sql/ in Spark's dialect: named parameters ``$x`` are ``:x`` there."""
    return re.sub(r"\$(\w+)", r":\1", text)


@pytest.mark.slow  # fresh processes / a JVM / a Ray cluster
def test_spark_reads_every_table_with_its_partition_columns(small_lake, spark):
    lake, _, _ = small_lake
    tables = lake.tables()
    assert {"galaxies", "images", "votes", "embeddings", "sae_runs", "sae_activations",
            "pca_scores", "feature_summary", "label_null"} <= set(tables)
    for table in tables:
        frame = spark.read.parquet(str(lake.root / table))
        keys = table_spec(table).partition_by
        assert set(keys) <= set(frame.columns), (table, frame.columns)
        # one Spark job a table: rows per partition, keyed as the lake lists its partitions
        got = {tuple(str(v) for v in r[:-1]): r[-1]
               for r in frame.groupBy(*keys).count().collect()}
        want = {tuple(p[k] for k in keys): lake.read(table, **p).height
                for p in (lake.partitions(table) if keys else [{}])}
        assert got == want, table
    emb = spark.read.parquet(str(lake.root / "embeddings"))
    assert emb.schema["embedding"].dataType.simpleString() == "array<float>"


@pytest.mark.slow  # fresh processes / a JVM / a Ray cluster
def test_spark_sql_runs_a_lake_query_with_duckdbs_result(small_lake, spark):
    lake, run_id, pca_id = small_lake
    params = {"sae_id": run_id, "pca_id": pca_id, "split": "test"}
    text = query("sae_vs_pca")
    con = lake.connect()
    duck = con.sql(text, params=params).fetchall()
    columns = con.sql(text, params=params).columns
    for table in ("feature_summary", "label_null"):
        spark.read.parquet(str(lake.root / table)).createOrReplaceTempView(table)
    rows = [tuple(r) for r in spark.sql(spark_sql(text), args=params).collect()]
    assert len(duck) >= 2 and len(rows) == len(duck)
    for a, b in zip(sorted(duck, key=str), sorted(rows, key=str)):
        for name, x, y in zip(columns, a, b):
            if isinstance(x, float) or isinstance(y, float):
                assert float(y) == pytest.approx(float(x), rel=1e-9, abs=1e-12), name
            else:
                assert x == y, name
