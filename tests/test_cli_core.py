"""The CLI shell: `tables`, `sql`, and the one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from galsae_lake.lake import Lake, vector_array
from galsae_lake.testing import assert_one_line_error, assert_refused, cli, run_cli


@pytest.fixture()
def lake(tmp_path):
    lake = Lake(tmp_path / "lake")
    matrix = np.arange(12, dtype=np.float32).reshape(4, 3)
    with lake.transaction("test") as tx:
        tx.write("galaxies", pl.DataFrame({
            "id_str": ["a", "b", "c", "d"], "source": "test", "ra": [1.0, 2.0, 3.0, 4.0],
            "dec": [None, 0.5, 0.5, 0.5], "split": ["train", "train", "test", "test"]}))
        tx.write("embeddings", pa.table({"id_str": ["a", "b", "c", "d"],
                                         "embedding": vector_array(matrix)}),
                 partition={"encoder": "enc", "split": "train"})
    return lake


def test_tables_lists_rows_partitions_and_size(lake):
    result = cli("tables", "--format", "json", lake=lake.root)
    assert result.exit_code == 0, result.output
    rows = {row["table"]: row for row in map(json.loads, result.output.splitlines())}
    assert rows["galaxies"]["rows"] == 4 and rows["galaxies"]["partitions"] == 2
    assert rows["embeddings"]["rows"] == 4 and rows["embeddings"]["bytes"] > 0
    assert rows["votes"]["rows"] == 0
    text = cli("tables", lake=lake.root).output
    assert "galaxies" in text and ("KB" in text or " B" in text)
    # from a table's name to the code that writes it, in one hop
    assert rows["sae_activations"]["written_by"] == "train-sae (galsae_lake.train.train_sae)"
    assert rows["feature_summary"]["written_by"] == (
        "analyze (galsae_lake.analysis.analyze); sql/feature_summary.sql")


def test_every_table_names_code_that_exists():
    """Each registered producer is an importable function and each named query a file in sql/."""
    import importlib

    from galsae_lake.lake import TABLES, sql_dir

    for spec in TABLES.values():
        assert spec.producers, spec.name
        for command, code in spec.producers:
            module, _, function = code.rpartition(".")
            assert callable(getattr(importlib.import_module(module), function)), (spec.name, code)
            words = [w for w in command.split() if not w.startswith("-")]
            assert cli(*words, "--help").exit_code == 0, (spec.name, command)
        if spec.sql:
            assert (sql_dir() / spec.sql).is_file(), spec.sql


def test_sql_formats(lake, tmp_path):
    query = "SELECT split, count(*) AS n FROM galaxies GROUP BY split ORDER BY split"
    result = cli("sql", query, "--format", "csv", lake=lake.root)
    assert result.output.splitlines() == ["split,n", "test,2", "train,2"]
    result = cli("sql", query, "--format", "json", lake=lake.root)
    # JSON lines: one object per row, streamed
    assert [json.loads(line) for line in result.output.splitlines()] == [
        {"split": "test", "n": 2}, {"split": "train", "n": 2}]
    assert "train" in cli("sql", query, lake=lake.root).output
    out = tmp_path / "result.parquet"
    result = cli("sql", query, "--format", "parquet", "--output", out, lake=lake.root)
    assert result.exit_code == 0
    assert pl.read_parquet(out)["n"].to_list() == [2, 2]
    result = cli("sql", "SELECT len(embedding) AS d, typeof(embedding) AS t FROM embeddings LIMIT 1",
                 "--format", "csv", lake=lake.root)
    assert result.output.splitlines()[1] == "3,FLOAT[3]"
    result = cli("sql", "-", "--format", "csv", lake=lake.root, input="SELECT 42 AS x")
    assert result.output.splitlines() == ["x", "42"]


@pytest.mark.parametrize("statement, words", [
    ("COPY galaxies TO 'stolen.csv'", ["refused a COPY"]),
    ("CREATE TABLE t AS SELECT 1", ["refused a CREATE"]),
    ("INSERT INTO galaxies VALUES ('x', 's', 1, 1)", ["refused a INSERT"]),
    ("ATTACH 'other.duckdb'", ["refused a ATTACH"]),
    ("SELECT 1; DROP VIEW galaxies", ["refused a DROP"]),
    ("SET enable_external_access = false", ["refused a SET"]),
    ("SELEC * FROM galaxies", ["syntax error"]),
    ("SELECT * FROM no_such_table", ["no_such_table"]),
])
def test_sql_never_modifies_the_lake(lake, statement, words):
    assert_refused(lake.root, ["sql", statement], *words)


def test_sql_output_inside_the_lake_is_refused(lake):
    assert_refused(lake.root, ["sql", "SELECT 1", "--format", "csv", "--output", lake.root / "x.csv"],
                   "inside the lake")


def test_parquet_needs_output(lake):
    result = cli("sql", "SELECT 1", "--format", "parquet", lake=lake.root)
    assert result.exit_code == 2


def test_lake_that_is_a_file(tmp_path):
    afile = tmp_path / "lake"
    afile.write_text("not a lake")
    assert_one_line_error(cli("tables", lake=afile), "is a file")


@pytest.mark.slow
def test_newer_lake_version_in_a_real_process(lake):
    sidecar = lake.root / "galaxies" / "_table.json"
    info = json.loads(sidecar.read_text())
    info["schema_version"] = 99
    sidecar.write_text(json.dumps(info))
    for args in (["tables"], ["sql", "SELECT 1"]):
        assert_one_line_error(run_cli(*args, lake=lake.root), "schema version 99")


def test_every_command_help_has_an_example():
    from galsae_lake.cli import main

    def walk(group, prefix):
        for name, command in group.commands.items():
            yield [*prefix, name], command
            if hasattr(command, "commands"):
                yield from walk(command, [*prefix, name])

    for path, command in walk(main, []):
        result = cli(*path, "--help")
        assert result.exit_code == 0
        assert "Example:" in result.output, path
        assert "galsae-lake" in result.output.split("Example:")[1], path


@pytest.mark.slow
def test_training_and_embedding_code_imports_without_duckdb():
    """The GPU checks run on a machine without duckdb (scripts/gpu_checks.sh): the code they
    import must not need it (the SQL parts import it where they use it)."""
    code = ("import sys, galsae_lake.train, galsae_lake.encoders, galsae_lake.sources.synthetic; "
            "print('duckdb' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _commands(group=None, prefix=()):
    import click

    from galsae_lake.cli import main

    group = group or main
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_comma_lists_parse_one_way():
    import click

    from galsae_lake.cli_options import CommaList

    assert CommaList().convert(" train, test,,train ", None, None) == ("train", "test")
    assert CommaList(("html", "png")).convert("PNG,html", None, None) == ("png", "html")
    for bad, kind in ((" , ", CommaList()), ("html,pdf", CommaList(("html", "png")))):
        with pytest.raises(click.BadParameter):
            kind.convert(bad, None, None)


def test_shared_options_mean_one_thing_on_every_command():
    """--format is always a result's output format; --splits always a comma list; --quiet a flag."""
    from galsae_lake.cli_options import OUTPUT_FORMATS, CommaList

    seen = set()
    for name, command in _commands():
        for param in command.params:
            flags = set(param.opts)
            if "--format" in flags and not param.hidden:
                assert tuple(param.type.choices) == OUTPUT_FORMATS, name
                seen.add("format")
            if "--splits" in flags:
                assert isinstance(param.type, CommaList), name
                seen.add("splits")
            if "--quiet" in flags:
                assert param.is_flag, name
                seen.add("quiet")
    assert seen == {"format", "splits", "quiet"}
    quiet = {" ".join(n) for n, c in _commands() if any("--quiet" in p.opts for p in c.params)}
    assert {"synth", "ingest hf", "embed", "train-sae", "demo"} <= quiet
