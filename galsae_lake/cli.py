"""The ``galsae-lake`` command: each subcommand parses options and calls one library function.

Errors the user can cause (:class:`~galsae_lake.errors.GalsaeError`) end in one line,
``Error: ...``, with exit code 1; usage errors exit with 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import polars as pl

from galsae_lake import __version__
from galsae_lake.errors import GalsaeError
from galsae_lake.lake import Lake, run_sql

FORMATS = ("table", "csv", "json", "parquet")


class Group(click.Group):
    """Turns expected failures into one clear line instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except GalsaeError as exc:
            raise click.ClickException(str(exc)) from None


def lake_of(ctx: click.Context) -> Lake:
    """The lake named by ``--lake`` / ``$GALSAE_LAKE`` / ``./lake`` (opened on first use)."""
    root = ctx.find_root().params.get("lake")
    obj = ctx.find_root().ensure_object(dict)
    if "lake" not in obj:
        obj["lake"] = Lake(root)
    return obj["lake"]


def example(text: str) -> str:
    """A help epilog with an example that runs as written (click keeps \\b blocks verbatim)."""
    return "\b\nExample:\n  " + text


def write_frame(frame: pl.DataFrame, fmt: str, output: str | None, lake: Lake | None = None) -> None:
    """Print or save a result as table, csv, json (array of objects) or parquet."""
    if output is not None and lake is not None:
        target = Path(output).expanduser().absolute()
        if target == lake.root or lake.root in target.parents:
            raise GalsaeError(f"--output {output} is inside the lake; write results elsewhere")
    if fmt == "parquet" and output is None:
        raise click.UsageError("--format parquet needs --output FILE")
    if fmt == "table":
        with pl.Config(tbl_rows=200, tbl_cols=-1, fmt_str_lengths=80, tbl_width_chars=200,
                       tbl_hide_dataframe_shape=False):
            text = str(frame)
    elif fmt == "csv":
        text = frame.write_csv()
    elif fmt == "json":
        text = json.dumps(frame.to_dicts(), default=str, indent=1) + "\n"
    else:
        frame.write_parquet(output)
        click.echo(f"wrote {frame.height} rows to {output}", err=True)
        return
    if output is None:
        click.echo(text, nl=not text.endswith("\n"))
    else:
        Path(output).write_text(text if text.endswith("\n") else text + "\n")
        click.echo(f"wrote {frame.height} rows to {output}", err=True)


def format_options(func):
    func = click.option("--output", "-o", type=click.Path(dir_okay=False),
                        help="Write the result to FILE instead of the terminal.")(func)
    func = click.option("--format", "fmt", type=click.Choice(FORMATS), default="table",
                        show_default=True, help="Output format.")(func)
    return func


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=example("galsae-lake --lake lake demo"))
@click.option("--lake", type=click.Path(file_okay=True), envvar="GALSAE_LAKE", default=None,
              help="Lake root folder [default: $GALSAE_LAKE, else ./lake].")
@click.version_option(__version__, prog_name="galsae-lake")
def main(lake: str | None) -> None:
    """galsae-lake: what image models learned about galaxies, as a Parquet lake.

    Every command materializes Hive-partitioned Parquet tables under one lake root;
    `galsae-lake sql` queries them with DuckDB.
    """


@main.command(epilog=example("galsae-lake tables --format csv"))
@format_options
@click.pass_context
def tables(ctx: click.Context, fmt: str, output: str | None) -> None:
    """List the lake's tables with their rows, partitions and size on disk."""
    lake = lake_of(ctx)
    lake.check_versions()
    rows = lake.summary()
    frame = pl.DataFrame(rows, schema={"table": pl.String, "rows": pl.Int64,
                                       "partitions": pl.Int64, "bytes": pl.Int64,
                                       "updated_at": pl.String})
    if fmt == "table":
        frame = frame.with_columns(pl.col("bytes").map_elements(_human, return_dtype=pl.String)
                                   .alias("size")).drop("bytes")
    write_frame(frame, fmt, output, lake)


def _human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


