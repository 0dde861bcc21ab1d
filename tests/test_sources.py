"""Sources: the synthetic world, the Hugging Face loader and vote files, and their bad inputs."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from PIL import Image

from galsae_lake import gz
from galsae_lake.cli import main
from galsae_lake.errors import InputError
from galsae_lake.lake import Lake
from galsae_lake.sources import normalize_id, votes_long
from galsae_lake.sources import synthetic as sy
from galsae_lake.sources.files import ingest_votes
from galsae_lake.sources.huggingface import ingest_hf
from galsae_lake.testing import assert_refused


# ---------------------------------------------------------------- helpers
def run(root: Path, *args: str):
    return CliRunner().invoke(main, ["--lake", str(root), *args])


@pytest.fixture(scope="module")
def synth_lake(tmp_path_factory) -> Lake:
    root = tmp_path_factory.mktemp("synth") / "lake"
    result = run(root, "synth", "--n", "240", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert "synth: 240 galaxies" in result.output
    return Lake(root)


# ---------------------------------------------------------------- shared pieces
def test_normalize_id():
    assert normalize_id("102020107_NEG570178806082198283") == "102020107_-570178806082198283"
    assert normalize_id("102020107_570178806082198283") == "102020107_570178806082198283"


def test_votes_long_from_counts_fills_totals_and_fractions():
    wide = pl.DataFrame({
        "id_str": ["a", "b"],
        "bar-euclid_strong": [2, 0], "bar-euclid_weak": [1, 0], "bar-euclid_no": [1, 0],
        "smooth-or-featured_smooth": [3, None], "smooth-or-featured_featured-or-disk": [1, None],
        "smooth-or-featured_problem": [0, None],
    })
    long = votes_long(wide)
    assert long.columns == ["id_str", "question", "answer", "label", "count", "total", "fraction"]
    assert long.height == 12
    a = {r["label"]: r for r in long.filter(pl.col("id_str") == "a").to_dicts()}
    assert a["bar_strong"]["total"] == 4 and a["bar_strong"]["fraction"] == 0.5
    assert a["smooth-or-featured_smooth"]["fraction"] == 0.75
    b = {r["label"]: r for r in long.filter(pl.col("id_str") == "b").to_dicts()}
    assert b["bar_no"]["total"] == 0 and b["bar_no"]["fraction"] is None  # reached by nobody
    assert b["smooth-or-featured_smooth"]["total"] is None  # not in the catalogue at all
    # galaxy order kept, labels in tree order
    assert long["label"].to_list()[:3] == ["smooth-or-featured_smooth",
                                          "smooth-or-featured_featured-or-disk",
                                          "smooth-or-featured_problem"]


def test_votes_long_fractions_only_nan_means_not_asked():
    wide = pl.DataFrame({"id_str": ["x", "y"], "bar_strong_fraction": [0.25, float("nan")],
                         "bar_no_fraction": [0.75, None]})
    long = votes_long(wide)
    assert long["count"].null_count() == 4
    assert long.filter(pl.col("id_str") == "y")["fraction"].null_count() == 2
    assert long.filter(pl.col("id_str") == "x")["fraction"].to_list() == [0.25, 0.75]


def test_votes_long_refuses_the_same_label_twice():
    wide = pl.DataFrame({"id_str": ["x"], "bar_strong_fraction": [0.2], "bar-euclid_strong_fraction": [0.2]})
    with pytest.raises(InputError, match="both hold bar_strong"):
        votes_long(wide)


# ---------------------------------------------------------------- synthetic world
def test_population_rare_factors_are_common_enough():
    pop = sy.draw_population(4000, seed=0)
    for factor in ("ring", "lens_arc", "bar", "dust_lane", "merger", "clumps", "satellite_trail",
                   "diffraction_spikes", "foreground_star", "central_star"):
        share = (pop[factor] > 0).mean()
        assert 0.05 <= share <= 0.45, (factor, share)
    assert (pop["disturbance"] > 0).mean() >= 0.05
    arms = pop["arm_count"][pop["spiral"] > 0]
    assert set(np.unique(arms)) == {1, 2, 3, 4, 5, 6}
    # kinds are exclusive and cover every galaxy
    kinds = pop["smooth"] + pop["disk"] + pop["edge_on"] + pop["central_star"]
    assert np.all(kinds == 1)
    # factors that only make sense on some kinds
    assert np.all(pop["lens_arc"][pop["smooth"] == 0] == 0)
    assert np.all(pop["dust_lane"][pop["edge_on"] == 0] == 0)
    assert np.all(np.isnan(pop["pitch_angle"][pop["spiral"] == 0]))


def test_render_is_deterministic_rgb_and_shows_light():
    pop = sy.draw_population(20, image_size=64, seed=5)
    a = sy.render(pop, np.arange(20), 64, seed=5)
    b = sy.render(pop, np.arange(20), 64, seed=5)
    assert a.shape == (20, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    # the centre is brighter than the corners for galaxies (not a blank or pure-noise image)
    centre = a[:, 28:36, 28:36].mean(axis=(1, 2, 3))
    corner = a[:, :8, :8].mean(axis=(1, 2, 3))
    galaxies = pop["central_star"] == 0
    assert np.all(centre[galaxies] > corner[galaxies] + 10)
    png = Image.open(io.BytesIO(sy.render_png(pop, np.arange(2), 64, 5)[0]))
    assert png.format == "PNG" and png.mode == "RGB" and png.size == (64, 64)
    big = sy.render(sy.draw_population(2, image_size=96, seed=5), np.arange(2), 96, seed=5)
    assert big.shape == (2, 96, 96, 3)


def test_synth_fills_the_four_tables(synth_lake):
    galaxies = synth_lake.read("galaxies")
    assert galaxies.height == 240 and galaxies["id_str"].n_unique() == 240
    assert set(galaxies["split"]) == {"train", "test"}
    assert 20 <= (galaxies["split"] == "test").sum() <= 80
    assert set(galaxies["source"]) == {"synthetic"}
    assert galaxies["id_str"].str.contains("NEG").any() and (~galaxies["id_str"].str.contains("NEG")).any()
    assert galaxies["dec"].is_between(-51, 68).all()
    # ids encode the position as Euclid's do
    row = galaxies.row(0, named=True)
    number = int(normalize_id(row["id_str"]).split("_")[1])
    assert math.isclose(abs(number) % 10**9 / 1e7, abs(row["dec"]), abs_tol=1e-6)
    images = synth_lake.read("images")
    assert images.height == 240
    assert Image.open(io.BytesIO(images["image"][0])).size == (64, 64)
    truth = synth_lake.read("truth")
    assert truth.height == 240 * len(sy.FACTORS)
    assert set(truth["factor"]) == set(sy.FACTORS)
    assert truth.filter(pl.col("factor") == "spiral")["value"].is_in([0.0, 1.0]).all()
    votes = synth_lake.read("votes", catalog="volunteers")
    assert votes.height == 240 * 46
    assert set(votes["label"]) == set(gz.LABEL_NAMES)


def test_synth_is_deterministic_per_seed(tmp_path, synth_lake):
    again = Lake(tmp_path / "again")
    sy.synthesize(again, 240, seed=3)
    for table in ("galaxies", "votes", "truth", "images"):
        left = synth_lake.read(table).sort("id_str", maintain_order=True)
        right = again.read(table).sort("id_str", maintain_order=True)
        assert left.equals(right), table
    other = Lake(tmp_path / "other")
    sy.synthesize(other, 240, seed=4)
    assert not set(other.read("galaxies")["id_str"]) & set(synth_lake.read("galaxies")["id_str"])


def test_simulated_votes_follow_the_tree(synth_lake):
    votes = synth_lake.read("votes")
    # fraction is NULL exactly where nobody reached the question
    assert votes.filter((pl.col("total") == 0) != pl.col("fraction").is_null()).height == 0
    per_question = votes.group_by("id_str", "question").agg(
        pl.col("count").sum().alias("counted"), pl.col("total").first(), pl.col("total").n_unique().alias("k"))
    assert (per_question["k"] == 1).all()
    assert (per_question["counted"] == per_question["total"]).all()
    fraction_sum = votes.filter(pl.col("total") > 0).group_by("id_str", "question").agg(pl.col("fraction").sum())
    assert np.allclose(fraction_sum["fraction"].to_numpy(), 1.0)
    # a question's total never exceeds the count of the answer that opens it
    counts = {(r["id_str"], r["label"]): r["count"] for r in votes.iter_rows(named=True)}
    totals = {(r["id_str"], r["question"]): r["total"] for r in per_question.iter_rows(named=True)}
    checked = 0
    for (galaxy, question), total in totals.items():
        parent = gz.DEPENDENCIES[question]
        limit = counts[(galaxy, parent)] if parent else totals[(galaxy, "smooth-or-featured")]
        assert total <= limit, (galaxy, question)
        checked += 1
    assert checked == 240 * 13
    # volunteers per galaxy as in GZ Euclid: 3-40, median about 10; deep questions reach fewer
    first = per_question.filter(pl.col("question") == "smooth-or-featured")["total"]
    assert first.min() >= 3 and first.max() <= 40 and 8 <= first.median() <= 12
    deep = per_question.filter(pl.col("question") == "spiral-arm-count")["total"]
    assert deep.mean() < 0.5 * first.mean()


def test_simulated_volunteers_see_the_planted_truth(synth_lake):
    truth = synth_lake.read("truth").pivot(on="factor", index="id_str", values="value")
    votes = synth_lake.read("votes").pivot(on="label", index="id_str", values="fraction")
    both = truth.join(votes, on="id_str")
    smooth = both.filter(pl.col("smooth") == 1)["smooth-or-featured_smooth"].mean()
    edge = both.filter(pl.col("edge_on") == 1)["smooth-or-featured_featured-or-disk"].mean()
    star = both.filter(pl.col("central_star") == 1)["smooth-or-featured_problem"].mean()
    assert smooth > 0.6 and edge > 0.6 and star > 0.6
    spiral = both.filter(pl.col("spiral") == 1)["has-spiral-arms_yes"].drop_nulls().mean()
    plain = both.filter((pl.col("disk") == 1) & (pl.col("spiral") == 0))["has-spiral-arms_yes"].drop_nulls().mean()
    assert spiral > plain + 0.3


# ---------------------------------------------------------------- Hugging Face, offline
def _jpeg(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((24, 24, 3), value, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_hf_dataset(folder: Path, suffix: str = "-euclid", sizes=(("train", 12), ("test", 5)),
                     bad_fraction: bool = False) -> dict[str, list[str]]:
    """A tiny dataset in gz_euclid's shape (Image feature, id_str with NEG, wide vote columns),
    saved as the hub lays out Parquet files, so ``load_dataset(folder)`` reads it."""
    import datasets

    (folder / "data").mkdir(parents=True, exist_ok=True)
    written = {}
    start = 0
    for split, n in sizes:
        ids = [f"10202{i:04d}_{'NEG' if i % 2 else ''}5701788060821{i:05d}" for i in range(start, start + n)]
        start += n
        smooth = np.arange(n) % 4
        featured = 4 - smooth
        rows = {"id_str": ids, "image": [{"bytes": _jpeg(10 * i), "path": None} for i in range(n)],
                "ra": list(np.linspace(60, 61, n)), "dec": list(np.linspace(-48, -47, n)),
                "dr": ["q1"] * n}
        q = f"smooth-or-featured{suffix}"
        rows[f"{q}_smooth"] = smooth.tolist()
        rows[f"{q}_featured-or-disk"] = featured.tolist()
        rows[f"{q}_problem"] = [0] * n
        rows[f"{q}_total-votes"] = [4] * n
        rows[f"{q}_smooth_fraction"] = (smooth / 4).tolist()
        if bad_fraction:
            rows[f"{q}_smooth_fraction"][1] = 1.5
        rows[f"{q}_featured-or-disk_fraction"] = (featured / 4).tolist()
        rows[f"{q}_problem_fraction"] = [0.0] * n
        b = f"bar{suffix}"
        rows[f"{b}_strong"] = [1 if i % 3 else 0 for i in range(n)]  # not more than the total
        rows[f"{b}_no"] = [0] * n
        rows[f"{b}_weak"] = [0] * n
        rows[f"{b}_total-votes"] = [1 if i % 3 else 0 for i in range(n)]
        rows[f"{b}_strong_fraction"] = [1.0 if i % 3 else float("nan") for i in range(n)]
        features = datasets.Features({
            k: datasets.Image() if k == "image" else datasets.Value("string") if k in ("id_str", "dr")
            else datasets.Value("float64") if ("fraction" in k or k in ("ra", "dec")) else datasets.Value("int64")
            for k in rows})
        datasets.Dataset.from_dict(rows, features=features).to_parquet(
            str(folder / "data" / f"{split}-00000-of-00001.parquet"))
        written[split] = ids
    return written


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("hf") / "gz_euclid"
    return folder, write_hf_dataset(folder)


def test_ingest_hf_offline_through_load_dataset(tmp_path, hf_folder):
    folder, ids = hf_folder
    root = tmp_path / "lake"
    result = run(root, "ingest", "hf", "--dataset", str(folder))
    assert result.exit_code == 0, result.output
    assert "gz_euclid (train 12, test 5; 17 in all)" in result.output
    lake = Lake(root)
    galaxies = lake.read("galaxies").sort("id_str")
    assert sorted(galaxies["id_str"]) == sorted(ids["train"] + ids["test"])  # kept as given, NEG and all
    assert set(galaxies["source"]) == {"gz_euclid"}
    assert galaxies["ra"].null_count() == 0
    images = lake.read("images", split="test")
    first = images.filter(pl.col("id_str") == ids["test"][0])["image"][0]
    assert first == _jpeg(0)  # the stored JPEG bytes, not re-encoded
    votes = lake.read("votes", catalog="volunteers", split="train")
    assert votes.height == 12 * 6
    bar = votes.filter(pl.col("label") == "bar_strong")
    assert bar["fraction"].null_count() == 4  # i % 3 == 0: nobody reached the bar question
    assert bar.filter(pl.col("total") == 0)["fraction"].null_count() == 4
    smooth = votes.filter(pl.col("label") == "smooth-or-featured_smooth").sort("id_str")
    assert smooth["total"].unique().to_list() == [4]


def test_ingest_hf_limit_streams_in_batches_and_reads_unsuffixed(tmp_path):
    folder = tmp_path / "plain"
    write_hf_dataset(folder, suffix="", sizes=(("train", 9), ("test", 3)))
    lake = Lake(tmp_path / "lake")
    summary = ingest_hf(lake, str(folder), splits=("train",), limit=7, batch_size=3)
    assert summary["splits"] == {"train": 7}
    assert lake.read("galaxies").height == 7
    assert lake.read("votes")["label"].unique().len() == 6
    assert lake.partitions("galaxies") == [{"split": "train"}]


# ---------------------------------------------------------------- vote files
def _wide(ids, suffix="-euclid"):
    q = f"smooth-or-featured{suffix}"
    return pl.DataFrame({
        "id_str": ids,
        f"{q}_smooth_fraction": [0.7, float("nan"), 0.1][: len(ids)],
        f"{q}_featured-or-disk_fraction": [0.2, None, 0.8][: len(ids)],
        f"{q}_problem_fraction": [0.1, None, 0.1][: len(ids)],
        "split": ["train", "test", "train"][: len(ids)],
    })


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("suffix", ["-euclid", ""])
def test_ingest_votes_file_formats(tmp_path, fmt, suffix):
    path = tmp_path / f"votes.{fmt}"
    frame = _wide(["1_NEG5", "2_6", "3_7"], suffix)
    frame.write_csv(path) if fmt == "csv" else frame.write_parquet(path)
    root = tmp_path / "lake"
    result = run(root, "ingest", "votes", str(path), "--catalog", "zoobot-q1")
    assert result.exit_code == 0, result.output
    assert "3 galaxies (train 2, test 1)" in result.output
    votes = Lake(root).read("votes", catalog="zoobot-q1").sort("id_str", "label")
    assert votes.height == 9
    assert votes["count"].null_count() == 9  # predicted fractions: no counts
    nan_row = votes.filter(pl.col("id_str") == "2_6")
    assert nan_row["fraction"].null_count() == 3  # NaN and NULL both mean not asked
    assert votes.filter(pl.col("id_str") == "1_NEG5", pl.col("answer") == "smooth")["fraction"][0] == 0.7


def test_ingest_votes_takes_splits_and_id_spelling_from_the_lake(tmp_path, synth_lake):
    root = tmp_path / "lake"
    sy.synthesize(Lake(root), 60, seed=9)
    galaxies = Lake(root).read("galaxies")
    neg = galaxies.filter(pl.col("id_str").str.contains("NEG")).head(2)
    plain = galaxies.filter(~pl.col("id_str").str.contains("NEG")).head(1)
    ids = [normalize_id(i) for i in neg["id_str"]] + plain["id_str"].to_list()  # '-' spelling
    frame = _wide(ids).drop("split").with_columns(pl.col("id_str"))
    frame = pl.concat([frame, _wide(["999_1"]).drop("split")])
    path = tmp_path / "q1.parquet"
    frame.write_parquet(path)
    summary = ingest_votes(Lake(root), path, catalog="zoobot-q1")
    assert summary["galaxies"] == 3 and summary["unmatched"] == 1
    stored = Lake(root).read("votes", catalog="zoobot-q1")
    assert set(stored["id_str"]) == set(neg["id_str"]) | set(plain["id_str"])  # the lake's NEG form
    expect = dict(zip(galaxies["id_str"], galaxies["split"]))
    assert all(expect[r["id_str"]] == r["split"] for r in stored.iter_rows(named=True))
    # the volunteers catalog is untouched
    assert Lake(root).read("votes", catalog="volunteers").height == 60 * 46


# ---------------------------------------------------------------- bad input
def _bad_files(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (CLI args after the lake, expected message fragment)."""
    cases = {}
    (tmp / "empty.csv").write_text("")
    cases["empty file"] = (["ingest", "votes", str(tmp / "empty.csv")], "is empty")
    (tmp / "header.csv").write_text("id_str,bar_strong_fraction,split\n")
    cases["header only"] = (["ingest", "votes", str(tmp / "header.csv")], "has no rows")
    _wide(["a", "b", "c"]).rename({"id_str": "objid"}).write_csv(tmp / "noid.csv")
    cases["no id column"] = (["ingest", "votes", str(tmp / "noid.csv")], "no id column 'id_str'")
    _wide(["a", "b", "a"]).write_csv(tmp / "dup.csv")
    cases["duplicate ids"] = (["ingest", "votes", str(tmp / "dup.csv")], "duplicate id 'a'")
    _wide(["a", "b", "c"]).with_columns(
        pl.lit(1.2).alias("smooth-or-featured-euclid_smooth_fraction")).write_parquet(tmp / "range.parquet")
    cases["fraction above 1"] = (["ingest", "votes", str(tmp / "range.parquet")], "outside [0, 1]")
    _wide(["a", "b", "c"]).with_columns(
        pl.lit(-0.1).alias("smooth-or-featured-euclid_problem_fraction")).write_csv(tmp / "neg.csv")
    cases["fraction below 0"] = (["ingest", "votes", str(tmp / "neg.csv")], "outside [0, 1]")
    pl.DataFrame({"id_str": ["a"], "split": ["train"], "mass": [1.0]}).write_csv(tmp / "nolabel.csv")
    cases["no label columns"] = (["ingest", "votes", str(tmp / "nolabel.csv")], "no Galaxy Zoo label columns")
    _wide(["a", "b", "c"]).with_columns(pl.lit("val").alias("split")).write_csv(tmp / "split.csv")
    cases["unknown split in file"] = (["ingest", "votes", str(tmp / "split.csv")], "unknown split 'val'")
    cases["missing file"] = (["ingest", "votes", str(tmp / "nope.csv")], "no such file")
    return cases


