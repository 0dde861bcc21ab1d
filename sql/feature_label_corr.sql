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
-- Batches: the statements from set_codes on name $first_set and $last_set and run once per batch
-- of row sets (duckdb_engine.spearman: batches of at most SET_BATCH_ROWS (set, code) rows, so
-- that the sorted table and its spill stay bounded at Euclid's size); the ones before run once.

-- label_sets: each label's row set (numbered in order of its first label) and slot within it;
-- a row set is compared as a bitstring of the rows 0 .. $last_row (bitstring_agg: no sort)
CREATE OR REPLACE TEMP TABLE label_sets AS
WITH kept AS (
    SELECT label, bitstring_agg("row", 0, $last_row) AS kept, count(*) AS n
    FROM labels GROUP BY label
),
sets AS (SELECT kept, any_value(n) AS n, min(label) AS first_label FROM kept GROUP BY kept)
SELECT k.label, (dense_rank() OVER (ORDER BY s.first_label) - 1)::INTEGER AS set_id,
       (row_number() OVER (PARTITION BY s.first_label ORDER BY k.label) - 1)::INTEGER AS slot,
       s.n
FROM kept AS k JOIN sets AS s USING (kept);

-- label_ranks: each label's average ranks over its rows, centred on the mean rank (n + 1) / 2,
-- kept as twice the centred rank, twice_c = rank + last rank of the tie group - (n + 1): an
-- integer, so the label side is exact and narrow (an INTEGER column joins onto every code
-- several times faster than a DOUBLE one: measured, ~0.3 s less per model at 35k galaxies)
CREATE OR REPLACE TEMP TABLE label_ranks AS
SELECT l.label, s.set_id, s.slot, l."row",
       (rank() OVER w + count(*) OVER w - (s.n + 1))::INTEGER AS twice_c
FROM labels AS l JOIN label_sets AS s USING (label)
WINDOW w AS (PARTITION BY l.label ORDER BY l.value);

-- label_slots: one row per (set, galaxy), the set's twice_c as columns c0, c1, ... (one per
-- slot), keyed by one integer, slot_key = set_id * rows + row (a join on one integer is several
-- times faster than on two columns: measured in EXPLAIN ANALYZE, ~0.6 s -> 0.06 s of CPU)
CREATE OR REPLACE TEMP TABLE label_slots AS
SELECT set_id::BIGINT * (SELECT max("row") + 1 FROM labels) + "row" AS slot_key,
       * EXCLUDE (set_id, "row")
FROM (PIVOT (SELECT set_id, "row", 'c' || slot AS slot, twice_c FROM label_ranks)
      ON slot USING first(twice_c) GROUP BY set_id, "row");

-- set_rows: each set's rows, with their slot_key
CREATE OR REPLACE TEMP TABLE set_rows AS
SELECT DISTINCT set_id, "row",
       set_id::BIGINT * (SELECT max("row") + 1 FROM labels) + "row" AS slot_key
FROM label_ranks WHERE slot = 0;

-- label_var: each label's rank variance over its rows (twice_c is twice the centred rank)
CREATE OR REPLACE TEMP TABLE label_var AS
SELECT s.label, s.set_id, s.slot, s.n, sum(r.twice_c::DOUBLE ** 2) / 4 AS var_l
FROM label_sets AS s JOIN label_ranks AS r USING (label)
GROUP BY s.label, s.set_id, s.slot, s.n;

-- tied_values: values that repeat within a feature (candidates for the tie groups of a part)
CREATE OR REPLACE TEMP TABLE tied_values AS
SELECT feature, value FROM codes GROUP BY feature, value HAVING count(*) > 1;

-- the labels and their ranks in long form are not needed by the batches: dropped before them
-- (at 10M galaxies ~8 GB that would stay spilled on disk while the batches sort)
DROP TABLE labels;
DROP TABLE label_ranks;

