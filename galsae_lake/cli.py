"""The ``galsae-lake`` command: each subcommand parses options and calls one library function.

Errors the user can cause (:class:`~galsae_lake.errors.GalsaeError`) end in one line,
``Error: ...``, with exit code 1; usage errors exit with 2.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from galsae_lake import __version__
from galsae_lake.cli_options import (IMAGE_FORMATS, CommaList, catalog_file_options, catalog_option,
                                     device_option,
                                     image_format_option, output_options, quiet_option,
                                     split_option, splits_option)
from galsae_lake.errors import GalsaeError, first_line
from galsae_lake.lake import Lake, user_sql


class Group(click.Group):
    """Turns expected failures into one clear line instead of a traceback (``--debug`` keeps
    the traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 (sorted by failure_line; the rest re-raised)
            line = None if ctx.find_root().params.get("debug") else failure_line(exc)
            if line is None:
                raise
            raise click.ClickException(line) from None


def failure_line(exc: BaseException) -> str | None:
    """One line for an expected failure: the project's own errors, and what the operating
    system, Arrow, Polars and DuckDB raise for a full disk, a read-only lake, a corrupt file,
    too little memory. ``None`` for anything else (a bug: its traceback is worth seeing)."""
    from galsae_lake.errors import describe_os_error, is_no_space

    if isinstance(exc, GalsaeError):
        return str(exc)
    if is_no_space(exc):
        return describe_os_error(exc) if isinstance(exc, OSError) else (
            f"no space left on the lake's disk: {first_line(exc)}")
    if isinstance(exc, MemoryError):
        return "out of memory: ask for less at once (fewer rows, a smaller batch or model)"
    if isinstance(exc, pa.ArrowException):
        return f"Arrow: {first_line(exc)}"
    if isinstance(exc, OSError):
        return describe_os_error(exc)
    if isinstance(exc, pl.exceptions.PolarsError):
        return f"Polars: {first_line(exc)}"
    duckdb = sys.modules.get("duckdb")
    if duckdb is not None and isinstance(exc, duckdb.Error):
        return f"DuckDB: {first_line(exc)}"
    return None


def lake_of(ctx: click.Context) -> Lake:
    """The lake named by ``--lake`` / ``$GALSAE_LAKE`` / ``./lake`` (opened on first use)."""
    root = ctx.find_root().params.get("lake")
    obj = ctx.find_root().ensure_object(dict)
    if "lake" not in obj:
        obj["lake"] = Lake(root)
    return obj["lake"]


def echo_err(line: str) -> None:
    """Progress and notes go to stderr, so stdout holds only the ids a command created."""
    click.echo(line, err=True)


def example(text: str) -> str:
    """A help epilog with an example that runs as written (click keeps \\b blocks verbatim)."""
    return "\b\nExample:\n  " + text


def check_output(output: str | None, lake: Lake | None, what: str = "--output") -> None:
    """Refuse an output path inside the lake, however it is spelled (``..``, symbolic links)."""
    if output is None or lake is None:
        return
    target = Path(output).expanduser().resolve()
    root = lake.root.resolve()
    if target == root or root in target.parents:
        raise GalsaeError(f"{what} {output} is inside the lake; write results elsewhere")


def _nested(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema if pa.types.is_nested(f.type)]


def write_batches(batches, schema: pa.Schema, fmt: str, output: str | None,
                  lake: Lake | None = None) -> None:
    """Stream record batches out as csv, json (JSON lines: one object per row) or parquet,
    holding one batch at a time (``table`` goes through :func:`write_frame`)."""
    check_output(output, lake)
    if fmt == "parquet" and output is None:
        raise click.UsageError("--format parquet needs --output FILE")
    if fmt == "table":
        write_frame(pl.from_arrow(pa.Table.from_batches(list(batches), schema=schema)), fmt,
                    output, lake)
        return
    if fmt == "csv" and _nested(schema):
        raise GalsaeError(f"--format csv cannot hold nested columns ({', '.join(_nested(schema))}); "
                          f"use --format json or parquet, or select scalar columns")
    rows = 0
    with contextlib.ExitStack() as stack:
        if fmt == "parquet":
            writer = stack.enter_context(pq.ParquetWriter(output, schema))
        else:
            emit = (stack.enter_context(open(output, "w", encoding="utf-8")).write
                    if output is not None else lambda text: click.echo(text, nl=False))
        header = True
        for batch in batches:
            if fmt == "parquet":
                writer.write_batch(batch)
            elif batch.num_rows or header:
                frame = pl.from_arrow(pa.Table.from_batches([batch], schema=schema))
                if fmt == "csv":
                    emit(frame.write_csv(include_header=header))
                    header = False
                elif batch.num_rows:
                    emit(frame.write_ndjson())
            rows += batch.num_rows
        if fmt == "csv" and header:  # no batch at all: still the header
            emit(pl.from_arrow(schema.empty_table()).write_csv())
    if output is not None:
        click.echo(f"wrote {rows} rows to {output}", err=True)


def write_frame(frame: pl.DataFrame, fmt: str, output: str | None, lake: Lake | None = None,
                text_width: int = 80) -> None:
    """Print or save a result as table, csv, json (JSON lines: one object per row) or parquet
    (``text_width``: the longest string shown whole in a table)."""
    check_output(output, lake)
    if fmt == "parquet" and output is None:
        raise click.UsageError("--format parquet needs --output FILE")
    if fmt != "table":
        arrow = frame.to_arrow()
        write_batches(arrow.to_batches(), arrow.schema, fmt, output, lake)
        return
    with pl.Config(tbl_rows=200, tbl_cols=-1, fmt_str_lengths=text_width,
                   tbl_width_chars=max(200, text_width + 120), tbl_hide_dataframe_shape=False):
        text = str(frame)
    if output is None:
        click.echo(text, nl=not text.endswith("\n"))
    else:
        Path(output).write_text(text if text.endswith("\n") else text + "\n")
        click.echo(f"wrote {frame.height} rows to {output}", err=True)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=example("galsae-lake --lake lake demo"))
