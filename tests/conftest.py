import os

# Several fake CPU devices for sharding tests; must be set before jax initialises. Only the CPU backend
# has them: on a GPU the mesh tests skip (tests/helpers.py requires_devices; docs/testing.md, "GPU").
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One persistent compilation cache for the session: many tests build the same tiny programs through fresh
# jit wrappers, and a cache hit loads the executable XLA compiled before (same program, same result). A new
# directory per session, so a run never reads programs an earlier checkout compiled.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    from tests.helpers import compile_cache_env  # imports no jax: the variables are read when jax is imported

    _cache_dir = tempfile.mkdtemp(prefix="rm_jax_test_xla_cache_")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    os.environ.update(compile_cache_env(_cache_dir))
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


@pytest.fixture(
    scope="session",
    params=[("llama", False), ("mistral", False), ("qwen2", False), ("qwen3", True)],
    ids=["llama", "mistral", "qwen2", "qwen3-tied"],
)
def hf_causal_lm(request, tmp_path_factory):
    """An HF ``*ForCausalLM`` folder with its tokenizer per family (qwen3 with tied embeddings):
    (folder, transformers model, tokenizer)."""
    from tests.helpers import make_hf_causal_lm_with_tokenizer

    family, tied = request.param
    d = str(tmp_path_factory.mktemp(f"causal_lm_{family}"))
    model, tok = make_hf_causal_lm_with_tokenizer(family, d, seed=5, tied=tied)
    return d, model, tok


@pytest.fixture(scope="session")
def subprocess_cache_env(tmp_path_factory):
    """worker_env() plus one compilation cache shared by this session's subprocess trainings."""
    from tests.helpers import compile_cache_env, worker_env

    return {**worker_env(), **compile_cache_env(str(tmp_path_factory.mktemp("xla_cache_subprocesses")))}


def _bundled() -> str:
    from rm_jax.data.pipeline import resolve_source

    return resolve_source("bundled")


@pytest.fixture(scope="session")
def lora_rm_run(tmp_path_factory, data_files):
    """A rank-4 LoRA reward-model run trained from a tiny random HF RM for 4 steps on ``data_files``, and
    its merged export: {"base", "run", "merged"} (folders). Shared by the eval, serve and training tests."""
    from rm_jax.cli import main
    from tests.helpers import TINY, make_hf_rm_with_tokenizer

    d = tmp_path_factory.mktemp("lora_rm")
    base, run, merged = str(d / "base"), str(d / "run"), str(d / "merged")
    make_hf_rm_with_tokenizer("llama", base)
    argv = ["train", TINY, f"run_dir={run}", f"model.path={base}", "model.arch={}", "lora.rank=4"]
    argv += [f"data.train={data_files['train']}", f"data.validation={data_files['validation']}"]
    argv += ["train.max_steps=4", "train.eval_every=2", "checkpoint.every_steps=2", "train.lr=1e-2"]
    argv += ["train.warmup_steps=0", "logging.progress=false", "mesh.num_devices=1"]
    assert main(argv) == 0
    assert main(["export", run, "--out", merged]) == 0
    return {"base": base, "run": run, "merged": merged}
