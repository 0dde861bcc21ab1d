-- feature_novelty: per feature, novelty = 1 - R^2 of a least-squares fit of the feature on all
-- the labels with an intercept (the seed's compute_novelty_via_regression), clipped to [0, 1];
-- 1 for a constant feature (std < $constant_std). Run by galsae_lake.duckdb_engine.novelty.
-- Inputs:
--   codes(feature, "row", value)  non-zero codes of the analysis rows: a missing (feature, row) is 0
--   basis("row", b0, b1, ...)     an orthonormal basis of the centred, median-imputed label
--                                 matrix (numpy_engine.label_basis: the small factorization)
-- The basis is orthogonal to the constant, so R^2 = |basis' y|^2 / |y - mean(y)|^2, and basis' y
-- only needs the non-zero codes; |y - mean(y)|^2 sums the non-zero codes' squared deviations
-- plus the zeros' (n - nnz) * mean^2, without cancellation.
WITH moments AS (
    SELECT feature, count(*) AS nnz, sum(value::DOUBLE) / $n_rows AS mean
    FROM codes GROUP BY feature
),
spread AS (
    SELECT m.feature, any_value(m.mean) AS mean,
           sum((c.value - m.mean) ** 2) + ($n_rows - any_value(m.nnz)) * any_value(m.mean) ** 2
               AS total
    FROM codes AS c JOIN moments AS m USING (feature)
    GROUP BY m.feature
),
projections AS (
    SELECT c.feature, sum(COLUMNS('^b\d+$') * c.value::DOUBLE)
    FROM codes AS c JOIN basis AS b USING ("row")
    GROUP BY c.feature
),
explained AS (
    SELECT feature, sum(p * p) AS explained
    FROM (UNPIVOT projections ON COLUMNS('^b\d+$') INTO NAME direction VALUE p)
    GROUP BY feature
)
SELECT f.feature,
       CASE WHEN coalesce(s.total, 0) / $n_rows < $constant_std * $constant_std THEN 1.0
            ELSE 1.0 - greatest(0.0, least(1.0, coalesce(e.explained, 0) / s.total))
       END AS novelty
FROM range($n_features) AS f(feature)
LEFT JOIN spread AS s USING (feature)
LEFT JOIN explained AS e USING (feature)
ORDER BY f.feature
