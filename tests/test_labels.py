"""Every Galaxy Zoo tree, catalogues in each tree's exact column shape, labels without a tree, and
the label-agnostic analysis (exact against scipy / scikit-learn)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import scipy.stats
from galsae_lake.testing import cli, lake_hash
from test_analysis import ENCODER, RUN_ID, build_lake, dense_codes, seed_novelty

from galsae_lake import labels as label_side
from galsae_lake import trees
from galsae_lake.lake import Lake

#: (questions, answers) of every shipped tree, counted from galaxy-datasets' label_metadata.py
SHAPES = {"euclid": (13, 46), "cosmic-dawn": (13, 45), "desi": (10, 34), "decals-dr5": (10, 34),
          "decals-dr8": (10, 34), "decals-dr12": (10, 30), "gz2": (10, 30), "ukidss": (10, 30),
          "hubble": (12, 34), "candels": (11, 32), "jwst": (12, 39), "jwst-cosmos": (11, 36)}


def test_every_tree_loads_with_its_published_shape_and_source():
    assert list(trees.all_trees()) == list(trees.ORDER)
    for name, (n_q, n_a) in SHAPES.items():
        tree = trees.get(name)
        assert (len(tree.questions), len(tree.labels)) == (n_q, n_a), name
        assert tree.source["commit"] == "3cd2149cc4c57fd0bb7d88af3b44b73e91043284"
        assert tree.root == "smooth-or-featured"
        for question in tree.questions:  # every chain ends at an always-asked question
            chain = tree.ancestors(question)
            assert len(chain) <= 4 and all(tree.question_of(label) in tree.questions for label in chain)
    assert trees.get("gz2").questions["bulge-size"] == ("dominant", "obvious", "just-noticeable", "no")
    assert trees.get("hubble").dependencies["disk-edge-on"] == "clumpy-appearance_no"
    assert trees.get("candels").questions["merging"] == ("merger", "tidal-debris", "both", "neither")
    assert trees.get("jwst").questions["smooth-or-featured"][-1] == "star-artifact-zoom"
    assert "how-rounded" not in trees.get("jwst-cosmos").questions
    assert trees.get("cosmic-dawn").questions["artifact"][-1] == "other"  # Euclid adds ghost


def wide_catalogue(tree: trees.Tree, n: int = 30, seed: int = 0, suffix: str | None = None,
                   kinds=("count", "fraction", "total"), split: bool = True) -> pl.DataFrame:
    """A catalogue in the tree's exact column shape: ``<q><suffix>_<a>`` counts,
    ``..._fraction`` and ``<q><suffix>_total-votes``; questions not reached are NaN."""
    rng = np.random.default_rng(seed)
    suffix = tree.suffix if suffix is None else suffix
    data: dict[str, object] = {"id_str": [f"g{i:03d}" for i in range(n)]}
    if split:
        data["split"] = ["train" if i % 3 else "test" for i in range(n)]
    chosen: dict[str, np.ndarray] = {}
    for question, answers in tree.questions.items():
        parent = tree.dependencies[question]
        asked = np.ones(n, bool) if parent is None else chosen[parent] >= 0.5
        counts = rng.multinomial(10, np.ones(len(answers)) / len(answers), size=n).astype(float)
        counts[~asked] = np.nan
        total = counts.sum(axis=1)
        for j, answer in enumerate(answers):
            chosen[f"{question}_{answer}"] = np.where(asked, counts[:, j] / 10, 0.0)
            if "count" in kinds:
                data[f"{question}{suffix}_{answer}"] = counts[:, j]
            if "fraction" in kinds:
                data[f"{question}{suffix}_{answer}_fraction"] = counts[:, j] / total
        if "total" in kinds:
            data[f"{question}{suffix}_total-votes"] = total
    return pl.DataFrame(data)


@pytest.mark.parametrize("name", [n for n in trees.ORDER if trees.get(n).suffix])
def test_each_tree_is_detected_from_its_own_column_shape(name, tmp_path):
    tree = trees.get(name)
    frame = wide_catalogue(tree)
    found = trees.detect(frame.columns)
    assert found.tree.name == name
    assert found.columns == 2 * len(tree.labels) + len(tree.questions)
    # ingest votes stores it through that tree, questions without the suffix
    path = tmp_path / f"{name}.parquet"
    frame.write_parquet(path)
    out = cli("ingest", "votes", path, "--catalog", "gz", lake=tmp_path / "lake")
    assert out.exit_code == 0, out.output
    assert f"tree {name}" in out.output
    lake = Lake(tmp_path / "lake")
    votes = lake.read("votes", catalog="gz")
    assert set(votes["label"].unique()) == set(tree.label_names)
    assert lake.read("catalogs").row(0, named=True)["tree"] == name
    # fractions were not asked exactly where the tree says
    root = tree.root
    assert votes.filter(pl.col("question") == root)["fraction"].null_count() == 0


def test_suffix_free_columns_go_to_euclid_and_desi_by_their_answers():
    euclid = wide_catalogue(trees.get("euclid"), suffix="", kinds=("fraction",))
    found = trees.detect(euclid.columns)
    assert found.tree.name == "euclid" and not found.ties
    desi = wide_catalogue(trees.get("desi"), suffix="", kinds=("fraction",))
    found = trees.detect(desi.columns)
    # smooth-or-featured_artifact and bar_strong... : DESI reads all 34, Euclid fewer
    assert found.tree.name == "desi"
    # the Cosmic Dawn tree minus ghost fits Euclid as well: said so, Euclid chosen
    cd = wide_catalogue(trees.get("cosmic-dawn"), suffix="", kinds=("fraction",))
    found = trees.detect(cd.columns)
    assert found.tree.name == "euclid" and "cosmic-dawn" in found.ties
    assert "pass --tree" in found.describe()


def test_a_gz_desi_file_with_three_campaigns_names_the_ignored_ones():
    frames = [wide_catalogue(trees.get(n), split=False).drop("id_str") for n in
              ("decals-dr12", "decals-dr5", "decals-dr8")]
    columns = ["id_str"] + [c for f in frames for c in f.columns]
    found = trees.detect(columns)
    assert found.tree.name == "decals-dr5"  # 34 answers, as dr8; dr5 first in ORDER
    assert found.others == {"decals-dr8": 78, "decals-dr12": 70}
    assert "--tree NAME --catalog OTHER" in found.describe()


def test_no_fit_names_the_closest_tree_and_a_forced_tree_must_fit(tmp_path):
    with pytest.raises(Exception, match="closest tree is gz2"):
        trees.detect(["id_str", "smooth-or-featured-gz3_smooth", "bulge-size-gz3_just-noticeable",
                      "something-odd-gz3_yes"])
    frame = wide_catalogue(trees.get("gz2"))
    path = tmp_path / "gz2.csv"
    frame.write_csv(path)
    root = tmp_path / "lake"
    out = cli("ingest", "votes", path, "--tree", "euclid", lake=root)
    assert out.exit_code == 1 and "no column of the file is a label of the euclid tree" in out.output
    assert "closest tree is gz2" in out.output and lake_hash(root) == ""
    out = cli("ingest", "votes", path, "--tree", "gz-2", lake=root)
    assert out.exit_code == 1 and "unknown tree 'gz-2' (did you mean gz2?)" in out.output
    out = cli("ingest", "votes", path, "--tree", "gz2", "--catalog", "gz2", lake=root)
    assert out.exit_code == 0 and "tree gz2" in out.output


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.with_columns(pl.col("bar-dr5_strong") + 0.5), "fractional values (e.g. "),
    (lambda f: f.with_columns(pl.lit(1e12).alias("bar-dr5_no")), "holds 1e+12"),
    (lambda f: f.with_columns(pl.lit(float("inf")).alias("bar-dr5_no")), "holds inf"),
    (lambda f: f.drop("bar-dr5_total-votes").with_columns(
        pl.when(pl.col("id_str") == "g001").then(None).otherwise(pl.col("bar-dr5_weak"))
        .alias("bar-dr5_weak")), "question bar: some answers' counts are missing"),
    (lambda f: f.with_columns(pl.col("bar-dr5_total-votes") - 5), "add up to more than its total"),
])
def test_vote_counts_that_would_change_quietly_are_refused(tmp_path, edit, message):
    frame = edit(wide_catalogue(trees.get("decals-dr5")).with_columns(
        pl.col("bar-dr5_total-votes").fill_nan(0), pl.col("bar-dr5_strong").fill_nan(0),
        pl.col("bar-dr5_weak").fill_nan(0), pl.col("bar-dr5_no").fill_nan(0)))
    path = tmp_path / "v.parquet"
    frame.write_parquet(path)
    root = tmp_path / "lake"
    before = lake_hash(root)
    out = cli("ingest", "votes", path, lake=root)
    assert out.exit_code == 1 and message in out.output, out.output
    assert out.output.count("\n") == 1 and lake_hash(root) == before


# ----------------------------------------------------------------------------- plain labels


def flags_file(tmp_path, ids, seed=0):
    rng = np.random.default_rng(seed)
    n = len(ids)
    redshift = np.round(rng.uniform(0, 1, n), 1)       # ties
    redshift[::7] = np.nan                             # unknown
    ring = (rng.random(n) < 0.3).astype(float)
    ring[::5] = np.nan
    frame = pl.DataFrame({"id_str": ids, "redshift": redshift, "ring": ring,
                          "lens": rng.random(n) < 0.1, "name": [f"n{i}" for i in range(n)]})
    path = tmp_path / "flags.csv"
    frame.write_csv(path)
    return path, frame


def test_ingest_labels_continuous_and_binary_and_sql_finds_them_with_the_votes(tmp_path):
    root = tmp_path / "lake"
    lake = build_lake(root)
    ids = lake.read("galaxies")["id_str"].to_list()
    path, frame = flags_file(tmp_path, ids + ["not-in-lake"])
    out = cli("ingest", "labels", path, lake=root)
    assert out.exit_code == 0, out.output
    assert "labels[catalog=flags]: redshift, ring (0/1), lens (0/1)" in out.output
    assert "1 ids not in the lake skipped" in out.output
    got = lake.read("labels", catalog="flags").filter(pl.col("label") == "redshift")
    want = frame.filter(pl.col("id_str").is_in(ids))
    assert got.height == len(ids)
    assert got["value"].null_count() == want["redshift"].is_nan().sum()
    # one place for every label of every catalog
    out = cli("sql", "SELECT catalog, count(DISTINCT label) AS n FROM all_labels GROUP BY ALL "
              "ORDER BY catalog", "--format", "csv", lake=root)
    assert out.output.splitlines()[1:] == ["flags,3", "volunteers,46"]
    out = cli("sql", "SELECT catalog, kind, tree FROM catalogs ORDER BY catalog", "--format", "csv",
              lake=root)
    assert "flags,labels," in out.output
    # a catalog is votes or labels, not both
    out = cli("ingest", "labels", path, "--catalog", "volunteers", lake=root)
    assert out.exit_code == 1 and "already holds votes" in out.output


@pytest.mark.parametrize("make, args, message", [
    (lambda ids: pl.DataFrame({"id_str": ids, "name": ["x"] * len(ids)}), [],
     "has no numeric column besides the id and split"),
    (lambda ids: pl.DataFrame({"id_str": ids, "z": 1.0, "name": "x"}), ["--columns", "z,name"],
     "column 'name' is String, not numbers"),
    (lambda ids: pl.DataFrame({"id_str": ids, "z": 1.0}), ["--columns", "mass"], "has no column 'mass'"),
    (lambda ids: pl.DataFrame({"id_str": ids, "z": [float("inf")] + [1.0] * (len(ids) - 1)}), [],
     "column 'z' holds an infinite value"),
    (lambda ids: pl.DataFrame({"id_str": ids[:2] + ids[:1], "z": [1.0, 2.0, 3.0]}), [],
     "duplicate id 'test-0000'"),
    (lambda ids: pl.DataFrame({"id_str": ["a", "b"], "z": [1.0, 2.0]}), [],
     "none of the 2 ids in"),
    (lambda ids: pl.DataFrame({"id_str": ids, "z": None}, schema={"id_str": pl.String, "z": pl.Float64}),
     [], "column 'z' has no values"),
    (lambda ids: pl.DataFrame({"id_str": ids, "z": 1.0, "split": "validation"}), [],
     "unknown split 'validation'"),
])
def test_ingest_labels_bad_input_is_one_line_and_leaves_the_lake_unchanged(tmp_path, make, args, message):
    root = tmp_path / "lake"
    lake = build_lake(root)
    ids = lake.read("galaxies")["id_str"].to_list()
    path = tmp_path / "bad.parquet"
    make(ids).write_parquet(path)
    before = lake_hash(root)
    out = cli("ingest", "labels", path, *args, lake=root)
    assert out.exit_code == 1 and message in out.output, out.output
    assert out.output.count("\n") == 1 and lake_hash(root) == before


# ----------------------------------------------------------------------------- the analysis


def test_analysis_on_plain_labels_is_exact_and_leaves_empty_labels_out(tmp_path):
    root = tmp_path / "lake"
    lake = build_lake(root)
    test_ids = lake.read("galaxies", split="test")["id_str"].to_list()
    ids = lake.read("galaxies")["id_str"].to_list()
    path, _ = flags_file(tmp_path, ids, seed=3)
    frame = pl.read_csv(path).with_columns(  # a label known on train only: empty on test
        pl.when(pl.col("id_str").str.starts_with("train")).then(1.5).otherwise(None).alias("mass"))
    frame.write_parquet(tmp_path / "flags.parquet")
    assert cli("ingest", "labels", tmp_path / "flags.parquet", "--catalog", "flags", lake=root).exit_code == 0
    out = cli("analyze", "--model", RUN_ID, "--catalog", "flags", "--permutations", "3", lake=root)
    assert out.exit_code == 0, out.output
    assert "1 label(s) have no value on split test and were left out: mass" in out.output
    assert "12 features x 3 labels" in out.output
    corr = lake.read("feature_label_corr", model_id=RUN_ID, split="test")
    assert sorted(corr["label"].unique()) == ["lens", "redshift", "ring"]
    split_ids, dense = dense_codes(lake, "test", 12)
    matrix = label_side.read_labels(lake, split_ids, "test", ["flags"]).values[:, :3]
    assert label_side.read_labels(lake, split_ids, "test", ["flags"]).exclude_question == ""
    for j, label in enumerate(["redshift", "ring", "lens"]):
        keep = ~np.isnan(matrix[:, j])
        for f in range(12):
            a, b = dense[keep, f], matrix[keep, j]
            want = scipy.stats.spearmanr(a, b)[0] if np.std(a) > 0 and np.std(b) > 0 else 0.0
            got = corr.filter((pl.col("label") == label) & (pl.col("feature") == f))["spearman"][0]
            assert got == pytest.approx(want, abs=1e-6)
    summary = lake.read("feature_summary", model_id=RUN_ID, split="test").sort("feature")
    np.testing.assert_allclose(summary["novelty"].to_numpy(), seed_novelty(dense, matrix), atol=1e-6)
    # no tree: the secondary view leaves nothing out
    np.testing.assert_allclose(summary["max_abs_spearman_secondary"].to_numpy(),
                               summary["max_abs_spearman"].to_numpy())
    assert lake.read("label_null", model_id=RUN_ID, split="test")["label"].n_unique() == 3
    assert cli("analyze", "--model", RUN_ID, "--catalog", "flags", "--skip-empty-labels",
               "--permutations", "0", lake=root).exit_code == 0


def test_two_catalogs_in_one_analysis_prefix_their_labels(tmp_path):
    root = tmp_path / "lake"
    lake = build_lake(root)
    path, _ = flags_file(tmp_path, lake.read("galaxies")["id_str"].to_list())
    assert cli("ingest", "labels", path, lake=root).exit_code == 0
    out = cli("analyze", "--model", RUN_ID, "--catalog", "volunteers,flags", "--permutations", "0",
              lake=root)
    assert out.exit_code == 0, out.output
    assert "12 features x 49 labels" in out.output
    labels = lake.read("feature_label_corr", model_id=RUN_ID, split="test")["label"].unique().to_list()
    assert "flags:ring" in labels and "volunteers:bar_strong" in labels
    info = lake.partition_info("feature_summary", model_id=RUN_ID, split="test")
    assert info.parameters["exclude_question"] == "volunteers:smooth-or-featured"
    best = lake.read("feature_summary", model_id=RUN_ID, split="test")["best_label_secondary"]
    assert not any(str(b).startswith("volunteers:smooth-or-featured_") for b in best.drop_nulls())
    # single-catalog analysis of the same model keeps the plain names
    assert cli("analyze", "--model", RUN_ID, "--permutations", "0", lake=root).exit_code == 0
    assert "bar_strong" in lake.read("feature_label_corr", model_id=RUN_ID, split="test")["label"].to_list()


def test_a_gz2_catalog_excludes_its_own_root_and_figures_name_it(tmp_path):
    root = tmp_path / "lake"
    lake = build_lake(root)
    ids = lake.read("galaxies")["id_str"].to_list()
    gz2 = trees.get("gz2")
    frame = wide_catalogue(gz2, n=len(ids), split=False).with_columns(pl.Series("id_str", ids))
    frame.write_parquet(tmp_path / "gz2.parquet")
    assert cli("ingest", "votes", tmp_path / "gz2.parquet", "--catalog", "gz2", lake=root).exit_code == 0
    out = cli("analyze", "--model", RUN_ID, "--catalog", "gz2", "--permutations", "2", lake=root)
    assert out.exit_code == 0, out.output
    assert "x 30 labels" in out.output
    corr = lake.read("feature_label_corr", model_id=RUN_ID, split="test")
    assert "something-odd_yes" in corr["label"].to_list()
    from galsae_lake.figures import load_figure_data
    data = load_figure_data(lake, RUN_ID)
    assert data.labels[:3] == ["smooth-or-featured_smooth", "smooth-or-featured_featured-or-disk",
                               "smooth-or-featured_artifact"]
    assert data.excluded_question == "smooth-or-featured"
    out = cli("analyze", "--model", RUN_ID, "--catalog", "gz2", "--exclude-question", "clumps", lake=root)
    assert out.exit_code == 1 and "not a question of the catalog's tree" in out.output


def test_votes_against_the_tree_are_counted_and_said(tmp_path):
    tree = trees.get("decals-dr5")
    frame = wide_catalogue(tree, n=40)
    from galsae_lake.sources import off_tree, votes_long
    assert off_tree(votes_long(frame, tree=tree), tree) == 0
    # galaxies whose spiral question was answered although nobody said "not edge-on"
    asked = frame["has-spiral-arms-dr5_total-votes"].fill_nan(0) > 0
    broken = frame.with_columns(
        pl.when(asked).then(0.0).otherwise(pl.col("disk-edge-on-dr5_no")).alias("disk-edge-on-dr5_no"),
        pl.when(asked).then(10.0).otherwise(pl.col("disk-edge-on-dr5_yes")).alias("disk-edge-on-dr5_yes"))
    # has-spiral-arms, bar and bulge-size are each asked after disk-edge-on_no
    assert off_tree(votes_long(broken, tree=tree), tree) == 3 * int(asked.sum()) > 0
    broken.write_parquet(tmp_path / "b.parquet")
    out = cli("ingest", "votes", tmp_path / "b.parquet", lake=tmp_path / "lake")
    assert out.exit_code == 0 and "have votes where no volunteer chose the answer" in out.output
