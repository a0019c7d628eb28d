"""Sampling and log-probs of policies against transformers: greedy decoding gives generate()'s token ids,
response log-probs equal a torch forward pass, sampling is deterministic per seed and independent of
batching, top-p keeps exactly the nucleus; `rm-jax lm` rows and their errors."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rm_jax.cli import main
from rm_jax.conversation import encode_prompts, encode_responses, row_to_messages, with_label
from rm_jax.policy import generate, load_policy, response_logprobs
from rm_jax.policy.generate import sample_token
from tests.hf_fixtures import make_hf_causal_lm_with_tokenizer

PROMPTS = [[{"role": "user", "content": "What is the capital of France?"}],
           with_label([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a red fruit."}],
                      "helpfulness:4,verbosity:0")]


@pytest.fixture(scope="module", params=[("llama", False), ("mistral", False), ("qwen2", False), ("qwen3", True)],
                ids=["llama", "mistral", "qwen2", "qwen3-tied"])
def lm(request, tmp_path_factory):
    family, tied = request.param
    d = str(tmp_path_factory.mktemp(f"pol_{family}"))
    model, tok = make_hf_causal_lm_with_tokenizer(family, d, seed=5, tied=tied)
    return d, model, tok, load_policy(d)


def test_greedy_equals_transformers_generate(lm):
    import torch
    _, model, tok, pol = lm
    prompts = encode_prompts(tok, PROMPTS)
    gen = generate(pol, PROMPTS, greedy=True, max_new_tokens=12, return_tokens=True, batch_size=2)
    for p, ids in zip(prompts, gen.tokens):
        with torch.no_grad():
            out = model.generate(torch.as_tensor(p[None].astype(np.int64)), attention_mask=torch.ones(1, len(p),
                                 dtype=torch.long), max_new_tokens=12, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        theirs = out[0, len(p):].numpy().tolist()
        if tok.eos_token_id in theirs:
            theirs = theirs[: theirs.index(tok.eos_token_id) + 1]
        assert ids[0].tolist() == theirs


def test_response_logprobs_equal_a_torch_forward_pass(lm):
    import torch
    _, model, tok, pol = lm
    convs = [p + [{"role": "assistant", "content": r}] for p, r in zip(PROMPTS, ["Paris is.", "An apple, surely."])]
    lp, count = response_logprobs(pol, convs + convs[:1], max_segments=4)  # the first twice, packed together
    ids, starts = encode_responses(tok, convs)
    for i, (x, s) in enumerate(zip(ids, starts)):
        with torch.no_grad():
            logits = model(input_ids=torch.as_tensor(x[None].astype(np.int64))).logits[0].double()
        ref = torch.log_softmax(logits, -1)[torch.arange(s - 1, len(x) - 1), torch.as_tensor(x[s:])].sum().item()
        assert count[i] == len(x) - s and lp[i] == pytest.approx(ref, abs=1e-4)
    assert lp[2] == pytest.approx(lp[0], abs=1e-5)


def test_sampling_is_deterministic_and_batch_independent(lm):
    _, _, _, pol = lm
    kw = dict(n=3, temperature=1.0, max_new_tokens=8, seed=11)
    a = generate(pol, PROMPTS, batch_size=4, **kw)
    assert a == generate(pol, PROMPTS, batch_size=4, **kw)
    assert a == generate(pol, PROMPTS, batch_size=1, **kw)  # each sequence's randomness is its own
    assert a != generate(pol, PROMPTS, batch_size=4, **{**kw, "seed": 12})
    assert len(a) == 2 and all(len(r) == 3 for r in a)


def test_top_p_keeps_exactly_the_nucleus():
    logits = jnp.log(jnp.asarray([[0.4, 0.35, 0.25], [0.5, 0.25, 0.25]]))
    keys = jax.random.split(jax.random.key(0), 4000)
    draws = np.stack([np.asarray(sample_token(logits, keys[i * 2:i * 2 + 2], 1.0, 0.5, False)) for i in range(2000)])
    # row 0: 0.4 < 0.5, so the second token joins; the third (0.75 before it) never comes
    assert set(draws[:, 0]) == {0, 1} and abs((draws[:, 0] == 0).mean() - 0.4 / 0.75) < 0.04
    # row 1: the first token alone reaches 0.5: argmax
    assert set(draws[:, 1]) == {0}
    # top_p = 1: every token, in proportion
    full = np.stack([np.asarray(sample_token(logits, keys[i * 2:i * 2 + 2], 1.0, 1.0, False)) for i in range(2000)])
    assert abs((full[:, 0] == 2).mean() - 0.25) < 0.04
    # a tiny top_p is argmax; greedy too
    tiny = np.asarray(sample_token(logits, keys[:2], 1.0, 1e-6, False))
    assert tiny.tolist() == [0, 0] and np.asarray(sample_token(logits, keys[:2], 1.0, 1.0, True)).tolist() == [0, 0]


def test_lm_cli_rows_and_bad_input(lm, tmp_path, capsys):
    d, _, _, pol = lm
    rows = tmp_path / "in.jsonl"
    rows.write_text(json.dumps({"prompt": "Hi there", "attributes": {"verbosity": 2}, "id": 1}) + "\n"
                    + json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["lm", "generate", "--model", d, "--input", str(rows), "--output", str(out), "--n", "2",
                 "--max-new-tokens", "5", "--seed", "3", "--no-progress"]) == 0
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert got[0]["id"] == 1 and len(got[0]["responses"]) == 2 and len(got[1]["responses"]) == 2
    scored = tmp_path / "scored.jsonl"
    resp = tmp_path / "resp.jsonl"
    resp.write_text(json.dumps({"prompt": "Hi there", "response": "Hello!", "attributes": "verbosity:2"}) + "\n")
    assert main(["lm", "logprob", "--model", d, "--input", str(resp), "--output", str(scored), "--no-progress"]) == 0
    rec = json.loads(scored.read_text())
    conv = row_to_messages({"prompt": "Hi there", "response": "Hello!", "attributes": "verbosity:2"},
                           with_attributes=True)
    want, n = response_logprobs(pol, [conv])
    assert rec["logprob"] == pytest.approx(want[0], abs=1e-6) and rec["response_tokens"] == n[0]
    capsys.readouterr()
    for line, needle in [({"prompt": "  "}, "line 1, field 'prompt': empty prompt"),
                         ({"prompt": "x", "attributes": "verbosity:5"}, "line 1, field 'attributes': verbosity level"),
                         ({"prompt": "x", "attributes": {"humor": 1}}, "unknown attribute 'humor'"),
                         ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
                          "field 'messages[1]': the last message must be the user's turn")]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps(line) + "\n")
        assert main(["lm", "generate", "--model", d, "--input", str(bad), "--output", str(out)]) == 1
        err = capsys.readouterr().err
        assert f"{bad}: " in err and needle in err, err
    assert main(["lm", "generate", "--model", d, "--input", str(rows), "--output", str(out), "--n", "0"]) == 1
    assert "--n: must be at least 1" in capsys.readouterr().err
