-- label_null: per label, the max |rho| over all of a model's features, observed and with the
-- label shuffled (a permutation null). The best of 2,048 SAE features and the best of 64 PCA
-- components are not on the same footing: the null says how high the max gets by chance.
-- Inputs (prepared by galsae_lake.analysis.summarize):
--   corr_values(method, feature, label_index, spearman, n)
--   null_samples(method, permutation, label_index, max_abs_spearman)  one row per shuffle
--   label_names(label, label_index, question)
WITH observed AS (
    SELECT method, label_index, max(abs(spearman)) AS observed, any_value(n) AS n,
           count(*) AS n_features
    FROM corr_values GROUP BY ALL
),
shuffled AS (
    SELECT method, label_index, count(*) AS permutations,
           avg(max_abs_spearman) AS null_mean,
           quantile_cont(max_abs_spearman, 0.5) AS null_q50,
           quantile_cont(max_abs_spearman, 0.95) AS null_q95,
           max(max_abs_spearman) AS null_max
    FROM null_samples GROUP BY ALL
)
SELECT o.method, l.label, o.n, o.n_features::INTEGER AS n_features,
       coalesce(p.permutations, 0)::INTEGER AS permutations,
       o.observed AS observed_max_abs_spearman,
       p.null_mean, p.null_q50, p.null_q95, p.null_max,
       o.observed - p.null_q95 AS excess_over_null
FROM observed AS o
JOIN label_names AS l USING (label_index)
LEFT JOIN shuffled AS p USING (method, label_index)
ORDER BY o.method, o.label_index
