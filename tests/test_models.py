"""galsae_lake.models: one way to find an SAE run or a PCA, and their codes under one set of names."""

from __future__ import annotations

import polars as pl
import pytest

from galsae_lake import models
from galsae_lake.errors import InputError
from galsae_lake.testing import (ENCODER, OLD_PCA_ID, PCA_ID, RUN_ID, assert_refused,
                                 build_analyzed_lake)


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    return build_analyzed_lake(tmp_path_factory.mktemp("models") / "lake", n_galaxies=40,
                               with_images=False, permutations=0)


def test_models_are_found_by_id_in_their_run_tables(lake):
    sae = models.resolve_model(lake, RUN_ID)
    assert (sae.kind, sae.encoder, sae.n_features) == ("sae", ENCODER, 96)
    assert sae.config["top_k"] == 8 and sae.metrics["split"] == "test"
    assert sae.codes == models.CodeTable("sae_activations", "run_id", "feature", "activation")
    pca = models.resolve_model(lake, PCA_ID)
    assert (pca.kind, pca.encoder, pca.n_features) == ("pca", ENCODER, 16)
    assert pca.config == {} and pca.codes.feature == "component"
    assert sorted(models.model_ids(lake)) == sorted([RUN_ID, OLD_PCA_ID, PCA_ID])
    assert models.find_model(lake, "pca-synth-ffffff") is None
    with pytest.raises(InputError, match=f"unknown model id 'x'; known models: {RUN_ID}"):
        models.resolve_model(lake, "x")


def test_newest_pca_by_fit_time_and_by_what_was_analyzed(lake, tmp_path):
    assert models.newest_pca(lake, ENCODER) == PCA_ID == models.latest_pca(lake, ENCODER)
    assert models.newest_pca(lake, ENCODER, analyzed_on="test") == PCA_ID
    assert models.newest_pca(lake, ENCODER, analyzed_on="train") is None
    assert models.newest_pca(lake, "other") is None
    with pytest.raises(InputError, match="no PCA for encoder 'other'"):
        models.latest_pca(lake, "other")
    # the newest fitted PCA not yet analyzed: the newest analyzed one is the older
    with lake.transaction("drop") as tx:
        tx.remove("feature_summary", {"model_id": PCA_ID, "split": "test"})
    assert models.newest_pca(lake, ENCODER) == PCA_ID
    assert models.newest_pca(lake, ENCODER, analyzed_on="test") == OLD_PCA_ID


def test_codes_of_both_kinds_read_under_one_set_of_names(lake):
    for model_id, table, key, feature, value in (
            (RUN_ID, "sae_activations", "run_id", "feature", "activation"),
            (PCA_ID, "pca_scores", "pca_id", "component", "score")):
        model = models.resolve_model(lake, model_id)
        assert models.has_codes(lake, model, "test") and not models.has_codes(lake, model, "train")
        codes = models.scan_codes(lake, model, "test").collect()
        assert codes.columns == ["id_str", "feature", "value"]
        stored = lake.read(table, **{key: model_id, "split": "test"})
        assert codes.sort("id_str", "feature").rows() == stored.select(
            "id_str", pl.col(feature), pl.col(value)).sort("id_str", feature).rows()


def test_with_pca_analyzes_the_newest_pca_and_compares(lake):
    from galsae_lake.analysis import analyze_with_pca

    results, comparison = analyze_with_pca(lake, RUN_ID, permutations=0)
    assert [r["model_id"] for r in results] == [RUN_ID, PCA_ID]
    assert comparison.height > 0
    with pytest.raises(InputError, match="is a PCA; --with-pca needs an SAE run id"):
        analyze_with_pca(lake, PCA_ID)
    assert_refused(lake.root, ["analyze", "--model", PCA_ID, "--with-pca"],
                   "--with-pca needs an SAE run id")
