-- analysis_codes: one model's non-zero codes on one split, with the analysis row of each galaxy.
-- Inputs (prepared by galsae_lake.analysis.load_codes):
--   codes_source(id_str, feature, value)  sae_activations (feature, activation) or
--                                         pca_scores (component, score) of one model and split
--   split_rows(id_str, row)               the split's galaxies; row = analysis row, -1 = no votes
-- A galaxy with no row for a feature has code 0 there; zeros stored explicitly are dropped too.
-- Not sorted here: the duckdb engine ranks in SQL; for numpy, analysis.fetch_codes sorts packed
-- 64-bit keys (numpy_engine.sort_codes), ~5x faster than ORDER BY.
SELECT c.feature::INTEGER AS feature, r."row"::INTEGER AS "row", c.value::FLOAT AS value
FROM codes_source AS c
JOIN split_rows AS r USING (id_str)
WHERE c.value <> 0 AND NOT isnan(c.value) AND c.feature BETWEEN 0 AND $n_features - 1
