-- label_values: the non-NULL vote fractions of one split's galaxies, one row per galaxy and label.
-- Inputs (prepared by galsae_lake.analysis.label_matrix):
--   votes_source            the votes partition of one catalog and split
--   split_ids(id_str, row)  the split's galaxies (embeddings rows of the model's encoder)
--   label_names(label, label_index)  gz.LABEL_NAMES in order
SELECT s."row", l.label_index, v.fraction
FROM votes_source AS v
JOIN split_ids AS s USING (id_str)
JOIN label_names AS l USING (label)
WHERE v.fraction IS NOT NULL AND NOT isnan(v.fraction)