def test_bad_vote_files_fail_in_one_line_and_leave_the_lake_unchanged(tmp_path, synth_lake):
    for name, (args, message) in _bad_files(tmp_path).items():
        result = assert_refused(synth_lake.root, args, message)
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, name


def test_bad_hf_input_fails_in_one_line_and_leaves_the_lake_unchanged(tmp_path, hf_folder, synth_lake):
    folder, _ = hf_folder
    bad = tmp_path / "bad_hf"
    write_hf_dataset(bad, bad_fraction=True)
    cases = {
        "unknown split": (["ingest", "hf", "--dataset", str(folder), "--splits", "train,validation"],
                          "unknown split 'validation'"),
        "fraction outside [0, 1] mid-stream": (["ingest", "hf", "--dataset", str(bad)], "outside [0, 1]"),
        "no such dataset": (["ingest", "hf", "--dataset", str(tmp_path / "missing")], "cannot load dataset"),
    }
    for name, (args, message) in cases.items():
        assert assert_refused(synth_lake.root, args, message).exit_code == 1, name


def test_bad_synth_arguments(tmp_path):
    root = tmp_path / "lake"
    for args, message in ((["--n", "0"], "at least 1"), (["--image-size", "8"], "at least 32"),
                          (["--test-fraction", "1.5"], "test fraction")):
        result = run(root, "synth", *args)
        assert result.exit_code == 1 and message in result.output, result.output
    assert not root.exists()


