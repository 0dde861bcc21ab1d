-- feature_label_corr: Spearman rho of every feature with every label, as scipy.stats.spearmanr
-- (Pearson correlation of average ranks, ties sharing their mean rank) over the rows that keep
-- the label; 0 where either side is constant or n <= $min_rows. Run statement by statement by
-- galsae_lake.duckdb_engine.spearman (the default engine of `galsae-lake analyze`).
-- Inputs:
--   codes(feature, "row", value)  non-zero codes of the analysis rows: a missing (feature, row) is 0
--   labels(label, "row", value)   non-NULL label values (NULL rows dropped per label)
-- How it stays small: labels that keep the same rows form a row set (one per Galaxy Zoo
-- question); each label is ranked once, and a set's label ranks sit side by side in one row per
-- galaxy (label_slots), so the codes are joined once per set, never once per label. The zeros
-- of a sparse code are one tie group whose average rank is known from counts, so every sum runs
-- over the non-zero codes only: sum(r_f * c_l) = sum_nonzero((r_f - zero_rank) * c_l), since
-- the centred label ranks c_l sum to 0 over the set.

-- label_sets: each label's row set (numbered in order of its first label) and slot within it
CREATE OR REPLACE TEMP TABLE label_sets AS
WITH kept AS (
    SELECT label, list("row" ORDER BY "row") AS kept, count(*) AS n FROM labels GROUP BY label
),
sets AS (SELECT kept, any_value(n) AS n, min(label) AS first_label FROM kept GROUP BY kept)
SELECT k.label, (dense_rank() OVER (ORDER BY s.first_label) - 1)::INTEGER AS set_id,
       (row_number() OVER (PARTITION BY s.first_label ORDER BY k.label) - 1)::INTEGER AS slot,
       s.n
FROM kept AS k JOIN sets AS s USING (kept);

-- label_ranks: average ranks of each label over its rows, centred on the mean rank (n + 1) / 2
CREATE OR REPLACE TEMP TABLE label_ranks AS
SELECT l.label, s.set_id, s.slot, l."row",
       (rank() OVER w + count(*) OVER w) / 2.0 - (s.n + 1) / 2.0 AS c
FROM labels AS l JOIN label_sets AS s USING (label)
WINDOW w AS (PARTITION BY l.label ORDER BY l.value);

-- label_slots: one row per (set, galaxy), the set's label ranks as columns c0, c1, ...
CREATE OR REPLACE TEMP TABLE label_slots AS
PIVOT (SELECT set_id, "row", 'c' || slot AS slot, c FROM label_ranks)
ON slot USING first(c) GROUP BY set_id, "row";

-- set_rows: each set's rows
CREATE OR REPLACE TEMP TABLE set_rows AS
SELECT DISTINCT set_id, "row" FROM label_ranks WHERE slot = 0;

-- code_sums: per set and feature, from the non-zero codes of the set's rows: their count, the
-- sum of squared centred ranks and the cross sums with each slot's label ranks. A code's rank
-- among the feature's non-zero codes in the set is its row_number (one sort, the cost of the
-- whole analysis); codes of a tie group (values that repeat within a feature: rare) take their
-- group's mean. Negatives rank below the zero block, positives above it.
CREATE OR REPLACE TEMP TABLE code_sums AS
WITH ranked AS (
    SELECT s.set_id, c.feature, c."row", c.value,
           row_number() OVER (PARTITION BY s.set_id, c.feature ORDER BY c.value) AS pos
    FROM codes AS c JOIN set_rows AS s USING ("row")
),
counts AS (
    SELECT set_id, feature, count(*) AS nnz, count(*) FILTER (WHERE value < 0) AS neg
    FROM ranked GROUP BY set_id, feature
),
tie_ranks AS (
    SELECT set_id, feature, value, avg(pos) AS pos
    FROM ranked
    SEMI JOIN (SELECT feature, value FROM codes GROUP BY feature, value HAVING count(*) > 1)
         AS tied USING (feature, value)
    GROUP BY set_id, feature, value
),
centred AS (           -- rank minus the mean rank (n + 1) / 2, and minus the zero block's rank
    SELECT r.set_id, r.feature, r."row", k.nnz, k.neg, s.n,
           coalesce(t.pos, r.pos) + CASE WHEN r.value > 0 THEN s.n - k.nnz ELSE 0 END AS rank_all,
           k.neg + (s.n - k.nnz + 1) / 2.0 AS zero_rank
    FROM ranked AS r
    JOIN counts AS k USING (set_id, feature)
    JOIN (SELECT DISTINCT set_id, n FROM label_sets) AS s USING (set_id)
    LEFT JOIN tie_ranks AS t USING (set_id, feature, value)
)
SELECT set_id, feature, any_value(n) AS n, any_value(nnz) AS nnz, any_value(neg) AS neg,
       sum((rank_all - (n + 1) / 2.0) ** 2) AS var_nonzero,
       sum(COLUMNS('^c\d+$') * (rank_all - zero_rank))
FROM centred JOIN label_slots USING (set_id, "row")
GROUP BY set_id, feature;

-- the matrix: every feature with every label (features that never fire in a set: rho 0)
WITH label_var AS (
    SELECT s.label, s.set_id, s.slot, s.n, sum(r.c * r.c) AS var_l
    FROM label_sets AS s JOIN label_ranks AS r USING (label)
    GROUP BY s.label, s.set_id, s.slot, s.n
),
cross_sums AS (
    UNPIVOT code_sums ON COLUMNS('^c\d+$') INTO NAME slot VALUE s
),
feature_var AS (       -- the zero block adds zeros * (its centred rank)^2
    SELECT set_id, feature, nnz, var_nonzero
             + (n - nnz) * (neg + (n - nnz + 1) / 2.0 - (n + 1) / 2.0) ** 2 AS var_f
    FROM code_sums
)
SELECT f.feature, l.label, l.n,
       CASE WHEN l.n <= $min_rows OR coalesce(v.var_f, 0) = 0 OR l.var_l = 0 THEN 0.0
            ELSE greatest(-1.0, least(1.0, x.s / sqrt(v.var_f * l.var_l)))
       END AS spearman
FROM range($n_features) AS f(feature)
CROSS JOIN label_var AS l
LEFT JOIN feature_var AS v ON v.set_id = l.set_id AND v.feature = f.feature
LEFT JOIN cross_sums AS x
       ON x.set_id = l.set_id AND x.feature = f.feature AND x.slot = 'c' || l.slot
ORDER BY f.feature, l.label
