"""Scores to results: Table 1, bootstrap CIs and paired tests, localisation, the extra tables, confounds, figures and the deviation notes.

Metrics and tables over score files and arrays; the score job calls its localisation accumulator. A new metric, table or figure goes here.

May import: errors, inputs, cohort, anomalies.
"""