@main.command(epilog=example(
    "galsae-lake sql \"SELECT split, count(*) AS n FROM galaxies GROUP BY split\""))
@click.argument("query")
@format_options
@click.pass_context
def sql(ctx: click.Context, query: str, fmt: str, output: str | None) -> None:
    """Run a read-only DuckDB QUERY over the lake (one view per table, named as the table).

    Only SELECT-like statements run (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN): the
    lake is never modified. Use "-" to read the query from standard input.
    """
    lake = lake_of(ctx)
    if query == "-":
        query = sys.stdin.read()
    relation = run_sql(lake, query)
    if relation is None:
        return
    write_frame(relation.pl(), fmt, output, lake)


# ---- analysis ----
@main.command(epilog=example("galsae-lake pca --encoder zoobot-synth --n-components 64"))
@click.option("--encoder", required=True, help="Encoder whose embeddings to decompose.")
@click.option("--n-components", default=64, show_default=True, type=click.IntRange(min=1),
              help="Principal components to keep.")
@click.option("--fit-split", default="train", show_default=True,
              help="Split to standardize and fit on (the SAE's training split).")
@click.pass_context
def pca(ctx: click.Context, encoder: str, n_components: int, fit_split: str) -> None:
    """Fit a PCA baseline on standardized embeddings; write scores for every split."""
    from galsae_lake.pca import fit_pca
    click.echo(fit_pca(lake_of(ctx), encoder, n_components, fit_split))


@main.command(epilog=example("galsae-lake analyze --model pca-zoobot-synth-50c4c7 --split test"))
@click.option("--model", "model_id", required=True,
              help="An SAE run_id (sae-...) or a pca_id (pca-...).")
@click.option("--split", default="test", show_default=True, help="Split to analyze.")
@click.option("--catalog", default="volunteers", show_default=True, help="Votes catalog.")
@click.option("--exclude-question", default="smooth-or-featured", show_default=True,
              help="Question left out of the secondary view ('' keeps all labels).")
@click.option("--permutations", default=20, show_default=True, type=click.IntRange(min=0),
              help="Label shuffles for the permutation null (0 = none).")
@click.option("--seed", default=0, show_default=True, help="Seed of the shuffles.")
@click.option("--seed-variant", is_flag=True,
              help="Also analyze the seed's dense ReLU activations (method sae_relu).")
@click.option("--skip-empty-labels", is_flag=True,
              help="Analyze without labels that have no votes on the split (rho 0, n 0).")
@click.option("--with-pca", is_flag=True,
              help="For an SAE: also analyze the newest PCA of its encoder and print the comparison.")
@click.pass_context
def analyze(ctx: click.Context, model_id: str, split: str, catalog: str, exclude_question: str,
            permutations: int, seed: int, seed_variant: bool, skip_empty_labels: bool,
            with_pca: bool) -> None:
    """Spearman of every feature with every label, novelty and a permutation null.

    Writes feature_label_corr, feature_summary and label_null for (MODEL, SPLIT).
    """
    from galsae_lake import analysis
    lake = lake_of(ctx)
    models = [model_id]
    if with_pca:
        model = analysis.resolve_model(lake, model_id)
        if model.kind != "sae":
            raise GalsaeError("--with-pca needs an SAE run id")
        models.append(analysis.latest_pca(lake, model.encoder))
    for name in models:
        r = analysis.analyze(lake, name, split=split, catalog=catalog,
                             exclude_question=exclude_question, permutations=permutations,
                             seed=seed, seed_variant=seed_variant and name == model_id,
                             skip_empty_labels=skip_empty_labels)
        null = "" if r["null_q95_median"] is None else f", null q95 {r['null_q95_median']:.3f}"
        click.echo(f"{name} {split}: {r['features']} features x {r['labels']} labels on "
                   f"{r['rows']} galaxies; max |rho| {r['max_abs_spearman']:.3f}{null}, "
                   f"median novelty {r['median_novelty']:.3f} ({r['seconds']:.1f} s)")
    if with_pca:
        write_frame(analysis.compare(lake, model_id, models[1], split), "table", None)
