"""The Galaxy Zoo Euclid decision tree: 13 questions, 46 answers, and what each question depends on.

Encoded once, as published in mwalmsley/galaxy-datasets' label metadata (the Euclid schema is the
Cosmic Dawn tree with a `ghost` artifact answer). Every place that names a label uses this module.
A label is ``<question>_<answer>`` (e.g. ``has-spiral-arms_yes``); catalogues on disk may add a
``-euclid`` suffix to the question, which :func:`parse_column` strips.
"""

from __future__ import annotations

from dataclasses import dataclass

#: question -> its answers, in the published order
QUESTIONS: dict[str, tuple[str, ...]] = {
    "smooth-or-featured": ("smooth", "featured-or-disk", "problem"),
    "disk-edge-on": ("yes", "no"),
    "has-spiral-arms": ("yes", "no"),
    "bar": ("strong", "weak", "no"),
    "bulge-size": ("dominant", "large", "moderate", "small", "none"),
    "how-rounded": ("round", "in-between", "cigar-shaped"),
    "edge-on-bulge": ("boxy", "none", "rounded"),
    "spiral-winding": ("tight", "medium", "loose"),
    "spiral-arm-count": ("1", "2", "3", "4", "more-than-4", "cant-tell"),
    "merging": ("none", "minor-disturbance", "major-disturbance", "merger"),
    "clumps": ("yes", "no"),
    "problem": ("star", "artifact", "zoom"),
    "artifact": ("satellite", "scattered", "diffraction", "ray", "saturation", "other", "ghost"),
}

#: question -> the label (question_answer) that must be chosen for it to be asked; None = always asked
DEPENDENCIES: dict[str, str | None] = {
    "smooth-or-featured": None,
    "problem": "smooth-or-featured_problem",
    "artifact": "problem_artifact",
    "disk-edge-on": "smooth-or-featured_featured-or-disk",
    "clumps": "disk-edge-on_no",
    "has-spiral-arms": "disk-edge-on_no",
    "bar": "disk-edge-on_no",
    "bulge-size": "disk-edge-on_no",
    "how-rounded": "smooth-or-featured_smooth",
    "edge-on-bulge": "disk-edge-on_yes",
    "spiral-winding": "has-spiral-arms_yes",
    "spiral-arm-count": "has-spiral-arms_yes",
    # published as always asked (a double dependency, smooth OR featured, is not encoded upstream)
    "merging": None,
}

#: the suffix the Euclid catalogues append to question names
CATALOG_SUFFIX = "-euclid"

#: the question the seed's "secondary" view leaves out
PRIMARY_QUESTION = "smooth-or-featured"


@dataclass(frozen=True)
class Label:
    question: str
    answer: str

    @property
    def name(self) -> str:
        return f"{self.question}_{self.answer}"


LABELS: tuple[Label, ...] = tuple(Label(q, a) for q, answers in QUESTIONS.items() for a in answers)
LABEL_NAMES: tuple[str, ...] = tuple(label.name for label in LABELS)

def label_name(question: str, answer: str) -> str:
    """``label_name('bar', 'strong') -> 'bar_strong'``; raises KeyError for names not in the tree."""
    if question not in QUESTIONS or answer not in QUESTIONS[question]:
        raise KeyError(f"{question}_{answer} is not a Galaxy Zoo Euclid label")
    return f"{question}_{answer}"


def question_of(label: str) -> str:
    """The question part of a label name (``'bar_strong' -> 'bar'``)."""
    question = label.rsplit("_", 1)[0]
    if question not in QUESTIONS:
        raise KeyError(f"{label!r} is not a Galaxy Zoo Euclid label")
    return question


def parse_column(column: str) -> tuple[str, str, str] | None:
    """Read a catalogue column name in the Galaxy Zoo shape.

    Returns ``(question, answer, kind)`` with kind one of ``"fraction"``, ``"count"``,
    ``"total"``, or None when the column is not a Galaxy Zoo Euclid column. Accepts the question
    with or without the ``-euclid`` suffix: ``bar-euclid_strong_fraction``, ``bar_strong``,
    ``bar-euclid_total-votes``.
    """
    if column.endswith("_total-votes"):
        question = column[: -len("_total-votes")].removesuffix(CATALOG_SUFFIX)
        return (question, "", "total") if question in QUESTIONS else None
    kind = "count"
    name = column
    if column.endswith("_fraction"):
        kind, name = "fraction", column[: -len("_fraction")]
    if "_" not in name:
        return None
    question, answer = name.rsplit("_", 1)
    question = question.removesuffix(CATALOG_SUFFIX)
    if question in QUESTIONS and answer in QUESTIONS[question]:
        return question, answer, kind
    return None


def ancestors(question: str) -> list[str]:
    """The labels that must all be chosen, root first, for a volunteer to reach ``question``."""
    chain: list[str] = []
    dependency = DEPENDENCIES[question]
    while dependency is not None:
        chain.append(dependency)
        dependency = DEPENDENCIES[question_of(dependency)]
    return chain[::-1]
