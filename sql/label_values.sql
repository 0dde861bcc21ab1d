-- label_values: the known values of one catalog's labels for one split's galaxies, one row per
-- galaxy and label (vote fractions of a Galaxy Zoo catalog, or plain label values).
-- Inputs (prepared by galsae_lake.labels.read_labels):
--   label_source(id_str, label, value)  the catalog's partition of the split (votes: fraction)
--   split_ids(id_str, row)               the split's galaxies (embeddings rows of the model's encoder)
--   label_names(label, label_index)      the catalog's labels in order (its tree's, or as ingested)
SELECT s."row", l.label_index, v.value::DOUBLE AS value
FROM label_source AS v
JOIN split_ids AS s USING (id_str)
JOIN label_names AS l USING (label)
WHERE v.value IS NOT NULL AND NOT isnan(v.value)
