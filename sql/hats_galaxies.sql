-- hats_galaxies: one row per galaxy with a position and an embedding of the model's encoder:
-- its top SAE features (strongest first, ties by feature) and their activations, how many
-- features are active, and the PCA scores (component order), for `galsae-lake export hats`.
-- Parameters: $encoder, $sae_id ('' for none), $pca_id ('' for none), $top.
-- Views: galaxies, embeddings, sae_activations, pca_scores (lake.connect(); empty when absent).
WITH encoded AS (
    SELECT DISTINCT id_str FROM embeddings WHERE encoder = $encoder
),
sae AS (
    SELECT id_str,
           list(feature ORDER BY activation DESC, feature)[1:$top] AS top_features,
           list(activation ORDER BY activation DESC, feature)[1:$top] AS top_activations,
           count(*)::INTEGER AS n_active
    FROM sae_activations
    WHERE run_id = $sae_id
    GROUP BY id_str
),
pca AS (
    SELECT id_str, list(score ORDER BY component) AS pca_scores
    FROM pca_scores
    WHERE pca_id = $pca_id
    GROUP BY id_str
)
SELECT g.id_str, g.split, g.source, g.ra, g.dec,
       coalesce(s.n_active, 0)::INTEGER AS n_active,
       coalesce(s.top_features, []::INTEGER[]) AS top_features,
       coalesce(s.top_activations, []::FLOAT[]) AS top_activations,
       p.pca_scores
FROM galaxies AS g
JOIN encoded AS e USING (id_str)
LEFT JOIN sae AS s USING (id_str)
LEFT JOIN pca AS p USING (id_str)
WHERE g.ra IS NOT NULL AND g.dec IS NOT NULL AND NOT isnan(g.ra) AND NOT isnan(g.dec)
ORDER BY g.id_str
