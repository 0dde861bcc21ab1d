-- sae_vs_pca: an SAE's features against a PCA's components (same encoder, same split), by
-- frequency-rank group as the seed plots them (0-64, 64-128, 128-256, ..., 1024-2048; PCA's 64
-- components form group 0-64), with each model's permutation null so that alignment can be read
-- above chance: labels_above_null counts labels whose observed max |rho| over the model's
-- features beats the 95% quantile of that max with shuffled labels.
-- Parameters: $sae_id, $pca_id, $split. Views: feature_summary, label_null (lake.connect()).
WITH features AS (
    SELECT model_id, method, n_features, max_abs_spearman, max_abs_spearman_secondary, novelty,
           CASE WHEN frequency_rank < 64 THEN 0
                ELSE pow(2, floor(log2(frequency_rank)))::INTEGER END AS group_start
    FROM feature_summary
    WHERE split = $split AND ((model_id = $sae_id AND method = 'sae')
                              OR (model_id = $pca_id AND method = 'pca'))
),
chance AS (
    SELECT model_id, method,
           count(*) FILTER (WHERE observed_max_abs_spearman > null_q95) AS labels_above_null,
           median(observed_max_abs_spearman - null_q95) AS median_excess_over_null,
           median(null_q95) AS median_null_q95
    FROM label_null
    WHERE split = $split AND model_id IN ($sae_id, $pca_id)
    GROUP BY ALL
)
SELECT f.model_id, f.method, any_value(f.n_features) AS n_features,
       f.group_start, greatest(64, 2 * f.group_start) AS group_end,
       count(*) AS features,
       median(f.max_abs_spearman) AS median_max_abs_spearman,
       median(f.max_abs_spearman_secondary) AS median_max_abs_spearman_secondary,
       median(f.novelty) AS median_novelty,
       any_value(c.median_null_q95) AS median_null_q95,
       any_value(c.labels_above_null) AS labels_above_null,
       any_value(c.median_excess_over_null) AS median_excess_over_null
FROM features AS f LEFT JOIN chance AS c USING (model_id, method)
GROUP BY f.model_id, f.method, f.group_start
ORDER BY f.method DESC, f.group_start
