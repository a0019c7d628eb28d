"""Sampling from policies: greedy decoding gives transformers generate()'s token ids (four families, a
labelled prompt, a batch of different prompt lengths), sampling is deterministic per seed and independent
of batching and of the mesh, EOS stops a row, and top-p keeps exactly the nucleus (edge cases included)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rm_jax.core.errors import InputError
from rm_jax.data.conversation import encode_prompts, with_label
from rm_jax.policy import generate, generate_tokens, load_policy
from rm_jax.policy.generate import sample_token
from tests.helpers import make_hf_causal_lm_with_tokenizer, requires_devices

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    with_label(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a red fruit."}],
        "helpfulness:4,verbosity:0",
    ),
    [{"role": "user", "content": "Hi"}],
]


@pytest.fixture(scope="module")
def lm(hf_causal_lm):
    d, model, tok = hf_causal_lm
    return d, model, tok, load_policy(d)


def _hf_greedy(model, tok, prompt, max_new):
    import torch

    with torch.no_grad():
        out = model.generate(
            torch.as_tensor(prompt[None].astype(np.int64)),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    theirs = out[0, len(prompt) :].numpy().tolist()
    return theirs[: theirs.index(tok.eos_token_id) + 1] if tok.eos_token_id in theirs else theirs


def test_greedy_equals_transformers_generate(lm):
    """Three prompts of different lengths decoded together (left-padded in one batch) against transformers
    on each prompt alone."""
    _, model, tok, pol = lm
    gen = generate(pol, PROMPTS, greedy=True, max_new_tokens=12, return_tokens=True, batch_size=3)
    for p, ids, done in zip(encode_prompts(tok, PROMPTS), gen.tokens, gen.finished):
        theirs = _hf_greedy(model, tok, p, 12)
        assert ids[0].tolist() == theirs
        assert done[0] == (theirs[-1] == tok.eos_token_id)
    assert gen.lengths == [[len(t[0])] for t in gen.tokens]
    assert generate(pol, PROMPTS, temperature=0, max_new_tokens=12, batch_size=3) == gen.texts  # temperature 0


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("pol_sampling"))
    make_hf_causal_lm_with_tokenizer("llama", d, seed=6)
    return d


def test_sampling_is_deterministic_and_independent_of_batching(llama):
    pol = load_policy(llama)
    prompts = encode_prompts(pol.tokenizer, PROMPTS)
    kw = dict(n=3, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=11)
    a = generate_tokens(pol, prompts, batch_size=4, **kw)
    flat = lambda res: [ids.tolist() for per in res for ids, _ in per]  # noqa: E731
    assert flat(a) == flat(generate_tokens(pol, prompts, batch_size=4, **kw))
    assert flat(a) == flat(generate_tokens(pol, prompts, batch_size=9, **kw))  # each sequence's randomness is its own
    assert flat(a) != flat(generate_tokens(pol, prompts, batch_size=4, **{**kw, "seed": 12}))
    assert len(a) == 3 and all(len(r) == 3 for r in a)
    assert len({tuple(x) for x in flat(a)}) > 1  # samples differ from each other


@requires_devices(4)
def test_sampling_under_a_mesh_equals_one_device(llama):
    """The same policy on data=2 x tensor=2 (params, cache and activations sharded) samples the same tokens."""
    from rm_jax.models.sharding import make_mesh

    one = load_policy(llama)
    four = load_policy(llama, mesh=make_mesh(data=2, tensor=2, devices=jax.devices()[:4]))
    prompts = encode_prompts(one.tokenizer, PROMPTS[:2])
    kw = dict(n=2, temperature=1.0, max_new_tokens=6, seed=3, batch_size=4)
    a, b = generate_tokens(one, prompts, **kw), generate_tokens(four, prompts, **kw)
    assert [[x.tolist() for x, _ in per] for per in a] == [[x.tolist() for x, _ in per] for per in b]


def test_eos_stops_a_row(llama):
    """A head whose EOS column dominates ends every row at once: the response is empty and finished."""
    pol = load_policy(llama)
    eos = pol.tokenizer.eos_token_id
    pol.params = dict(pol.params, lm_head_kernel=pol.params["lm_head_kernel"].at[:, eos].add(1e3))
    gen = generate(pol, PROMPTS[:2], n=2, max_new_tokens=5, return_tokens=True, seed=1)
    assert gen.texts == [["", ""], ["", ""]]
    assert all(t.tolist() == [eos] for per in gen.tokens for t in per)
    assert gen.finished == [[True, True], [True, True]]


_sample = jax.jit(sample_token, static_argnums=(2, 3, 4))


def _draws(logits, top_p, temperature=1.0, n=3000):
    """n draws per row of ``logits`` [R, V] in one call: [n, R]."""
    logits = jnp.asarray(logits, jnp.float32)
    rows = logits.shape[0]
    keys = jax.random.split(jax.random.key(0), n * rows)
    return np.asarray(_sample(jnp.tile(logits, (n, 1)), keys, temperature, top_p, False)).reshape(n, rows)


def test_top_p_keeps_exactly_the_nucleus():
    logits = np.log([[0.4, 0.35, 0.25], [0.55, 0.225, 0.225], [0.5, 0.3, 0.2]])
    d = _draws(logits, 0.5)
    # row 0: 0.4 < 0.5, so the second token joins (renormalised 0.4/0.75); the third never comes
    assert set(d[:, 0]) == {0, 1} and abs((d[:, 0] == 0).mean() - 0.4 / 0.75) < 0.03
    # row 1: the first token alone reaches 0.5: argmax
    assert set(d[:, 1]) == {0}
    # ties at the edge of the nucleus stay in together (no arbitrary pick between equal tokens)
    d = _draws(logits, 0.7)
    assert set(d[:, 1]) == {0, 1, 2} and set(d[:, 2]) == {0, 1}
    # top_p = 1: every token, in proportion
    d = _draws(logits, 1.0)
    assert abs((d[:, 0] == 2).mean() - 0.25) < 0.03 and abs((d[:, 2] == 1).mean() - 0.3) < 0.03
    # a tiny top_p is argmax, and so is greedy
    assert set(_draws(logits, 1e-6, n=3000).ravel().tolist()) == {0}
    keys = jax.random.split(jax.random.key(1), 3)
    assert np.asarray(sample_token(jnp.asarray(logits), keys, 1.0, 1.0, True)).tolist() == [0, 0, 0]


def test_nucleus_by_bisection_equals_the_sorted_definition():
    """The bisection's set equals the textbook one (sort, cumulative mass, cut at the first index reaching top_p,
    keep ties) on random rows: peaked, flat, with ties, with near-ties a few ulps apart, with masked tokens, and at
    several top_p."""
    from rm_jax.policy.generate import _in_nucleus

    rng = np.random.default_rng(0)
    rows = [rng.normal(0, s, 300) for s in (0.1, 1.0, 5.0, 20.0) for _ in range(6)]
    rows += [np.round(rng.normal(0, 1.0, 300), 1) for _ in range(6)]  # many exact ties
    rows += [np.round(rng.normal(0, 1.0, 300), 1) + rng.normal(0, 1e-6, 300) for _ in range(6)]  # a few ulps apart
    masked = rng.normal(0, 2.0, 300)
    masked[rng.random(300) < 0.5] = -np.inf
    rows.append(masked)
    logits = np.stack(rows).astype(np.float32)
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1), np.float64)
    checked = 0
    for top_p in (1e-6, 0.1, 0.5, 0.9, 0.95, 0.999):
        got = np.asarray(jax.jit(_in_nucleus, static_argnums=1)(jnp.asarray(probs, jnp.float32), top_p))
        for r, p in enumerate(probs):
            order = np.sort(p)[::-1]
            cums = np.cumsum(order)
            k = min(int(np.searchsorted(cums, top_p)) + 1, len(p))  # fewest tokens reaching top_p
            want = p >= order[k - 1]
            # float32 sums may land a cumulative mass within rounding of top_p on either side: not asserted
            if all(abs(cums[j] - top_p) > 1e-5 for j in (k - 2, k - 1) if j >= 0):
                checked += 1
                assert np.array_equal(got[r], want), (top_p, r, got[r].sum(), want.sum())
            assert got[r][np.argmax(p)] and not got[r][p == 0].any()
    assert checked >= 0.95 * 6 * len(rows)


def test_temperature_and_masked_logits():
    logits = np.log([[0.4, 0.35, 0.25]])
    # a low temperature sharpens the distribution (and with it the nucleus) towards argmax
    assert set(_draws(logits, 0.9, temperature=0.05)[:, 0]) == {0}
    # a high one flattens it: the least likely token comes about a third of the time
    assert abs((_draws(logits, 1.0, temperature=100.0)[:, 0] == 2).mean() - 1 / 3) < 0.03
    # -inf logits (a masked vocabulary) are never drawn, with or without top-p
    masked = np.asarray([[0.0, -np.inf, 0.0, -np.inf]])
    for p in (1.0, 0.6):
        assert set(_draws(masked, p)[:, 0]) == {0, 2}


def test_settings_that_cannot_sample_are_refused(llama):
    pol = load_policy(llama)
    for kw, needle in [
        (dict(n=0), "--n: must be at least 1"),
        (dict(top_p=0.0), "--top-p"),
        (dict(top_p=1.5), "--top-p"),
        (dict(temperature=-1.0), "--temperature"),
        (dict(max_new_tokens=0), "--max-new-tokens"),
        (dict(batch_size=0), "--batch-size"),
    ]:
        with pytest.raises(InputError, match=needle):
            generate_tokens(pol, [np.asarray([1, 2, 3])], **kw)
    with pytest.raises(InputError, match="prompt 2: the prompt's 999 tokens .* positions"):
        generate_tokens(pol, [np.asarray([1, 2, 3]), np.arange(1, 1000) % 50 + 3], max_new_tokens=100)
    with pytest.raises(InputError, match="prompt 1: the prompt encodes to no tokens"):
        generate_tokens(pol, [np.zeros(0, np.int32)])


def test_generation_stops_at_the_templates_end_of_turn_token(tmp_path):
    """ChatML's turn ends with ``<|im_end|>`` while the EOS stays ``</s>``: decoding stops at ``<|im_end|>``
    (the LM head is set so that greedy decoding emits it first), the response text is empty, and the
    conversation re-encoded for log-probs has exactly the emitted tokens as its response."""
    import torch

    from rm_jax.data.conversation import encode_responses
    from tests.helpers import CHATML_TEMPLATE, make_hf_causal_lm_with_template

    d = str(tmp_path / "chatml")
    model, tok = make_hf_causal_lm_with_template("llama", d, CHATML_TEMPLATE, ["<|im_start|>", "<|im_end|>"], seed=4)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert end != tok.eos_token_id
    conv = [{"role": "user", "content": "Hi"}]
    prompt = encode_prompts(tok, [conv])[0]
    with torch.no_grad():
        h = model(torch.as_tensor(prompt[None].astype(np.int64)), output_hidden_states=True).hidden_states[-1][0, -1]
        head = model.get_output_embeddings().weight
        top = float((head @ h).max())
        head[end] = h * (abs(top) + 5.0) * 2 / float(h @ h)  # its logit: 2 (|top| + 5) > top
    model.save_pretrained(d, safe_serialization=True)
    gen = generate(load_policy(d), [conv], greedy=True, max_new_tokens=6, return_tokens=True)
    assert gen.tokens[0][0].tolist() == [end] and gen.finished[0] == [True] and gen.texts[0] == [""]
    ids, start = encode_responses(tok, [conv + [{"role": "assistant", "content": ""}]])
    assert ids[0].tolist() == prompt.tolist() + [end] and start[0] == len(prompt)
