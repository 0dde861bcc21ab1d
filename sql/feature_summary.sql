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
WITH ranked AS (
    SELECT c.method, c.feature, abs(c.spearman) AS a, l.label,
           l.question <> $exclude_question AS secondary,
           row_number() OVER (PARTITION BY c.method, c.feature
                              ORDER BY abs(c.spearman) DESC, c.label_index) AS k_all,
           row_number() OVER (PARTITION BY c.method, c.feature, l.question <> $exclude_question
                              ORDER BY abs(c.spearman) DESC, c.label_index) AS k_part
    FROM corr_values AS c JOIN label_names AS l USING (label_index)
),
alignment AS (
    SELECT method, feature,
           max(a) AS max_abs_spearman,
           any_value(label) FILTER (WHERE k_all = 1 AND a > 0) AS best_label,
           coalesce(max(a) FILTER (WHERE secondary), 0) AS max_abs_spearman_secondary,
           any_value(label) FILTER (WHERE k_part = 1 AND secondary AND a > 0) AS best_label_secondary
    FROM ranked GROUP BY method, feature
)
SELECT s.method, s.feature, s.frequency,
       (row_number() OVER (PARTITION BY s.method ORDER BY s.frequency DESC, s.feature) - 1)::INTEGER
           AS frequency_rank,
       a.max_abs_spearman, a.best_label, s.novelty,
       (row_number() OVER (PARTITION BY s.method ORDER BY s.novelty DESC, s.feature) - 1)::INTEGER
           AS novelty_rank,
       a.max_abs_spearman_secondary, a.best_label_secondary,
       (count(*) OVER (PARTITION BY s.method))::INTEGER AS n_features
FROM feature_stats AS s JOIN alignment AS a USING (method, feature)
ORDER BY s.method, s.feature
