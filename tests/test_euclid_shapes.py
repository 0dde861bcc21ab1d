"""The seed's two paths on inputs in the exact published shapes, loaded as online.

Fixtures come from galsae_lake/testing_euclid.py: model repos as timm writes them (read through
``local-dir:`` and, from a hub cache, through ``hf-hub:`` itself), a euclid_q1-shaped dataset
repo with configurations, a euclid_q1_embeddings-shaped DatasetDict saved to disk and a Parquet in
the Q1 morphology catalogue's shape, each with the NEG / ``-`` / release-prefix id spellings.
"""

from __future__ import annotations

import io

import duckdb
import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from galsae_lake import gz
from galsae_lake.encoders import ENCODERS, MAE_EUCLID_ARCH, build_model, load_encoder
from galsae_lake.lake import Lake, vectors
from galsae_lake.sources.ids import normalize_id, normalize_id_expr, normalize_id_sql
from galsae_lake.testing import assert_one_line_error, cli, lake_hash
from galsae_lake.testing_euclid import (GALAXIES, euclid_q1_embeddings, euclid_q1_repo,
                                        hub_cache, hub_model_folder, q1_catalogue, save_config,
                                        spell)

MAE_REPO = "mwalmsley/euclid_encoder_mae_zoobot_vit_small_patch8_224"
ZOOBOT_REPO = "mwalmsley/zoobot-encoder-euclid"
CONFIG = "v1-gz_arcsinh_vis_y"
FP32 = ("--precision", "fp32", "--workers", "0", "--batch-size", "2")


def test_one_normal_form_for_ids_in_python_polars_and_sql():
    galaxy = GALAXIES[0]
    spellings = [spell(galaxy, style) for style in ("q1", "catalogue", "gz_euclid")]
    assert spellings == ["102011288_NEG842787454598311005", "102011288_-842787454598311005",
                         "F-006_102011288_NEG842787454598311005"]
    assert {normalize_id(s) for s in spellings} == {"102011288_-842787454598311005"}
    others = ["g7", "synth-000012", "102020107_570178806082198283", "F-006_102020107_570178806082198283",
              "F-006_not_an_id", "EDF-F_1_2", "a_NEGb"]
    assert [normalize_id(v) for v in others] == [
        "g7", "synth-000012", "102020107_570178806082198283", "102020107_570178806082198283",
        "F-006_not_an_id", "EDF-F_1_2", "a_-b"]  # a prefix goes only in front of a Euclid id
    values = spellings + others
    python = [normalize_id(v) for v in values]
    assert python == [normalize_id(v) for v in python]  # idempotent
    polars = pl.DataFrame({"id_str": values}).select(normalize_id_expr())["id_str"].to_list()
    frame = pl.DataFrame({"id_str": values})  # noqa: F841 (read by DuckDB below)
    sql = duckdb.sql(f"SELECT {normalize_id_sql()} AS n FROM frame").pl()["n"].to_list()
    assert polars == python == sql


def _state(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.fixture(scope="module")
def lake224(tmp_path_factory):
    """Two galaxies at 224 px in a lake, from a euclid_q1-shaped repo (the models' input size,
    so no resize stands between the stored pixels and the reference)."""
    base = tmp_path_factory.mktemp("euclid224")
    ids = [spell(g, "q1") for g in GALAXIES[:2]]
    repo = euclid_q1_repo(base / "euclid_q1", {"train": ids}, size=224)
    root = base / "lake"
    result = cli("ingest", "hf", "--dataset", repo, "--config", CONFIG, "--splits", "train",
                 lake=root)
    assert result.exit_code == 0, result.output
    images = Lake(root).read("images", split="train")
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in images["image"]])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255  # [0, 1], as galaxy-datasets
    return root, base, images["id_str"].to_list(), x


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """A Hugging Face hub cache that timm's ``hf-hub:`` source reads with the hub offline."""
    import huggingface_hub.constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.mark.slow
