"""Every Galaxy Zoo campaign's decision tree, as data: one JSON file per tree in this folder.

Each file was transcribed from the public label metadata of mwalmsley/galaxy-datasets,
``galaxy_datasets/shared/label_metadata.py`` at commit
3cd2149cc4c57fd0bb7d88af3b44b73e91043284 (each file names the variables it came from and notes
where upstream is inconsistent). Questions are stored without their campaign suffix
(``bar``, not ``bar-dr5``); catalogue columns may carry it (``bar-dr5_strong_fraction``).

A label is ``<question>_<answer>``. :class:`Tree` answers everything the pipeline asks of a tree:
its labels, which question a label belongs to, the chain of answers that leads to a question
(the "not asked" rule), the root question the secondary view leaves out, and how a catalogue
column reads under it. :func:`detect` picks the tree that fits a file's column names.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from galsae_lake.errors import InputError

#: tree names in the order ties are broken (the project's home tree first)
ORDER = ("euclid", "cosmic-dawn", "desi", "decals-dr5", "decals-dr8", "decals-dr12", "gz2",
         "ukidss", "hubble", "candels", "jwst", "jwst-cosmos")

#: column endings: ``<q>_<a>`` counts, ``<q>_<a>_fraction`` and ``<q>_total-votes``
FRACTION_END = "_fraction"
TOTAL_END = "_total-votes"


@dataclass(frozen=True)
class Label:
    question: str
    answer: str

    @property
    def name(self) -> str:
        return f"{self.question}_{self.answer}"


@dataclass(frozen=True)
class Tree:
    """One campaign's decision tree: questions (with answers, in published order) and, for each
    question, the label that must be chosen for it to be asked (None: always asked)."""

    name: str
    title: str
    suffix: str
    questions: dict[str, tuple[str, ...]]
    dependencies: dict[str, str | None]
    source: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for question, parent in self.dependencies.items():
            if question not in self.questions:
                raise ValueError(f"tree {self.name}: dependency of unknown question {question!r}")
            if parent is not None:
                q, _, a = parent.rpartition("_")
                if q not in self.questions or a not in self.questions[q]:
                    raise ValueError(f"tree {self.name}: {question} depends on unknown {parent!r}")

    @property
    def labels(self) -> tuple[Label, ...]:
        return tuple(Label(q, a) for q, answers in self.questions.items() for a in answers)

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(label.name for label in self.labels)

    @property
    def root(self) -> str:
        """The first always-asked question (smooth-or-featured): the secondary view leaves it out."""
        return next(q for q in self.questions if self.dependencies.get(q) is None)

    def label_name(self, question: str, answer: str) -> str:
        if question not in self.questions or answer not in self.questions[question]:
            raise KeyError(f"{question}_{answer} is not a label of the {self.name} tree")
        return f"{question}_{answer}"

    def question_of(self, label: str) -> str:
        question = label.rsplit("_", 1)[0]
        if question not in self.questions:
            raise KeyError(f"{label!r} is not a label of the {self.name} tree")
        return question

    def ancestors(self, question: str) -> list[str]:
        """The labels that must all be chosen, root first, for a volunteer to reach ``question``."""
        chain: list[str] = []
        dependency = self.dependencies.get(question)
        while dependency is not None:
            chain.append(dependency)
            dependency = self.dependencies.get(self.question_of(dependency))
        return chain[::-1]

    def _question(self, name: str, suffixed: bool) -> str | None:
        if suffixed:
            if not self.suffix or not name.endswith(self.suffix):
                return None
            name = name[: -len(self.suffix)]
        return name if name in self.questions else None

    def parse_column(self, column: str, suffixed: bool | None = None) -> tuple[str, str, str] | None:
        """``(question, answer, kind)`` of a catalogue column under this tree, kind ``"count"``,
        ``"fraction"`` or ``"total"``; None when the column is not one of the tree's. The
        question may carry the tree's suffix or none (``suffixed``: only with / only without)."""
        forms = (True, False) if suffixed is None else (suffixed,)
        if column.endswith(TOTAL_END):
            for form in forms:
                question = self._question(column[: -len(TOTAL_END)], form)
                if question is not None:
                    return question, "", "total"
            return None
        kind, name = "count", column
        if column.endswith(FRACTION_END):
            kind, name = "fraction", column[: -len(FRACTION_END)]
        if "_" not in name:
            return None
        head, answer = name.rsplit("_", 1)
        for form in forms:
            question = self._question(head, form)
            if question is not None and answer in self.questions[question]:
                return question, answer, kind
        return None

    def column_fit(self, columns) -> tuple[int, int]:
        """(label columns of this tree with its suffix, label columns without) among ``columns``."""
        with_suffix = without = 0
        for column in columns:
            if self.parse_column(column, suffixed=True) is not None:
                with_suffix += 1
            elif self.parse_column(column, suffixed=False) is not None:
                without += 1
        return with_suffix, without


def _load(name: str) -> Tree:
    data = json.loads(resources.files(__package__).joinpath(f"{name}.json").read_text())
    return Tree(name=data["name"], title=data["title"], suffix=data["suffix"],
                questions={q: tuple(a) for q, a in data["questions"].items()},
                dependencies=dict(data["dependencies"]), source=dict(data["source"]),
                notes=tuple(data.get("notes", ())))


