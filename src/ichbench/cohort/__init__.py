"""From cached slices and labels to the cohort, its subtypes, the patient-level folds and their manifests.

Also the configuration guards on labels and expected patient counts, and the reproducible fold assignment.

May import: errors, inputs, datasets.
"""
