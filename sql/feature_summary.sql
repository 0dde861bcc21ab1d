-- feature_summary: per feature, its frequency, alignment with the labels and novelty.
-- Inputs (prepared by galsae_lake.analysis.summarize):
--   corr_values(method, feature, label_index, spearman, n)  the Spearman matrix
--   feature_stats(method, feature, frequency, novelty)       novelty = 1 - R^2 (numpy: QR basis)
--   label_names(label, label_index, question)
-- Ties for the best label go to the first label in gz.LABEL_NAMES order (as the seed's argmax);
-- a feature with no non-zero rho has no best label. The "secondary" view leaves out the labels
-- of question $exclude_question (the seed's smooth-or-featured; '' keeps every label).
-- Ranks are 0-based: frequency_rank 0 = most frequent, novelty_rank 0 = most novel; for PCA the
-- frequency is the share of non-zero scores (1.0), so frequency_rank is the component index.
WITH alignment AS (
    SELECT c.method, c.feature,
           max(abs(c.spearman)) AS max_abs_spearman,
           arg_max(c.label_index, (abs(c.spearman), -c.label_index)) AS best_index,
           coalesce(max(abs(c.spearman)) FILTER (WHERE l.question <> $exclude_question), 0)
               AS max_abs_spearman_secondary,
           arg_max(c.label_index, (abs(c.spearman), -c.label_index))
               FILTER (WHERE l.question <> $exclude_question) AS best_index_secondary
    FROM corr_values AS c JOIN label_names AS l USING (label_index)
    GROUP BY c.method, c.feature
)
SELECT s.method, s.feature, s.frequency,
       (row_number() OVER (PARTITION BY s.method ORDER BY s.frequency DESC, s.feature) - 1)::INTEGER
           AS frequency_rank,
       a.max_abs_spearman,
       CASE WHEN a.max_abs_spearman > 0 THEN best.label END AS best_label,
       s.novelty,
       (row_number() OVER (PARTITION BY s.method ORDER BY s.novelty DESC, s.feature) - 1)::INTEGER
           AS novelty_rank,
       a.max_abs_spearman_secondary,
       CASE WHEN a.max_abs_spearman_secondary > 0 THEN secondary.label END AS best_label_secondary,
       (count(*) OVER (PARTITION BY s.method))::INTEGER AS n_features
FROM feature_stats AS s
JOIN alignment AS a USING (method, feature)
LEFT JOIN label_names AS best ON best.label_index = a.best_index
LEFT JOIN label_names AS secondary ON secondary.label_index = a.best_index_secondary
ORDER BY s.method, s.feature