@click.option("--lake", type=click.Path(file_okay=True), envvar="GALSAE_LAKE", default=None,
              help="Lake root folder [default: $GALSAE_LAKE, else ./lake].")
@click.option("--debug", is_flag=True,
              help="Show the full traceback of a failure instead of its one-line message.")
@click.version_option(__version__, prog_name="galsae-lake")
def main(lake: str | None, debug: bool) -> None:
    """galsae-lake: what image models learned about galaxies, as a Parquet lake.

    Every command materializes Hive-partitioned Parquet tables under one lake root;
    `galsae-lake sql` queries them with DuckDB.
    """


@main.command(epilog=example("galsae-lake tables --format csv"))
@output_options
@click.pass_context
def tables(ctx: click.Context, fmt: str, output: str | None) -> None:
    """List the lake's tables: rows, partitions, size on disk, and the command and function
    that write each (with its query in sql/)."""
    lake = lake_of(ctx)
    lake.check_versions()
    problems: list[str] = []
    rows = lake.summary(problems)
    frame = pl.DataFrame(rows, schema={"table": pl.String, "rows": pl.Int64,
                                       "partitions": pl.Int64, "bytes": pl.Int64,
                                       "updated_at": pl.String, "written_by": pl.String})
    if fmt == "table":
        frame = frame.with_columns(pl.col("bytes").map_elements(_human, return_dtype=pl.String)
                                   .alias("size")).select(
            "table", "rows", "partitions", "size", "updated_at", "written_by")
    write_frame(frame, fmt, output, lake, text_width=frame["written_by"].str.len_chars().max())
    if problems:  # the rest is listed; the unreadable partitions are named, and the exit is 1
        raise GalsaeError("; ".join(problems))


def _human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


@main.command(epilog=example(
    "galsae-lake sql \"SELECT split, count(*) AS n FROM galaxies GROUP BY split\""))
@click.argument("query")
@output_options
@click.pass_context
def sql(ctx: click.Context, query: str, fmt: str, output: str | None) -> None:
    """Run a read-only DuckDB QUERY over the lake (one view per table, named as the table).

    Only queries run (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, and EXPLAIN [ANALYZE] of
    those), by DuckDB's own parse, in a connection that can open no file: the lake's tables are
    its only inputs and nothing is written. Results stream out (--format json is JSON lines, one
    object per row). Use "-" to read the query from standard input.
    """
    import duckdb

    lake = lake_of(ctx)
    if query == "-":
        query = sys.stdin.read()
    check_output(output, lake)
    with user_sql(lake, query) as relation:
        if relation is None:
            return
        try:
            reader = relation.to_arrow_reader(65_536)
            write_batches(reader, reader.schema, fmt, output, lake)
        except duckdb.Error as exc:
            raise GalsaeError(f"SQL: {first_line(exc)}") from None


