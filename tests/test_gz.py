"""The Galaxy Zoo Euclid decision tree: shape, dependencies and column parsing."""

import pytest

from galsae_lake import gz


def test_thirteen_questions_and_forty_six_answers():
    assert len(gz.QUESTIONS) == 13
    assert len(gz.LABELS) == 46
    assert len(set(gz.LABEL_NAMES)) == 46
    assert gz.LABEL_NAMES[:3] == ("smooth-or-featured_smooth", "smooth-or-featured_featured-or-disk",
                                  "smooth-or-featured_problem")
    assert gz.QUESTIONS["artifact"][-1] == "ghost"  # the Euclid addition to the Cosmic Dawn tree
    assert [len(gz.QUESTIONS[q]) for q in ("bulge-size", "spiral-arm-count", "artifact")] == [5, 6, 7]


def test_every_dependency_resolves_to_an_answer_of_an_earlier_question():
    assert set(gz.DEPENDENCIES) == set(gz.QUESTIONS)
    roots = [q for q, d in gz.DEPENDENCIES.items() if d is None]
    assert roots == ["smooth-or-featured", "merging"]
    for question, dependency in gz.DEPENDENCIES.items():
        if dependency is None:
            continue
        parent = gz.question_of(dependency)
        assert parent != question
        assert dependency.rsplit("_", 1)[1] in gz.QUESTIONS[parent]
        # no cycles: the chain ends at the root within the tree's depth
        assert len(gz.ancestors(question)) <= 4


def test_ancestors_walk_from_the_root():
    assert gz.ancestors("spiral-arm-count") == [
        "smooth-or-featured_featured-or-disk", "disk-edge-on_no", "has-spiral-arms_yes"]
    assert gz.ancestors("artifact") == ["smooth-or-featured_problem", "problem_artifact"]
    assert gz.ancestors("smooth-or-featured") == []


@pytest.mark.parametrize("column, expected", [
    ("smooth-or-featured-euclid_smooth", ("smooth-or-featured", "smooth", "count")),
    ("smooth-or-featured_smooth", ("smooth-or-featured", "smooth", "count")),
    ("bar-euclid_strong_fraction", ("bar", "strong", "fraction")),
    ("bar_strong_fraction", ("bar", "strong", "fraction")),
    ("bar-euclid_total-votes", ("bar", "", "total")),
    ("bar_total-votes", ("bar", "", "total")),
    ("spiral-arm-count-euclid_more-than-4_fraction", ("spiral-arm-count", "more-than-4", "fraction")),
    ("spiral-arm-count-euclid_1", ("spiral-arm-count", "1", "count")),
    ("artifact-euclid_ghost", ("artifact", "ghost", "count")),
])
def test_parse_column_variants(column, expected):
    assert gz.parse_column(column) == expected


@pytest.mark.parametrize("column", [
    "id_str", "image", "bar-euclid_maybe", "bar-dr5_strong_fraction", "nonsense_total-votes",
    "bar", "ra", "smooth-or-featured-euclid", "bar-euclid_strong_fraction_fraction",
])
def test_parse_column_rejects_other_columns(column):
    assert gz.parse_column(column) is None


def test_label_name_and_question_of():
    assert gz.label_name("bar", "strong") == "bar_strong"
    assert gz.question_of("spiral-arm-count_more-than-4") == "spiral-arm-count"
    with pytest.raises(KeyError):
        gz.label_name("bar", "maybe")
    with pytest.raises(KeyError):
        gz.question_of("nothing_here")