@cache
def all_trees() -> dict[str, Tree]:
    """Every shipped tree by name, in :data:`ORDER`."""
    return {name: _load(name) for name in ORDER}


def get(name: str) -> Tree:
    """The tree called ``name``; a one-line :class:`InputError` naming the trees otherwise."""
    trees = all_trees()
    if name not in trees:
        close = difflib.get_close_matches(name, list(trees), n=1)
        raise InputError(f"unknown tree {name!r}" + (f" (did you mean {close[0]}?)" if close else "")
                         + f"; trees are: {', '.join(trees)}")
    return trees[name]


@dataclass(frozen=True)
class Detection:
    """What :func:`detect` chose, and why: the tree, how many label columns it reads, the trees
    that read as many (ties, broken by :data:`ORDER`) and label columns of other trees it ignores."""

    tree: Tree
    columns: int
    ties: tuple[str, ...] = ()
    others: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        text = f"tree {self.tree.name} ({self.tree.title}): {self.columns} label columns"
        if self.ties:
            text += f"; fits {', '.join(self.ties)} as well (pass --tree to choose)"
        ignored = {k: v for k, v in self.others.items() if v}
        if ignored:
            text += ("; ignored the columns of " + ", ".join(f"{k} ({v})" for k, v in ignored.items())
                     + " (ingest them again with --tree NAME --catalog OTHER)")
        return text


def _closest(columns: list[str]) -> str:
    """The tree whose label names are nearest to the columns' (for the no-fit message): the sum
    over label-like columns (at most 64) of the best similarity to one of the tree's labels."""
    stems = [c[: -len(FRACTION_END)] if c.endswith(FRACTION_END) else c for c in columns]
    stems = [s for s in stems if "_" in s][:64]
    best, best_score = ORDER[0], 0.0
    for tree in all_trees().values():
        names = list(tree.label_names) + [f"{l.question}{tree.suffix}_{l.answer}" for l in tree.labels]
        score = 0.0
        for stem in stems:
            match = difflib.get_close_matches(stem, names, n=1, cutoff=0.6)
            if match:
                score += difflib.SequenceMatcher(None, stem, match[0]).ratio()
        if score > best_score:
            best, best_score = tree.name, score
    return best


def reads_any(columns) -> bool:
    """Whether any tree reads any of ``columns`` (cheap; no message)."""
    columns = [str(c) for c in columns]
    return any(sum(t.column_fit(columns)) for t in all_trees().values())


def detect(columns, tree: str | None = "auto") -> Detection:
    """The tree that reads the most label columns of ``columns`` (or ``tree`` when named).

    Columns with a tree's own suffix (``-dr5``, ``-gz2``, ``-euclid``...) count before suffix-less
    ones; remaining ties go to the first tree in :data:`ORDER`. Raises a one-line
    :class:`InputError` naming the closest tree when no tree reads any column.
    """
    columns = [str(c) for c in columns]
    fits = {name: t.column_fit(columns) for name, t in all_trees().items()}
    if tree not in (None, "auto"):
        chosen = get(tree)
        strong, weak = fits[chosen.name]
        if strong + weak == 0:
            raise InputError(f"no column of the file is a label of the {chosen.name} tree "
                             f"(like {chosen.label_names[0]}_fraction); {_closest_line(columns, fits)}")
        return Detection(chosen, strong + weak, (), _others(columns, chosen))
    present = set(columns)

    def missing(name: str) -> int:
        """Labels of the tree without a column: breaks ties between trees of one suffix
        (jwst, jwst-cosmos) in favour of the tighter fit."""
        t = all_trees()[name]
        if not fits[name][0]:
            return 0
        return sum(1 for label in t.labels
                   if not ({f"{label.question}{t.suffix}_{label.answer}",
                            f"{label.question}{t.suffix}_{label.answer}{FRACTION_END}"} & present))

    ranked = sorted(fits.items(), key=lambda kv: (-(kv[1][0] + kv[1][1]), -kv[1][0],
                                                   missing(kv[0]), ORDER.index(kv[0])))
    name, (strong, weak) = ranked[0]
    if strong + weak == 0:
        raise InputError("no Galaxy Zoo label columns (like smooth-or-featured-euclid_smooth_fraction); "
                         + _closest_line(columns, fits)
                         + "; for plain numeric labels use galsae-lake ingest labels")
    ties = tuple(n for n, (s, w) in ranked[1:] if (s, s + w) == (strong, strong + weak))
    return Detection(all_trees()[name], strong + weak, ties, _others(columns, all_trees()[name]))


def _others(columns: list[str], chosen: Tree) -> dict[str, int]:
    """Label columns that carry another tree's suffix and that ``chosen`` does not read."""
    unread = [c for c in columns if chosen.parse_column(c) is None]
    counts: dict[str, int] = {}
    for name, t in all_trees().items():
        if name == chosen.name or not t.suffix or t.suffix == chosen.suffix:
            continue
        n = sum(1 for c in unread if t.parse_column(c, suffixed=True) is not None)
        if n:
            counts[name] = n
    return counts


def _closest_line(columns: list[str], fits: dict[str, tuple[int, int]]) -> str:
    tree = all_trees()[_closest(columns)]
    first = tree.labels[0]
    return (f"the closest tree is {tree.name} (its columns look like "
            f"{first.question}{tree.suffix}_{first.answer}_fraction)")