def test_help_examples_name_real_options():
    for command in (["synth"], ["ingest", "hf"], ["ingest", "votes"]):
        result = CliRunner().invoke(main, [*command, "--help"])
        assert result.exit_code == 0 and "Example:" in result.output


def test_ingest_hf_reads_a_save_to_disk_folder(tmp_path):
    import datasets

    ids = ["1_NEG2", "3_4", "5_NEG6"]
    rows = {"id_str": ids, "image": [Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)) for i in range(3)],
            "bar-euclid_strong_fraction": [0.5, 0.0, float("nan")], "bar-euclid_no_fraction": [0.5, 1.0, float("nan")]}
    folder = tmp_path / "saved"
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows)}).save_to_disk(str(folder))
    lake = Lake(tmp_path / "lake")
    assert ingest_hf(lake, str(folder), splits=("test",))["splits"] == {"test": 3}
    images = lake.read("images")
    assert images.height == 3
    assert Image.open(io.BytesIO(images["image"][2])).getpixel((0, 0)) == (80, 80, 80)
    assert lake.read("votes")["fraction"].null_count() == 2


def test_a_cutout_does_not_depend_on_its_batch():
    pop = sy.draw_population(12, seed=2)
    whole = sy.render(pop, np.arange(12), 64, seed=2)
    alone = sy.render(pop, np.array([7]), 64, seed=2)
    assert np.array_equal(whole[7], alone[0])
    assert not np.array_equal(whole[7], sy.render(pop, np.array([7]), 64, seed=3)[0])
