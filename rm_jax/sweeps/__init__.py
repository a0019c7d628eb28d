"""sweeps: experiment files and what ``rm-jax sweep`` / ``rm-jax report`` do with them — parsing and
expanding the grid (:mod:`.experiment_file`), running or resuming members (:mod:`.runner`), pipeline step
members such as sample / label / steer_eval (:mod:`.pipeline_steps`), results tables and plots
(:mod:`.report`).

Imports: everything below serving (core ... training).
"""