def test_mae_euclid_is_the_authors_vit_and_embeds_block_11_patch_token_means(lake224, offline_hub):
    root, base, ids, x = lake224
    folder = hub_model_folder(base / "mae-folder", MAE_EUCLID_ARCH)
    assert save_config(folder)["architecture"] == MAE_EUCLID_ARCH
    state = _state(folder)
    # global_pool='avg': fc_norm is the LayerNorm, norm an Identity (no norm.* keys)
    assert "fc_norm.weight" in state and "norm.weight" not in state
    # --weights random builds that same architecture
    random = build_model(ENCODERS["mae-euclid"]).state_dict()
    assert {k: v.shape for k, v in random.items()} == {k: v.shape for k, v in state.items()}
    # hf-hub: reads the repo from the cache, through timm's own hub source
    hub_cache(offline_hub, MAE_REPO, folder)
    model, info = load_encoder("mae-euclid")
    assert (info.weights, info.weights_id) == ("hub", f"hub:hf-hub:{MAE_REPO}")
    assert (info.arch, info.features, info.embedding_dim) == (MAE_EUCLID_ARCH,
                                                              "pooled_features_block_11", 384)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())

    result = cli("embed", "--encoder", "mae-euclid", "--weights", folder, *FP32, lake=root)
    assert result.exit_code == 0, result.output
    stored = Lake(root).read("embeddings", encoder="mae-euclid", split="train")
    assert stored["id_str"].to_list() == ids
    assert Lake(root).partition_info("embeddings", encoder="mae-euclid",
                                     split="train").recorded["features"] == "pooled_features_block_11"
    # the reference: the architecture with the folder's weights, its blocks run by hand
    import timm

    reference = timm.create_model(MAE_EUCLID_ARCH, pretrained=False)
    reference.load_state_dict(state, strict=True)
    reference.eval()
    with torch.inference_mode():
        tokens = reference.norm_pre(reference.patch_drop(reference._pos_embed(reference.patch_embed(x))))
        for block in reference.blocks:
            tokens = block(tokens)
        patch_mean = tokens[:, reference.num_prefix_tokens:].mean(1).numpy()
        head = reference.forward_head(reference.forward_features(x), pre_logits=True).numpy()
    got = vectors(stored)
    assert got.shape == (2, 384)
    np.testing.assert_allclose(got, patch_mean, rtol=1e-4, atol=1e-4)
    # and not forward_head, which adds fc_norm
    assert np.abs(head - patch_mean).max() > 0.1


@pytest.mark.slow
def test_zoobot_euclid_from_the_hub_layout_embeds_forward_head(lake224, offline_hub):
    root, base, ids, x = lake224
    folder = hub_model_folder(base / "zoobot-folder", "convnext_nano")
    assert save_config(folder)["architecture"] == "convnext_nano"
    hub_cache(offline_hub, ZOOBOT_REPO, folder)
    result = cli("embed", "--encoder", "zoobot-euclid", *FP32, lake=root)  # --weights hub
    assert result.exit_code == 0, result.output
    result = cli("embed", "--encoder", "zoobot-euclid", "--weights", folder, "--as", "zoobot-dir",
                 *FP32, lake=root)
    assert result.exit_code == 0, result.output
    import timm

    reference = timm.create_model("convnext_nano", pretrained=False, num_classes=0)
    reference.load_state_dict(_state(folder), strict=True)
    reference.eval()
    with torch.inference_mode():
        expected = reference.forward_head(reference.forward_features(x), pre_logits=True).numpy()
    lake = Lake(root)
    for tag in ("zoobot-euclid", "zoobot-dir"):
        stored = lake.read("embeddings", encoder=tag, split="train")
        assert stored["id_str"].to_list() == ids
        np.testing.assert_allclose(vectors(stored), expected, rtol=1e-4, atol=1e-4)
        assert lake.partition_info("embeddings", encoder=tag, split="train").recorded["features"] == "head"


def test_a_block_of_any_vit_is_an_option_and_a_missing_block_is_one_line(lake224):
    root = lake224[0]
    result = cli("embed", "--encoder", "mae-synth", "--weights", "shipped", "--features", "2",
                 *FP32, lake=root)
    assert result.exit_code == 0, result.output
    assert "embeddings encoder=mae-synth-block2" in result.output
    lake = Lake(root)
    assert lake.partition_info("embeddings", encoder="mae-synth-block2",
                               split="train").recorded["features"] == "pooled_features_block_2"
    before = lake_hash(root)
    for args, fragment in (
            (("--encoder", "mae-synth", "--features", "pooled_features_block_6"), "blocks 0-5"),
            (("--encoder", "mae-synth", "--features", "block-two"), "--features"),
    ):
        assert_one_line_error(cli("embed", *args, "--weights", "shipped", *FP32, lake=root),
                              fragment)
        assert lake_hash(root) == before


