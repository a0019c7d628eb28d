"""``rm-jax lm generate|logprob`` and the library functions under them (rows in, rows out; bad rows named
by file, line and field before any model loads), and rm_jax lm run folders as policies: loading (either
layer layout), ``rm-jax export`` to an HF *ForCausalLM folder with identical logits."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from rm_jax.cli import main
from rm_jax.data.conversation import response_text, row_to_messages
from rm_jax.policy import generate, load_policy, read_prompt_rows, response_logprobs
from rm_jax.policy.rows import generate_rows
from tests.helpers import make_hf_causal_lm_with_tokenizer

pytestmark = pytest.mark.slow  # end to end: trains or spawns processes


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("cli_policy"))
    make_hf_causal_lm_with_tokenizer("qwen2", d, seed=9)
    return d


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_generate_and_logprob_commands(hf_dir, tmp_path, capsys):
    rows = [
        {"prompt": "Hi there", "attributes": {"verbosity": 2}, "id": 1},
        {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "q"}]},
    ]
    src, out = _write(tmp_path / "in.jsonl", rows), str(tmp_path / "out.jsonl")
    args = [
        "lm",
        "generate",
        "--model",
        hf_dir,
        "--input",
        src,
        "--output",
        out,
        "--n",
        "2",
        "--max-new-tokens",
        "5",
        "--seed",
        "3",
        "--top-p",
        "0.9",
        "--no-progress",
    ]
    assert main(args) == 0
    got = [json.loads(x) for x in open(out)]
    assert [g["id"] for g in got[:1]] == [1] and "id" not in got[1] and got[1]["messages"] == rows[1]["messages"]
    assert all(len(g["responses"]) == 2 and all(isinstance(t, str) for t in g["responses"]) for g in got)
    tok = load_policy(hf_dir).tokenizer
    for g in got:  # the ids drawn, beside the text they decode to
        assert len(g["response_ids"]) == 2 and all(isinstance(t, int) for x in g["response_ids"] for t in x)
        texts = [response_text(tok, tok.decode(x, skip_special_tokens=False)) for x in g["response_ids"]]
        assert texts == g["responses"]
    assert main(args) == 0 and [json.loads(x) for x in open(out)] == got  # the same seed, the same responses
    # the library call the command wraps (what sweep steps call)
    pol = load_policy(hf_dir)
    lib_rows, where = read_prompt_rows(src)
    assert where == [f"{src}: line 1", f"{src}: line 2"]
    lib = generate_rows(pol, lib_rows, where=where, n=2, max_new_tokens=5, seed=3, top_p=0.9, progress=False)
    assert lib == got
    greedy = str(tmp_path / "greedy.jsonl")
    assert main(args[:7] + [greedy, "--greedy", "--max-new-tokens", "5", "--no-progress"]) == 0
    convs = [
        row_to_messages(
            {**r, "response": "-"}
            if "prompt" in r
            else {**r, "messages": r["messages"] + [{"role": "assistant", "content": "-"}]},
            with_attributes=True,
        )[:-1]
        for r in rows
    ]
    assert [json.loads(x)["responses"] for x in open(greedy)] == generate(pol, convs, greedy=True, max_new_tokens=5)

    # logprob: each generated response scored, with the row's label; the third on the ids drawn
    drawn = {"prompt": "Hi there", "response": got[0]["responses"][1], "attributes": "verbosity:2"}
    resp = [
        {"prompt": "Hi there", "response": got[0]["responses"][0] or "x", "attributes": "verbosity:2"},
        {"messages": rows[1]["messages"] + [{"role": "assistant", "content": "Fine."}]},
        {**drawn, "response_ids": got[0]["response_ids"][1]},
    ]
    scored_in = _write(tmp_path / "resp.jsonl", resp)
    scored = str(tmp_path / "scored.jsonl")
    cmd = ["lm", "logprob", "--model", hf_dir, "--input", scored_in, "--output", scored, "--no-progress"]
    assert main(cmd) == 0
    recs = [json.loads(x) for x in open(scored)]
    convs = [row_to_messages(r, with_attributes=True) for r in resp]
    want, n = response_logprobs(pol, convs, response_ids=[None, None, got[0]["response_ids"][1]])
    assert [r["logprob"] for r in recs] == pytest.approx(list(want), abs=1e-6)
    assert [r["response_tokens"] for r in recs] == list(n) and all(x > 0 for x in n)
    k = len(got[0]["response_ids"][1])
    assert n[2] == k if got[0]["finished"][1] else n[2] > k  # a cut-off response: + its end of turn
    assert "lm logprob: 3 rows" in capsys.readouterr().out
    # a row whose ids cannot be scored: named by default, left out and counted with --on-bad-row skip
    _write(tmp_path / "resp.jsonl", resp + [{**drawn, "response_ids": [5000]}])
    assert main(cmd) == 1
    assert f"{scored_in}: line 4, field 'response_ids': token id 5000 is outside" in capsys.readouterr().err
    assert main(cmd + ["--on-bad-row", "skip"]) == 0
    assert [json.loads(x) for x in open(scored)] == recs
    out = capsys.readouterr().out
    assert f"lm logprob: 3 rows -> {scored}; skipped 1 rows that could not be scored (first: {scored_in}: line 4" in out


BAD = [
    ("generate", {"prompt": "  "}, "line 2, field 'prompt': empty prompt"),
    ("generate", {"prompt": "x", "attributes": "verbosity:5"}, "line 2, field 'attributes': verbosity level '5'"),
    ("generate", {"prompt": "x", "attributes": {"verbosity": -1}}, "field 'attributes': verbosity level -1"),
    ("generate", {"prompt": "x", "attributes": {"humor": 1}}, "line 2, field 'attributes': unknown attribute 'humor'"),
    (
        "generate",
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        "line 2, field 'messages[1]': the last message must be the user's turn",
    ),
    ("generate", {"prompt": "a\n<extra_id_1>Assistant\nb"}, "line 2, field 'prompt': ends with an assistant turn"),
    ("generate", {"messages": []}, "line 2, field 'messages': expected a non-empty list"),
    ("generate", {"text": "x"}, "line 2: needs 'prompt' or 'messages'"),
    ("logprob", {"messages": [{"role": "user", "content": "a"}]}, "line 2: the last message must be the assistant's"),
    ("logprob", {"prompt": "x", "response": " "}, "line 2, field 'response': empty response"),
    ("logprob", {"prompt": "", "response": "y"}, "line 2, field 'prompt': empty prompt"),
    ("logprob", {"prompt": "x", "response": "y", "attributes": "helpfulness=4"}, "field 'attributes': 'helpfulness=4'"),
    ("logprob", {"prompt": "x", "response": "y", "response_ids": [1, "2"]}, "field 'response_ids': item 1 is '2'"),
]


@pytest.mark.parametrize("cmd,row,needle", BAD, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(BAD)])
def test_bad_rows_are_named_before_the_model_loads(cmd, row, needle, tmp_path, capsys):
    good = {"prompt": "ok"} if cmd == "generate" else {"prompt": "ok", "response": "fine"}
    src = _write(tmp_path / "bad.jsonl", [good, row])
    # the model folder does not exist: the row error must come first
    assert (
        main(["lm", cmd, "--model", str(tmp_path / "missing"), "--input", src, "--output", str(tmp_path / "o.jsonl")])
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith(f"rm-jax lm: error: {src}: ") and needle in err, err
    assert not os.path.exists(tmp_path / "o.jsonl")


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--n", "0"], "--n: must be at least 1, got 0"),
        (["--top-p", "0"], "--top-p: must be in (0, 1]"),
        (["--temperature", "-1"], "--temperature: must be >= 0"),
        (["--max-new-tokens", "0"], "--max-new-tokens"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_bad_settings(flags, needle, tmp_path, capsys):
    src = _write(tmp_path / "in.jsonl", [{"prompt": "ok"}])
    assert (
        main(["lm", "generate", "--model", str(tmp_path), "--input", src, "--output", str(tmp_path / "o"), *flags]) == 1
    )
    assert needle in capsys.readouterr().err


def test_a_prompt_too_long_for_the_model_is_named_before_decoding(hf_dir, tmp_path, capsys):
    from rm_jax.policy import load_policy

    limit = load_policy(hf_dir).cfg.max_position_embeddings
    src = _write(tmp_path / "in.jsonl", [{"prompt": "ok"}, {"prompt": "word " * limit}])
    assert (
        main(
            [
                "lm",
                "generate",
                "--model",
                hf_dir,
                "--input",
                src,
                "--output",
                str(tmp_path / "o.jsonl"),
                "--max-new-tokens",
                "4",
                "--no-progress",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert f"{src}: line 2: the prompt's" in err and f"exceed the model's {limit} positions" in err, err
    assert not os.path.exists(tmp_path / "o.jsonl")


def test_empty_and_unreadable_inputs(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": \n')
    for path, needle in [(empty, f"{empty}: no rows"), (bad, f"{bad}: line 2: invalid JSON")]:
        assert main(["lm", "generate", "--model", str(tmp_path), "--input", str(path), "--output", "o"]) == 1
        assert needle in capsys.readouterr().err


# ---------------------------------------------------------------- lm run folders


def _fake_run(run_dir: str, hf_dir: str, scan_layers: bool) -> None:
    """What a finished task-sft run leaves behind (model_meta.json, config.yaml, a checkpoint), with the
    weights of ``hf_dir`` saved in the layer layout the run trained with."""
    from rm_jax.core.config import CheckpointConfig
    from rm_jax.engine.checkpoint import Checkpointer
    from rm_jax.models.hf_io import load_hf_causal_lm

    lm = load_hf_causal_lm(hf_dir, scan_layers=scan_layers)
    os.makedirs(run_dir)
    decoder = {
        k: v
        for k, v in dataclasses.asdict(lm.cfg).items()
        if k not in ("dtype", "remat", "scan_layers", "attention", "attention_block", "matmul_precision")
    }
    with open(os.path.join(run_dir, "model_meta.json"), "w") as f:
        json.dump(
            {
                "task": "sft",
                "decoder": decoder,
                "attributes": [],
                "tokenizer": hf_dir,
                "hf_config": lm.hf_config,
                "template": None,
            },
            f,
        )
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        f.write(f"task: sft\nmodel:\n  scan_layers: {str(scan_layers).lower()}\n")
    ck = Checkpointer(os.path.join(run_dir, "checkpoints"), CheckpointConfig(async_save=False))
    ck.save(3, {"params": lm.params, "step": np.int32(3)}, {"position": 0})
    ck.wait()
    ck.close()


def test_lm_run_folders_load_as_policies_and_export(hf_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from rm_jax.core.errors import ConfigError
    from rm_jax.runs.read import load_scoring_model

    conv = row_to_messages(
        {"prompt": "What is 2 plus 2?", "response": "It is 4.", "attributes": "verbosity:1"}, with_attributes=True
    )
    want, _ = response_logprobs(load_policy(hf_dir), [conv])
    run = str(tmp_path / "run")
    _fake_run(run, hf_dir, scan_layers=True)
    for options in ({}, {"scan_layers": True}):  # a scanned run read unrolled (relaid out) and as saved
        pol = load_policy(run, **options)
        assert pol.cfg.scan_layers == bool(options) and ("layers" in pol.params) == bool(options)
        got, _ = response_logprobs(pol, [conv])
        assert got[0] == pytest.approx(want[0], abs=1e-5)
    out = str(tmp_path / "hf")
    assert main(["export", run, "--out", out]) == 0
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["architectures"] == ["Qwen2ForCausalLM"] and cfg["eos_token_id"] == pol.tokenizer.eos_token_id
    original, back = (AutoModelForCausalLM.from_pretrained(p).float().eval() for p in (hf_dir, out))
    ids = torch.as_tensor(np.arange(3, 40, dtype=np.int64)[None])
    with torch.no_grad():
        np.testing.assert_array_equal(back(input_ids=ids).logits.numpy(), original(input_ids=ids).logits.numpy())
    assert load_policy(out).tokenizer.chat_template == pol.tokenizer.chat_template
    with pytest.raises(ConfigError, match="a policy run"):
        load_scoring_model(run)
    # a reward-model run is not a policy
    with open(os.path.join(run, "model_meta.json")) as f:
        meta = json.load(f)
    meta["task"], meta["decoder"]["head"] = "rm", "reward"
    with open(os.path.join(run, "model_meta.json"), "w") as f:
        json.dump(meta, f)
    with pytest.raises(ConfigError, match="a reward-model run"):
        load_policy(run)
