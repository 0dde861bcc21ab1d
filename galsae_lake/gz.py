"""The Galaxy Zoo Euclid decision tree: 13 questions, 46 answers, and what each question depends on.

The project's home tree (the synthetic volunteers walk it, the stand-in encoders predict it),
read from the Euclid entry of :mod:`galsae_lake.trees` (transcribed from mwalmsley/galaxy-datasets'
label metadata; the Euclid schema is the Cosmic Dawn tree with a `ghost` artifact answer). The
other campaigns' trees live there too; code that handles any catalog asks the catalog's tree.
A label is ``<question>_<answer>`` (e.g. ``has-spiral-arms_yes``); catalogues on disk may add a
``-euclid`` suffix to the question, which :func:`parse_column` strips.
"""

from __future__ import annotations

from galsae_lake.trees import Label, Tree, get

TREE: Tree = get("euclid")

#: question -> its answers, in the published order
QUESTIONS: dict[str, tuple[str, ...]] = TREE.questions

#: question -> the label (question_answer) that must be chosen for it to be asked; None = always
#: asked (merging is published as always asked: its double dependency is not encoded upstream)
DEPENDENCIES: dict[str, str | None] = TREE.dependencies

#: the suffix the Euclid catalogues append to question names
CATALOG_SUFFIX = TREE.suffix

#: the question the seed's "secondary" view leaves out
PRIMARY_QUESTION = TREE.root

LABELS: tuple[Label, ...] = TREE.labels
LABEL_NAMES: tuple[str, ...] = TREE.label_names

label_name = TREE.label_name
question_of = TREE.question_of
ancestors = TREE.ancestors


def parse_column(column: str) -> tuple[str, str, str] | None:
    """Read a catalogue column name in the Galaxy Zoo Euclid shape.

    Returns ``(question, answer, kind)`` with kind one of ``"fraction"``, ``"count"``,
    ``"total"``, or None when the column is not a Galaxy Zoo Euclid column. Accepts the question
    with or without the ``-euclid`` suffix: ``bar-euclid_strong_fraction``, ``bar_strong``,
    ``bar-euclid_total-votes``.
    """
    return TREE.parse_column(column)
