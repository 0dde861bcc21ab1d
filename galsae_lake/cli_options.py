"""Options shared by the ``galsae-lake`` commands, declared once so they cannot drift
(as sqlite-utils bundles its ``output_options``).

Every comma-separated option parses through :class:`CommaList`; ``--format`` always means the
output format of a result (table, csv, json, parquet), ``--image-format`` the files of figures.
"""

from __future__ import annotations

from typing import Callable, Sequence

import click

OUTPUT_FORMATS = ("table", "csv", "json", "parquet")
IMAGE_FORMATS = ("html", "png", "svg")


class CommaList(click.ParamType):
    """``a,b,c`` -> ``("a", "b", "c")``: spaces stripped, empty items and repeats dropped,
    each checked against ``choices`` when given."""

    name = "LIST"

    def __init__(self, choices: Sequence[str] | None = None):
        self.choices = tuple(choices) if choices else None

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        items = tuple(dict.fromkeys(v.strip() for v in str(value).split(",") if v.strip()))
        if not items:
            self.fail("give at least one value (comma-separated)", param, ctx)
        if self.choices is not None:
            bad = [v for v in items if v.lower() not in self.choices]
            if bad:
                self.fail(f"{', '.join(bad)}: choose from {', '.join(self.choices)}", param, ctx)
            items = tuple(v.lower() for v in items)
        return items

    def get_metavar(self, param, ctx=None):  # click 8.1 and 8.2 call it differently
        return ",".join(self.choices) if self.choices else "A,B,..."


Decorator = Callable[[Callable], Callable]


def split_option(default: str | None = "test", help: str = "The split.") -> Decorator:
    """``--split NAME``: one split."""
    return click.option("--split", default=default, show_default=default is not None, help=help)


def splits_option(default: str | None = None,
                  help: str = "Comma-separated splits [default: all].") -> Decorator:
    """``--splits a,b``: several splits, as a tuple (None: the command's default)."""
    return click.option("--splits", type=CommaList(), default=default,
                        show_default=default is not None, help=help)


def catalog_option(help: str = "The votes catalog.") -> Decorator:
    """``--catalog NAME``: the votes catalog read or written (default volunteers)."""
    return click.option("--catalog", default="volunteers", show_default=True, help=help)


def catalog_file_options(func: Callable) -> Callable:
    """``--id-column``, ``--split-column``, ``--split``: how a catalogue file's rows find their
    galaxies and splits (ingest votes, ingest labels)."""
    func = click.option("--split", type=click.Choice(["train", "test"]), default=None,
                        help="Put every row in this split.")(func)
    func = click.option("--split-column", default="split", show_default=True,
                        help="Column naming each galaxy's split (else the lake's galaxies decide).")(func)
    return click.option("--id-column", default="id_str", show_default=True)(func)


def device_option(func: Callable) -> Callable:
    """``--device``: where torch runs."""
    return click.option("--device", default=None,
                        help="cpu, cuda, cuda:1 ... [default: cuda if available].")(func)


def quiet_option(func: Callable) -> Callable:
    """``--quiet``: no progress bars or progress lines (ids and errors still print)."""
    return click.option("--quiet", "-q", is_flag=True,
                        help="No progress bars or progress lines.")(func)


def output_options(func: Callable) -> Callable:
    """``--format`` (of the result) and ``--output FILE``."""
    func = click.option("--output", "-o", type=click.Path(dir_okay=False),
                        help="Write the result to FILE instead of the terminal.")(func)
    func = click.option("--format", "fmt", type=click.Choice(OUTPUT_FORMATS), default="table",
                        show_default=True,
                        help="Output format; json writes JSON lines (one object per row), "
                             "streamed like csv and parquet.")(func)
    return func


def image_format_option(func: Callable) -> Callable:
    """``--image-format html,png,svg``: which files figures are written as."""
    return click.option("--image-format", "formats", type=CommaList(IMAGE_FORMATS),
                        default="html,png", show_default=True,
                        help="Comma-separated: html (offline report and feature browser), png, "
                             "svg.")(func)
