import os

# Several fake CPU devices for sharding tests; must be set before jax initialises.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# No jax_default_matmul_precision here: tests see the precision users get, which the model sets per
# dot from model.matmul_precision (tests/test_precision.py checks the lowered programs).


import gzip  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_files(tmp_path_factory):
    """Small HelpSteer2-format train / validation files cut from the bundled sample."""
    d = tmp_path_factory.mktemp("data")
    out = {}
    for split, n in (("train", 160), ("validation", 60)):
        with gzip.open(os.path.join(_bundled(), f"{split}.jsonl.gz"), "rt") as f:
            lines = [next(f) for _ in range(n)]
        p = d / f"{split}.jsonl"
        p.write_text("".join(lines))
        out[split] = str(p)
    return out


def _bundled() -> str:
    from rm_jax.data.pipeline import resolve_source
    return resolve_source("bundled")
