-- feature_label_corr: Spearman rho of every feature with every label, entirely in SQL
-- (the reference engine: `analyze(..., engine="sql")`; the default engine computes the same
-- numbers with numpy, see galsae_lake/analysis.py).
-- Inputs:
--   codes(method, feature, "row", value)  non-zero codes only: a missing (feature, row) is a 0
--   labels(label, "row", value)           non-NULL label values (NULL rows dropped per label)
--   features(method, feature)             every feature, including those that never fire
-- rho as scipy.stats.spearmanr: Pearson correlation of average ranks (ties share their mean
-- rank) over the rows that keep the label; 0 where either side is constant or n <= $min_rows.
-- The zeros of a sparse code are one tie group; its average rank comes from counts, so the sums
-- only run over non-zero rows: sum(r_f * c_l) = sum_nonzero((r_f - zero_rank) * c_l), as the
-- centred label ranks c_l sum to 0.
WITH label_sets AS (   -- labels that keep exactly the same rows share a row set
    SELECT label, list("row" ORDER BY "row") AS kept, count(*) AS n FROM labels GROUP BY label
),
sets AS (
    SELECT kept, any_value(n) AS n, row_number() OVER () AS set_id FROM label_sets GROUP BY kept
),
label_set AS (SELECT l.label, s.set_id, s.n FROM label_sets AS l JOIN sets AS s USING (kept)),
members AS (SELECT DISTINCT ls.set_id, l."row" FROM labels AS l JOIN label_set AS ls USING (label)),
label_ranks AS (       -- average ranks, centred on the set's mean rank (n + 1) / 2
    SELECT l.label, ls.set_id, l."row",
           rank() OVER (PARTITION BY l.label ORDER BY l.value)
             + (count(*) OVER (PARTITION BY l.label, l.value) - 1) / 2.0 - (ls.n + 1) / 2.0 AS c
    FROM labels AS l JOIN label_set AS ls USING (label)
),
label_var AS (SELECT label, set_id, sum(c * c) AS var_l FROM label_ranks GROUP BY ALL),
kept_codes AS (
    SELECT m.set_id, c.method, c.feature, c."row", c.value
    FROM codes AS c JOIN members AS m USING ("row")
),
nonzero_counts AS (
    SELECT set_id, method, feature, count(*) AS nnz, count(*) FILTER (WHERE value < 0) AS neg
    FROM kept_codes GROUP BY ALL
),
feature_sets AS (      -- every feature in every set: its zero block and that block's mean rank
    SELECT s.set_id, s.n, f.method, f.feature,
           s.n - coalesce(z.nnz, 0) AS zeros,
           coalesce(z.neg, 0) + (s.n - coalesce(z.nnz, 0) + 1) / 2.0 AS zero_rank
    FROM sets AS s CROSS JOIN features AS f
    LEFT JOIN nonzero_counts AS z USING (set_id, method, feature)
),
code_ranks AS (        -- rank among all the set's values: negatives, then zeros, then positives
    SELECT k.set_id, k.method, k.feature, k."row",
           rank() OVER w
             + (count(*) OVER (PARTITION BY k.set_id, k.method, k.feature, k.value) - 1) / 2.0
             + CASE WHEN k.value > 0 THEN fs.zeros ELSE 0 END AS r,
           fs.zero_rank
    FROM kept_codes AS k JOIN feature_sets AS fs USING (set_id, method, feature)
    WINDOW w AS (PARTITION BY k.set_id, k.method, k.feature ORDER BY k.value)
),
feature_var AS (
    SELECT fs.set_id, fs.method, fs.feature,
           coalesce(sum((r.r - (fs.n + 1) / 2.0) * (r.r - (fs.n + 1) / 2.0)), 0)
             + fs.zeros * (fs.zero_rank - (fs.n + 1) / 2.0) * (fs.zero_rank - (fs.n + 1) / 2.0)
             AS var_f
    FROM feature_sets AS fs LEFT JOIN code_ranks AS r USING (set_id, method, feature)
    GROUP BY fs.set_id, fs.method, fs.feature, fs.zeros, fs.zero_rank, fs.n
),
cross_sums AS (
    SELECT r.set_id, r.method, r.feature, l.label, sum((r.r - r.zero_rank) * l.c) AS s
    FROM code_ranks AS r JOIN label_ranks AS l USING (set_id, "row")
    GROUP BY ALL
)
SELECT fv.method, fv.feature, ls.label, ls.n,
       CASE WHEN ls.n <= $min_rows OR fv.var_f = 0 OR lv.var_l = 0 THEN 0.0
            ELSE greatest(-1.0, least(1.0, coalesce(x.s, 0) / sqrt(fv.var_f * lv.var_l)))
       END AS spearman
FROM label_set AS ls
JOIN label_var AS lv USING (label, set_id)
JOIN feature_var AS fv USING (set_id)
LEFT JOIN cross_sums AS x
       ON x.set_id = ls.set_id AND x.method = fv.method AND x.feature = fv.feature
      AND x.label = ls.label
ORDER BY fv.method, fv.feature, ls.label
