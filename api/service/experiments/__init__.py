"""Experiments: a baseline and a grid (or list) of quantized variants of it, in one request.

`request.ExperimentSpec` is the request; `plan.plan` turns it into job specs (the baseline's,
then one per variant and seed, each starting from the baseline's model); `results.rows` reads
the jobs back as the results table (accuracy, drop against the baseline, mean and spread over
seeds, the published reference), which `tables.markdown` and `tables.csv_text` print in the
reference's columns.
"""