# ---- sources ----
@main.command(epilog=example("galsae-lake --lake /tmp/galsae-demo synth --n 500 --seed 1"))
@click.option("--n", "n", type=int, default=2000, show_default=True, help="Galaxies to make.")
@click.option("--image-size", type=int, default=64, show_default=True, help="Cutout size, pixels.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same lake).")
@click.option("--test-fraction", type=float, default=0.2, show_default=True,
              help="Share of galaxies in the test split.")
@quiet_option
@click.pass_context
def synth(ctx: click.Context, n: int, image_size: int, seed: int, test_fraction: float,
          quiet: bool) -> None:
    """Make N synthetic Euclid-like galaxies with planted morphology and simulated volunteers.

    Fills galaxies, images (PNG), votes (catalog volunteers) and truth (the planted factors).
    """
    from galsae_lake.sources.synthetic import synthesize

    summary = synthesize(lake_of(ctx), n, image_size=image_size, seed=seed,
                         test_fraction=test_fraction, progress=not quiet)
    splits = ", ".join(f"{k} {v}" for k, v in summary["splits"].items())
    click.echo(f"synth: {summary['galaxies']} galaxies ({splits}); wrote galaxies, images, "
               f"votes[catalog=volunteers], truth")


@main.group(cls=Group, epilog=example("galsae-lake ingest votes --help"))
def ingest():
    """Bring galaxies, votes or embeddings from outside into the lake."""


@ingest.command("hf", epilog=example(
    "galsae-lake ingest hf --dataset mwalmsley/gz_euclid --splits test --limit 1000"))
@click.option("--dataset", default="mwalmsley/gz_euclid", show_default=True,
              help="Hugging Face dataset name, or a local folder in the same shape.")
@click.option("--config", default=None, help="Dataset configuration name.")
@splits_option("train,test", help="Comma-separated splits.")
@click.option("--limit", type=int, default=None, help="At most this many galaxies per split.")
@catalog_option(help="The votes catalog to write.")
@click.option("--no-votes", is_flag=True,
              help="Write galaxies and images only, even if the dataset has label columns.")
@quiet_option
@click.pass_context
def ingest_hf_command(ctx: click.Context, dataset: str, config: str | None,
                      splits: tuple[str, ...], limit: int | None, catalog: str, no_votes: bool,
                      quiet: bool) -> None:
    """Stream a Galaxy Zoo dataset's galaxies, images and votes into the lake.

    An image dataset without Galaxy Zoo label columns (mwalmsley/euclid_q1, configuration
    v1-gz_arcsinh_vis_y: the seed's MAE path) fills galaxies and images only. Prints the rows
    read per split. --dataset is a hub name, a local copy in the hub's layout, or a folder of
    cutouts (JPEG, PNG or FITS) with a metadata.csv whose file_name column names each image (the
    Hugging Face image-folder convention; see docs/sources.md)."""
    from galsae_lake.sources.huggingface import ingest_hf

    summary = ingest_hf(lake_of(ctx), dataset, config=config, splits=splits, limit=limit,
                        catalog=catalog, progress=not quiet, votes=not no_votes)
    parts = ", ".join(f"{k} {v}" for k, v in summary["splits"].items())
    if summary.get("split_assigned_from"):
        echo_err(f"the source has one split ({summary['split_assigned_from']}): train/test assigned "
                 f"by a hash of each id (20% test)")
    wrote = (f"votes[catalog={catalog}] (tree {summary['tree']})" if summary["votes"] else
             "no votes (" + ("--no-votes" if no_votes else "no Galaxy Zoo label columns") + ")")
    click.echo(f"ingest hf: {summary['source']} ({parts}; {sum(summary['splits'].values())} in "
               f"all); wrote galaxies, images, {wrote}"
               + (f"; {summary['images_missing']} images missing" if summary["images_missing"] else ""))