@pytest.mark.parametrize("lake_style, embeddings_style, catalogue_style", [
    ("q1", "q1", "catalogue"),          # as published: NEG in the datasets, - in the catalogue
    ("gz_euclid", "q1", "catalogue"),   # galaxies with a release prefix
    ("q1", "gz_euclid", "q1"),          # the other way round
])
def test_the_seeds_mae_path_inputs_join_on_the_normal_form(tmp_path, lake_style, embeddings_style,
                                                           catalogue_style):
    train, test = GALAXIES[:5], GALAXIES[5:7]
    repo = euclid_q1_repo(tmp_path / "euclid_q1", {"train": [spell(g, lake_style) for g in train],
                                                   "test": [spell(g, lake_style) for g in test]})
    root = tmp_path / "lake"
    result = cli("ingest", "hf", "--dataset", repo, "--config", CONFIG, lake=root)
    assert result.exit_code == 0, result.output
    assert "(train 5, test 2; 7 in all)" in result.output and "no votes" in result.output
    lake = Lake(root)
    assert lake.exists("images") and not lake.exists("votes")
    lake_id = {normalize_id(i): i for i in lake.read("galaxies")["id_str"]}

    # euclid_q1_embeddings: G0-G3 and G7 (not in euclid_q1) in train; G5 and G4 (a train galaxy
    # of euclid_q1) in test. The seed's inner join, split by split, keeps G0-G3 and G5.
    emb_splits = {"train": [spell(g, embeddings_style) for g in GALAXIES[:4] + [GALAXIES[7]]],
                  "test": [spell(g, embeddings_style) for g in (GALAXIES[5], GALAXIES[4])]}
    values = euclid_q1_embeddings(tmp_path / "euclid_q1_embeddings", emb_splits)
    result = cli("ingest", "hf-embeddings", "--dataset", tmp_path / "euclid_q1_embeddings",
                 "--column", "pooled_features_block_11", "--encoder", "mae-euclid", lake=root)
    assert result.exit_code == 0, result.output
    assert "6 of 7 ids matched galaxies, 1 did not" in result.output
    assert "1 matched ids are in another split" in result.output
    for split, rows in (("train", slice(0, 4)), ("test", slice(0, 1))):
        stored = lake.read("embeddings", encoder="mae-euclid", split=split)
        expect_ids = [lake_id[normalize_id(i)] for i in emb_splits[split][rows]]
        assert stored["id_str"].to_list() == expect_ids  # in the lake's spelling
        expected = values[split]["pooled_features_block_11"][rows]
        assert vectors(stored).view(np.uint32).tolist() == expected.view(np.uint32).tolist()
    match = lake.partition_info("embeddings", encoder="mae-euclid", split="train").id_match
    respelled = 0 if lake_style == embeddings_style else 6
    assert match == {"against": "galaxies", "incoming": 7, "matched": 6, "unmatched": 1,
                     "respelled": respelled, "other_split": 1, "kept": 5}

    # the Q1 morphology catalogue, its own votes catalog: every galaxy and one the lake lacks
    catalogue_ids = [spell(g, catalogue_style) for g in GALAXIES] + ["102099999_-1"]
    frame = q1_catalogue(tmp_path / "morphology_catalogue.parquet", catalogue_ids)
    result = cli("ingest", "votes", tmp_path / "morphology_catalogue.parquet", "--catalog",
                 "zoobot-predictions", lake=root)
    assert result.exit_code == 0, result.output
    assert "7 of 9 ids matched galaxies, 2 did not" in result.output
    votes = lake.read("votes", catalog="zoobot-predictions")
    assert set(votes["id_str"]) == set(lake_id.values())
    assert sorted(votes["label"].unique()) == sorted(gz.LABEL_NAMES)  # _dirichlet not a label
    assert votes["count"].null_count() == votes.height  # predictions: fractions only
    first = votes.filter(pl.col("id_str") == lake_id[normalize_id(catalogue_ids[0])],
                         pl.col("label") == "bar_strong")["fraction"][0]
    assert first == pytest.approx(float(frame["bar_strong_fraction"][0]), abs=1e-7)
    info = lake.partition_info("votes", catalog="zoobot-predictions", split="train")
    assert (info.id_match["matched"], info.id_match["unmatched"]) == (7, 2)
    # downstream, plain id_str joins meet: embeddings x catalogue
    joined = cli("sql", "SELECT count(DISTINCT e.id_str) AS n FROM embeddings e JOIN votes v "
                 "USING (id_str, split) WHERE v.catalog = 'zoobot-predictions'", "--format", "csv",
                 lake=root)
    assert joined.output.split() == ["n", "5"]


def test_an_inner_join_that_matches_nothing_is_an_error(tmp_path):
    repo = euclid_q1_repo(tmp_path / "euclid_q1", {"train": [spell(g, "q1") for g in GALAXIES[:2]]})
    root = tmp_path / "lake"
    assert cli("ingest", "hf", "--dataset", repo, "--config", CONFIG, "--splits", "train",
               lake=root).exit_code == 0
    euclid_q1_embeddings(tmp_path / "emb", {"train": [spell(g, "q1") for g in GALAXIES[4:6]]}, dim=8)
    before = lake_hash(root)
    result = cli("ingest", "hf-embeddings", "--dataset", tmp_path / "emb", "--column",
                 "pooled_features_block_11", "--encoder", "mae-euclid", lake=root)
    assert_one_line_error(result, "none of the 2 ids matches a galaxy")
    assert lake_hash(root) == before
    empty = tmp_path / "empty"
    result = cli("ingest", "hf-embeddings", "--dataset", tmp_path / "emb", "--column",
                 "pooled_features_block_11", "--encoder", "mae-euclid", lake=empty)
    assert_one_line_error(result, "no galaxies")
    assert not (empty / "embeddings").exists()