-- set_codes: the non-zero codes of the batch's sets' rows, stored in order of (part, value), where
-- part = set_id * n_features + feature. A table made from a query with ORDER BY keeps its order
-- (preserve_insertion_order off lets DuckDB reorder only results without ORDER BY), and on a
-- materialized table rowid follows the row order (DuckDB's docs, "Order Preservation"), so a
-- code's position among its part's codes is rowid - (the part's first rowid) + 1 (tested also
-- when the table spills). One sort of every (set, code): the cost of the whole analysis.
CREATE OR REPLACE TEMP TABLE set_codes AS
SELECT s.set_id::BIGINT * $n_features + c.feature AS part, s.slot_key, c.value
FROM codes AS c JOIN set_rows AS s USING ("row")
WHERE s.set_id BETWEEN $first_set AND $last_set
ORDER BY part, value;

-- code_sums: per set and feature (part), the variance of the feature's ranks over the set's rows
-- and its cross sums with each slot's centred label ranks (the slots hold twice them: / 2). The
-- cross sums run over the non-zero codes only, with the code's rank minus the zero block's rank
-- (negatives rank below the zero block, positives above it). Codes of a tie group (a value that
-- repeats within a part: rare) take the group's mean position: their correction rows (mean
-- position - position) join the sums. Variance of average ranks: ((n^3 - n) - sum over tie groups of (t^3 - t)) / 12, the
-- zero block being one tie group of n - nnz.
CREATE OR REPLACE TEMP TABLE code_sums AS
WITH parts AS (
    SELECT k.*, s.n
    FROM (SELECT part, count(*) AS nnz, count(*) FILTER (WHERE value < 0) AS neg,
                 min(rowid) AS first
          FROM set_codes GROUP BY part) AS k
    JOIN (SELECT DISTINCT set_id, n FROM label_sets) AS s ON s.set_id = k.part // $n_features
),
tie_codes AS (         -- codes whose value repeats in their part, and their group's size
    SELECT part, slot_key, rowid AS pos, avg(rowid) OVER g AS group_pos, count(*) OVER g AS t
    FROM set_codes
    SEMI JOIN tied_values AS tied
         ON tied.feature = set_codes.part % $n_features AND tied.value = set_codes.value
    WINDOW g AS (PARTITION BY part, value)
    QUALIFY t > 1
),
ties AS (              -- per part, the sum over its tie groups of t^3 - t (t^2 - 1 per code)
    SELECT part, sum(t::DOUBLE * t - 1) AS ties FROM tie_codes GROUP BY part
),
weights AS (           -- each code's rank minus the zero block's rank, and the tie corrections
    SELECT r.part, r.slot_key,
           r.rowid - k.first + 1 + CASE WHEN r.value > 0 THEN k.n - k.nnz ELSE 0 END
               - k.neg - (k.n - k.nnz + 1) / 2.0 AS w
    FROM set_codes AS r JOIN parts AS k USING (part)
    UNION ALL
    SELECT part, slot_key, group_pos - pos AS w FROM tie_codes
),
cross_sums AS (
    SELECT part, sum(COLUMNS('^c\d+$') * w) / 2 FROM weights JOIN label_slots USING (slot_key)
    GROUP BY part
)
SELECT (part // $n_features)::INTEGER AS set_id, (part % $n_features)::INTEGER AS feature,
       (k.n::DOUBLE ** 3 - k.n - ((k.n - k.nnz)::DOUBLE ** 3 - (k.n - k.nnz))
        - coalesce(t.ties, 0)) / 12 AS var_f,
       x.* EXCLUDE (part)
FROM cross_sums AS x JOIN parts AS k USING (part) LEFT JOIN ties AS t USING (part);

-- the matrix: every feature with every label of the batch (features that never fire in a set:
-- rho 0)
WITH cross_sums AS (
    UNPIVOT code_sums ON COLUMNS('^c\d+$') INTO NAME slot VALUE s
)
SELECT f.feature, l.label, l.n,
       CASE WHEN l.n <= $min_rows OR coalesce(v.var_f, 0) = 0 OR l.var_l = 0 THEN 0.0
            ELSE greatest(-1.0, least(1.0, x.s / sqrt(v.var_f * l.var_l)))
       END AS spearman
FROM range($n_features) AS f(feature)
CROSS JOIN (SELECT * FROM label_var WHERE set_id BETWEEN $first_set AND $last_set) AS l
LEFT JOIN code_sums AS v ON v.set_id = l.set_id AND v.feature = f.feature
LEFT JOIN cross_sums AS x
       ON x.set_id = l.set_id AND x.feature = f.feature AND x.slot = 'c' || l.slot
ORDER BY f.feature, l.label