@ingest.command("votes", epilog=example(
    "galsae-lake synth --n 200\n"
    "  galsae-lake sql \"SELECT id_str, any_value(fraction) FILTER (label = 'bar_strong') AS "
    "bar_strong_fraction FROM votes GROUP BY id_str\" --format parquet -o bars.parquet\n"
    "  galsae-lake ingest votes bars.parquet --catalog bars"))
@click.argument("file", type=click.Path(dir_okay=False))
@catalog_option(help="The votes catalog to write.")
@catalog_file_options
@click.option("--tree", default="auto", show_default=True,
              help="The Galaxy Zoo tree: auto (from the column names) or one of "
                   "euclid, cosmic-dawn, desi, decals-dr5, decals-dr8, decals-dr12, gz2, ukidss, "
                   "hubble, candels, jwst, jwst-cosmos.")
@click.pass_context
def ingest_votes_command(ctx: click.Context, file: str, catalog: str, id_column: str,
                         split_column: str, split: str | None, tree: str) -> None:
    """Read Galaxy Zoo votes or predicted fractions (Parquet or CSV, one row per galaxy) of any
    campaign's tree; prints the tree it chose."""
    from galsae_lake.sources.files import ingest_votes

    summary = ingest_votes(lake_of(ctx), file, catalog=catalog, id_column=id_column,
                           split_column=split_column, split=split, tree=tree)
    echo_err(summary["detection"])
    _ingested("votes", summary, f"votes[catalog={catalog}] (tree {summary['tree']})")


def _ingested(command: str, summary: dict, wrote: str) -> None:
    """The one summary line of a catalogue ingest (ids matched, galaxies per split, what it
    wrote, skips)."""
    if summary.get("id_match"):
        from galsae_lake.sources.ids import IdMatch

        echo_err(IdMatch(**summary["id_match"]).line(wrote.split(" ")[0]))
    parts = ", ".join(f"{k} {v}" for k, v in summary["splits"].items())
    click.echo(f"ingest {command}: {summary['galaxies']} galaxies ({parts}); wrote {wrote}"
               + (f"; {summary['unmatched']} ids not in the lake skipped" if summary["unmatched"] else ""))


