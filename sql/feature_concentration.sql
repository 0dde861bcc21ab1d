-- feature_concentration: per feature, the share of its activation mass (sum of |value|) carried
-- by its strongest tenth of firing galaxies (at least one galaxy); NULL for a feature that never
-- fires or whose mass is zero. The `concentration` column of feature_summary (discovery.py).
-- Run by galsae_lake.duckdb_engine.concentration over codes(feature, "row", value): the non-zero
-- codes of the analysis rows. Ties at the cut do not change the sum (equal values).
WITH ranked AS (
    SELECT feature, abs(value::DOUBLE) AS mass,
           row_number() OVER (PARTITION BY feature ORDER BY abs(value) DESC) AS place,
           count(*) OVER (PARTITION BY feature) AS firing
    FROM codes
)
SELECT feature,
       sum(mass) FILTER (WHERE place <= greatest(1, firing // 10)) / sum(mass) AS concentration
FROM ranked
GROUP BY feature
HAVING sum(mass) > 0
