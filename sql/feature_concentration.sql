-- feature_concentration: per feature, the share of its activation mass (sum of |value|) carried
-- by its strongest tenth of firing galaxies (at least one galaxy); NULL for a feature that never
-- fires or whose mass is zero. The `concentration` column of feature_summary (discovery.py).
-- Run by galsae_lake.duckdb_engine.concentration over codes(feature, "row", value): the non-zero
-- codes of the analysis rows. Ties at the cut do not change the sum (equal values).

-- by_mass: the codes' masses stored strongest first within each feature; as in
-- feature_label_corr.sql, a table made with ORDER BY keeps that order and its rowid follows it,
-- so a code's place in its feature is rowid - (the feature's first rowid): one sort, no window
-- (~30% less time than a row_number() window at 35k galaxies)
CREATE OR REPLACE TEMP TABLE by_mass AS
SELECT feature, abs(value::DOUBLE) AS mass FROM codes ORDER BY feature, mass DESC;

SELECT feature,
       sum(mass) FILTER (WHERE rowid - first < greatest(1, firing // 10)) / sum(mass)
           AS concentration
FROM by_mass
JOIN (SELECT feature, min(rowid) AS first, count(*) AS firing FROM by_mass GROUP BY feature)
     USING (feature)
GROUP BY feature
HAVING sum(mass) > 0