@ingest.command("labels", epilog=example(
    "galsae-lake synth --n 200\n"
    "  galsae-lake sql \"SELECT id_str, split, random() AS redshift, (random() < 0.1)::INT AS ring "
    "FROM galaxies\" --format csv -o flags.csv\n"
    "  galsae-lake ingest labels flags.csv --catalog flags"))
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--catalog", default=None, help="Catalog to write [default: the file's name].")
@click.option("--columns", default=None,
              help="Comma-separated label columns [default: every numeric column].")
@catalog_file_options
@click.pass_context
def ingest_labels_command(ctx: click.Context, file: str, catalog: str | None, columns: str | None,
                          id_column: str, split_column: str, split: str | None) -> None:
    """Read numeric columns of FILE (Parquet or CSV, one row per galaxy) as labels without a
    tree: continuous values or 0/1 flags, NULL or NaN for unknown."""
    from galsae_lake.sources.files import ingest_labels

    names = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
    summary = ingest_labels(lake_of(ctx), file, catalog=catalog, columns=names, id_column=id_column,
                            split_column=split_column, split=split)
    kinds = ", ".join(f"{c}{' (0/1)' if c in summary['binary'] else ''}" for c in summary["labels"])
    _ingested("labels", summary, f"labels[catalog={summary['catalog']}]: {kinds}")


# ---- figures ----
@main.command(epilog=example(
    "galsae-lake figures --model sae-zoobot-synth-9a1f36 --image-format html,png --top 8\n"
    "  (sae-zoobot-synth-9a1f36 is the zoobot-synth SAE that galsae-lake demo builds)"))
@click.option("--model", "model_id", required=True,
              help="An SAE run_id or a pca_id that `galsae-lake analyze` has analyzed.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Output folder [default: <lake>/figures/<model>].")
@image_format_option
@click.option("--format", "legacy_formats", type=CommaList(IMAGE_FORMATS), hidden=True,
              help="The design's earlier name of --image-format (html, png, svg only).")
@split_option("test", help="The analyzed split to draw.")
@click.option("--top", default=8, show_default=True, type=click.IntRange(min=0),
              help="Gallery files for this many features (most frequent first).")
@click.pass_context
def figures(ctx: click.Context, model_id: str, out: str | None, formats: tuple[str, ...],
            legacy_formats: tuple[str, ...] | None, split: str, top: int) -> None:
    """Draw a model's figures from the lake: alignment and novelty distributions (SAE vs PCA),
    Matryoshka reconstruction, explained variance, training curves, galleries, feature browser."""
    from galsae_lake.figures import make_figures

    lake = lake_of(ctx)
    if out is not None:  # inside the lake only under <lake>/figures, never into a table's folder
        target, root = Path(out).expanduser().resolve(), lake.root.resolve()
        allowed = root / "figures"
        if (target == root or root in target.parents) and not (
                target == allowed or allowed in target.parents):
            raise GalsaeError(f"--out {out} is inside the lake; use a folder outside it or under "
                              f"{allowed}")
    written = make_figures(lake, model_id, out=out, formats=legacy_formats or formats,
                           split=split, top=top, log=echo_err)
    for path in written:
        click.echo(str(path))


# ---- sae ----
@main.command("train-sae", epilog=example(
    "galsae-lake train-sae --encoder zoobot-synth --config demo --set epochs=20"))
@click.option("--encoder", required=True, help="Train on the embeddings of this encoder.")
@click.option("--config", "config_path",
              help="A TOML config (the seed's keys and sections) or a shipped one by name: "
                   "zoobot, mae, demo [default: mae for mae* encoders, else zoobot].")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key (plain or section-dotted, TOML value); repeatable.")
@split_option("train", help="The split to fit the normalization and train on.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch [default: torch's own]; 1 is often fastest on a busy machine.")
@quiet_option
@click.pass_context
def train_sae_command(ctx: click.Context, encoder: str, config_path: str | None,
                      overrides: tuple[str, ...], split: str, threads: int | None,
                      quiet: bool) -> None:
    """Train a Matryoshka BatchTopK SAE on one encoder's embeddings.

    Writes sae_runs, sae_training_log, sae_activations (every split) and sae_features, and the
    checkpoint folder models/sae/RUN_ID (model.safetensors + config.json). Prints the run id.
    Under torchrun or srun (N processes) it trains one run data parallel; rank 0 writes it.
    """
    from galsae_lake.train import train_sae

    from galsae_lake.distributed import world_from_env

    run = train_sae(lake_of(ctx), encoder, split=split, config_path=config_path,
                    overrides=list(overrides), progress=not quiet, threads=threads)
    world = world_from_env()
    if world is not None and not world.is_main:
        return  # under torchrun/srun rank 0 writes the lake and prints the run
    m = run.metrics
    click.echo(f"fvu {m['fvu']:.4f} on {m['split']}, L0 {m['l0']:.1f}, dead "
               f"{m['dead_fraction']:.3f}, threshold {m['threshold']:.4f}", err=True)
    click.echo(run.run_id)


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
@split_option("test", help="Split to analyze.")
@catalog_option(help="Label catalog(s), comma-separated: votes of any tree or plain labels "
                     "(several: labels named CATALOG:LABEL).")
@click.option("--exclude-question", default=None,
              help="Question left out of the secondary view [default: the catalog tree's root, "
                   "smooth-or-featured; none for plain labels] ('' keeps all labels).")
@click.option("--permutations", default=20, show_default=True, type=click.IntRange(min=0),
              help="Label shuffles for the permutation null (0 = none).")
@click.option("--seed", default=0, show_default=True, help="Random seed of the shuffles.")
@click.option("--reference-variant", is_flag=True,
              help="Also analyze the reference code's (the seed's) dense ReLU activations "
                   "(method sae_relu).")
@click.option("--skip-empty-labels", is_flag=True,
              help="Kept for old scripts: labels with no value on the split are always left "
                   "out, with a note.")
@click.option("--with-pca", is_flag=True,
              help="For an SAE: also analyze the newest PCA of its encoder and print the comparison.")
@click.option("--engine", type=click.Choice(["duckdb", "numpy"]), default="duckdb",
              show_default=True,
              help="duckdb: Spearman and novelty as the SQL in sql/ (spills to disk past "
                   "--memory-limit); numpy: the same numbers in memory.")
@click.option("--memory-limit", default="4GB", show_default=True,
              help="DuckDB's memory limit; past it, joins and sorts spill to --temp-directory.")
@click.option("--temp-directory", type=click.Path(file_okay=False), default=None,
              help="Where DuckDB spills (a fresh folder inside it, removed after) "
                   "[default: the system's temporary folder].")
@click.option("--control", default=None, metavar="CATALOG",
              help="Fit novelty on the labels plus these non-morphological columns: 'truth' (the "
                   "synthetic world's flux, size, axis ratio, PSF, sky) or a votes catalog.")
@click.pass_context
def analyze(ctx: click.Context, model_id: str, split: str, catalog: str,
            exclude_question: str | None, permutations: int, seed: int, reference_variant: bool,
            skip_empty_labels: bool, with_pca: bool, engine: str, memory_limit: str,
            temp_directory: str | None, control: str | None) -> None:
    """Spearman of every feature with every label, novelty and a permutation null.

    Writes feature_label_corr, feature_summary and label_null for (MODEL, SPLIT). Prints
    DuckDB's threads, memory limit and spill folder on stderr.
    """
    from galsae_lake import analysis

    lake = lake_of(ctx)
    options = dict(split=split, catalog=catalog, exclude_question=exclude_question,
                   permutations=permutations, seed=seed, reference_variant=reference_variant,
                   skip_empty_labels=skip_empty_labels, engine=engine,
                   memory_limit=memory_limit, temp_directory=temp_directory, control=control)
    if with_pca:
        results, comparison = analysis.analyze_with_pca(lake, model_id, **options)
    else:
        results, comparison = [analysis.analyze(lake, model_id, **options)], None
    for r in results:
        duck = r["duckdb"]
        echo_err(f"{r['model_id']}: engine {r['engine']}; duckdb {duck['threads']} threads, "
                 f"memory_limit {duck['memory_limit']}, spilling to {duck['temp_directory']}")
        if r.get("empty_labels"):
            shown = ", ".join(r["empty_labels"][:5])
            more = f" and {len(r['empty_labels']) - 5} more" if len(r["empty_labels"]) > 5 else ""
            echo_err(f"note: {len(r['empty_labels'])} label(s) have no value on split {split} and "
                     f"were left out: {shown}{more}")
        null = "" if r["null_q95_median"] is None else f", null q95 {r['null_q95_median']:.3f}"
        click.echo(f"{r['model_id']} {split}: {r['features']} features x {r['labels']} labels on "
                   f"{r['rows']} galaxies; max |rho| {r['max_abs_spearman']:.3f}{null}, "
                   f"median novelty {r['median_novelty']:.3f} ({r['seconds']:.1f} s)")
    if comparison is not None:
        write_frame(comparison, "table", None)


# ---- demo ----
@main.command(epilog=example("galsae-lake --lake /tmp/demo-lake demo --n 2000"))
@click.option("--n", "n", type=click.IntRange(min=200), default=10000, show_default=True,
              help="Synthetic galaxies to build (80% train, 20% test).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic world.")
@image_format_option
@quiet_option
@click.pass_context
def demo(ctx: click.Context, n: int, seed: int, formats: tuple[str, ...], quiet: bool) -> None:
    """Build the whole lake offline and report what the SAEs found.

    Synthesizes Euclid-like galaxies with planted morphology and simulated Galaxy Zoo votes,
    embeds them with both stand-in encoders, trains an SAE and fits a PCA on each, analyzes both
    against the votes, draws the figures and feature browsers, and prints a summary.
    """
    from galsae_lake.demo import format_summary, run_demo

    result = run_demo(lake_of(ctx), n=n, seed=seed, formats=formats,
                      log=(lambda line: None) if quiet else echo_err)
    click.echo(format_summary(result))


# ---- export ----
@main.group(cls=Group, epilog=example("galsae-lake export hats --help"))
def export():
    """Export lake results for other tools (a HATS catalogue for LSDB)."""


@export.command("hats", epilog=example(
    "galsae-lake export hats --model sae-zoobot-synth-9a1f36 --out /tmp/galsae-hats"))
@click.option("--model", "model_id", required=True, help="An SAE run id (or a pca id).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="The catalogue folder [default: <lake>/hats/MODEL].")
@click.option("--top", type=click.IntRange(min=1), default=8, show_default=True,
              help="Strongest SAE features kept per galaxy.")
@click.option("--pca", default="auto", show_default=True,
              help="PCA scores to add: a pca id, auto (the newest of the encoder) or none.")
@click.pass_context
def export_hats_command(ctx, model_id, out, top, pca):
    """A HATS catalogue (HEALPix-partitioned Parquet) of the galaxies with positions, their top
    SAE features and PCA scores, for cross-matching with lsdb (pip install 'galsae-lake[hats]')."""
    from galsae_lake.export_hats import export_hats

    done = export_hats(lake_of(ctx), model_id, out=out, top=top,
                       pca=None if pca == "none" else pca)
    echo_err(f"hats catalogue: {done['rows']} galaxies in {done['partitions']} HEALPix partitions"
             f" (SAE {done['sae_id'] or '-'}, PCA {done['pca_id'] or '-'})")
    click.echo(str(done["path"]))


# ---- embed ----
@main.command(epilog=example("galsae-lake embed --encoder zoobot-synth --splits train,test"))
@click.option("--encoder", required=True,
              help="zoobot-euclid, mae-euclid, zoobot-synth, mae-synth or any timm model name.")
@click.option("--weights", default=None,
              help="hub, random, PATH (hub-layout folder or state-dict file); for the stand-ins "
                   "also lake or shipped [default: hub; stand-ins: lake, else shipped].")
@splits_option(help="Comma-separated splits [default: all of images].")
@click.option("--batch-size", type=int, default=None,
              help="Images per batch [default: sized to the device].")
@device_option
@click.option("--shard", default=None,
              help="i/n: embed only shard i of n (by id hash); the last shard merges them.")
@click.option("--workers", type=int, default=None, help="Decoding processes [default: by device].")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default="auto",
              show_default=True, help="bf16 autocast on GPUs and bf16-capable CPUs with auto.")
@click.option("--features", default=None,
              help="head (the pooled, normed output of the model's head, as the seed takes from "
                   "Zoobot) or pooled_features_block_N (block N's patch-token mean, as "
                   "mwalmsley/euclid_q1_embeddings; any timm ViT) [default: pooled_features_block_11 "
                   "for mae-euclid, else head].")
@click.option("--as", "tag", default=None,
              help="Store under this encoder name [default: --encoder, plus -blockN or -head "
                   "when --features is not the encoder's default].")
@click.option("--force", is_flag=True, help="Recompute splits already embedded with these weights.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process and its decoding workers; ray: a Ray Data pipeline "
                   "(pip install 'galsae-lake[ray]').")
@click.option("--ray-address", default=None,
              help="With --engine ray: the cluster to join (e.g. ray://head:10001 or auto) "
                   "[default: start a local one].")
@quiet_option
@click.pass_context
def embed(ctx, encoder, weights, splits, batch_size, device, shard, workers, precision, features,
          tag, force, engine, ray_address, quiet):
    """Embed the images table into the embeddings table (one partition per encoder and split).

    With --engine ray, Ray Data decodes in tasks and encodes in an actor pool (one GPU per
    actor); this process alone writes the lake, one transaction per split.
    """
    from galsae_lake.encoders import embed as run_embed

    summary = run_embed(lake_of(ctx), encoder, weights=weights,
                        splits=list(splits) if splits else None, batch_size=batch_size,
                        device=device, shard=shard, workers=workers, precision=precision,
                        force=force, tag=tag, progress=not quiet, log=echo_err,
                        features=features, engine=engine, ray_address=ray_address)
    click.echo(f"embeddings encoder={summary['encoder']}")


@ingest.command("embeddings", epilog=example(
    "galsae-lake ingest embeddings train_embeddings.npy --ids train_ids.npy --split train "
    "--encoder zoobot-euclid"))
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--encoder", required=True, help="The encoder name to store them under.")
@click.option("--column", default="embedding", show_default=True, help="The vector column.")
@click.option("--id-column", default="id_str", show_default=True)
@click.option("--split-column", default="split", show_default=True,
              help="Used when the file has it; else --split, else the galaxies catalogue.")
@split_option(None, help="The split of every row.")
@click.option("--ids", type=click.Path(dir_okay=False), default=None,
              help="For a .npy matrix: the .npy of ids [default: the name with embeddings->ids].")
@click.option("--join", type=click.Choice(["all", "inner"]), default="all", show_default=True,
              help="all: keep every row; inner: only galaxies of the lake's catalogue, same split.")
@click.pass_context
def ingest_embeddings_cmd(ctx, file, encoder, column, id_column, split_column, split, ids, join):
    """Store embeddings from FILE (Parquet with an id and a list column, or .npy + ids .npy).

    Ids are matched to the galaxies catalogue (NEG or -, release prefix or not) and stored in
    its spelling; the counts of matched and unmatched ids are printed and kept in the sidecar.
    """
    from galsae_lake.sources.embeddings import ingest_embeddings

    summary = ingest_embeddings(lake_of(ctx), file, encoder, column=column, id_column=id_column,
                                split_column=split_column, split=split, ids=ids, log=echo_err,
                                join=join)
    click.echo(f"embeddings encoder={summary['encoder']}")


@ingest.command("hf-embeddings", epilog=example(
    "galsae-lake ingest hf-embeddings --dataset mwalmsley/euclid_q1_embeddings "
    "--column pooled_features_block_11 --encoder mae-euclid"))
@click.option("--dataset", required=True, help="Hugging Face dataset name or a save_to_disk folder.")
@click.option("--column", required=True, help="The list column, e.g. pooled_features_block_11.")
@click.option("--encoder", required=True, help="The encoder name to store them under.")
@click.option("--config", default=None, help="The dataset configuration (subset).")
@splits_option()
@click.option("--limit", type=int, default=None, help="At most N rows per split.")
@click.option("--id-column", default="id_str", show_default=True)
@click.option("--join", type=click.Choice(["inner", "all"]), default="inner", show_default=True,
              help="inner: only galaxies of the lake's catalogue, split by split (as the seed "
                   "joins euclid_q1_embeddings to euclid_q1); all: keep every row.")
@click.pass_context
def ingest_hf_embeddings_cmd(ctx, dataset, column, encoder, config, splits, limit, id_column, join):
    """Store precomputed embeddings from a Hugging Face dataset (id_str plus list columns).

    mwalmsley/euclid_q1_embeddings holds pooled_features_block_{0,9,10,11}; the seed trains on
    block 11. The counts of matched and unmatched ids are printed and kept in the sidecar.
    """
    from galsae_lake.sources.embeddings import ingest_hf_embeddings

    summary = ingest_hf_embeddings(lake_of(ctx), dataset, column, encoder, config=config,
                                   splits=list(splits) if splits else None, limit=limit,
                                   id_column=id_column, log=echo_err, join=join)
    click.echo(f"embeddings encoder={summary['encoder']}")


@main.command("train-encoder", epilog=example(
    "galsae-lake train-encoder --encoder zoobot-synth --epochs 2 --limit 500"))
@click.option("--encoder", required=True, type=click.Choice(["zoobot-synth", "mae-synth"]),
              help="zoobot-synth (supervised on votes) or mae-synth (masked autoencoder).")
@click.option("--epochs", type=int, default=None, help="[default: 24 zoobot-synth, 12 mae-synth]")
@click.option("--batch-size", type=int, default=None, help="[default: 128]")
@click.option("--learning-rate", type=float, default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--limit", type=int, default=None, help="Train on at most N images.")
@device_option
@click.pass_context
def train_encoder_cmd(ctx, encoder, epochs, batch_size, learning_rate, seed, limit, device):
    """Train an offline stand-in encoder on the lake's train images and store its weights there.

    `galsae-lake embed --encoder NAME` then uses these weights (the lake's copy comes before the
    package's shipped ones).
    """
    from galsae_lake.standins import train_encoder

    summary = train_encoder(lake_of(ctx), encoder, epochs=epochs, batch_size=batch_size,
                            learning_rate=learning_rate, seed=seed, limit=limit, device=device,
                            log=echo_err)
    click.echo(f"encoder {summary['encoder']} ({summary['folder']})")
