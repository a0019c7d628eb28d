"""runs: run folders — what a run writes and where (:mod:`.layout`, the one place that spells the file
names), reading a finished or running run back (:mod:`.read`: meta, kept parameters, a scoring model) and
exporting it to a Hugging Face folder.

Imports: core, data, models, engine.
"""
