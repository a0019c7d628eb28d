"""Response log-probabilities (``rm_jax.policy.response_logprobs``: packed rows, training's forward pass)
against a transformers forward pass on the same ids, for the four families; a SteerLM label conditions the
response wherever the template puts it (the nemotron label turn, or a system message); long responses are
summed in float64."""

from __future__ import annotations

import numpy as np
import pytest

from rm_jax.data.conversation import encode_responses, render, row_to_messages, with_label
from rm_jax.policy import load_policy, response_logprobs

CONVS = [
    row_to_messages({"prompt": "What is the capital of France?", "response": "Paris."}),
    row_to_messages(
        {
            "prompt": "Name a red fruit.",
            "response": "An apple, surely.",
            "attributes": {"helpfulness": 4, "verbosity": 0},
        },
        with_attributes=True,
    ),
    row_to_messages(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"},
            ],
            "attributes": "verbosity:1",
        },
        with_attributes=True,
    ),
]
# A chat template without a label turn: the label becomes (part of) the system message.
CHATML = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _torch_logprob(model, ids, start):
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.as_tensor(ids[None].astype(np.int64))).logits[0].double()
    lp = torch.log_softmax(logits, -1)[torch.arange(start - 1, len(ids) - 1), torch.as_tensor(ids[start:])]
    return lp.sum().item()


@pytest.fixture(scope="module")
def lm(hf_causal_lm):
    return hf_causal_lm


def test_response_logprobs_equal_a_torch_forward_pass(lm):
    """Three conversations and a repeat of the first, packed into one row: each sum equals transformers'
    on that conversation alone (the label turn of the nemotron template conditions the second and third)."""
    d, model, tok = lm
    pol = load_policy(d)
    lp, count = response_logprobs(pol, CONVS + CONVS[:1], max_segments=4)
    ids, starts = encode_responses(tok, CONVS)
    assert "<extra_id_2>helpfulness:4,verbosity:0\n" in tok.decode(ids[1])
    for i, (x, s) in enumerate(zip(ids, starts)):
        assert count[i] == len(x) - s and x[-1] == tok.eos_token_id  # through the end of the turn
        assert lp[i] == pytest.approx(_torch_logprob(model, x, s), abs=1e-4)
    assert lp.dtype == np.float64 and lp[3] == pytest.approx(lp[0], abs=1e-5)
    # the label is read: the same response scores differently under another label
    other, _ = response_logprobs(pol, [with_label(CONVS[1], "helpfulness:0,verbosity:4")])
    assert abs(other[0] - lp[1]) > 1e-3


@pytest.mark.parametrize("hf_causal_lm", [("qwen3", True)], indirect=True, ids=["qwen3-tied"])
def test_label_as_a_system_message_and_a_long_response(hf_causal_lm):
    """A chat template without a label turn puts the label in the system message; a ~400-token response
    is summed in float64 (a float32 sum of that many terms drifts past 1e-4)."""
    d, model, tok = hf_causal_lm
    pol = load_policy(d, template=CHATML)
    long = row_to_messages(
        {"prompt": "Tell me a story.", "response": " ".join(["once upon a time"] * 100), "attributes": "verbosity:4"},
        with_attributes=True,
    )
    text = render(tok, [long], CHATML)[0]
    assert text.startswith("<|system|>\nverbosity:4</s>")
    lp, count = response_logprobs(pol, [long, CONVS[2]], batch_rows=2, max_segments=1)
    ids, starts = encode_responses(tok, [long, CONVS[2]], CHATML)
    assert count[0] > 300 and "Be brief.\nverbosity:1" in tok.decode(ids[1])
    for i in range(2):
        assert lp[i] == pytest.approx(_torch_logprob(model, ids[i], starts[i]), abs=1e-4)


@pytest.mark.parametrize("hf_causal_lm", [("llama", False)], indirect=True, ids=["llama"])
def test_drawn_ids_are_scored_not_their_re_encoded_text(hf_causal_lm):
    """A response given with the ids drawn ('h', then half of the two-byte 'é', then EOS: its text 'h\ufffd'
    re-encodes to other tokens) is scored on those ids after the prompt the sampler encoded, plain and under
    a tempered distribution (against transformers' logits); `lm logprob` rows with `response_ids` too."""
    from rm_jax.data.conversation import encode_prompts, response_text
    from rm_jax.policy import logprob_rows

    d, model, tok = hf_causal_lm
    pol = load_policy(d)
    drawn = tok("hé", add_special_tokens=False)["input_ids"][:2] + [tok.eos_token_id]
    text = response_text(tok, tok.decode(drawn, skip_special_tokens=False))
    conv = CONVS[1][:-1] + [{"role": "assistant", "content": text}]
    ids, starts = encode_responses(tok, [conv])
    assert ids[0][starts[0] :].tolist() != drawn  # the text alone would score other tokens
    x = np.concatenate([encode_prompts(tok, [conv[:-1]])[0], drawn])
    s = len(x) - len(drawn)
    lp, count = response_logprobs(pol, [conv, conv], response_ids=[drawn, None])
    assert count[0] == 3 and lp[0] == pytest.approx(_torch_logprob(model, x, s), abs=1e-4)
    assert lp[1] == pytest.approx(_torch_logprob(model, ids[0], starts[0]), abs=1e-4)  # no ids: the text
    assert abs(lp[0] - lp[1]) > 1e-2
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.as_tensor(x[None].astype(np.int64))).logits[0].numpy()
    tempered, _ = response_logprobs(pol, [conv], response_ids=[drawn], temperature=0.5)
    assert tempered[0] == pytest.approx(_numpy_sampled_logprob(logits[s - 1 : -1], x[s:], 0.5, 1.0), abs=1e-4)
    row = {"prompt": "Name a red fruit.", "response": text, "attributes": "helpfulness:4,verbosity:0"}
    out = logprob_rows(pol, [row, {**row, "response_ids": drawn}], progress=False)
    assert out[1]["logprob"] == pytest.approx(lp[0], abs=1e-5) and out[1]["response_tokens"] == 3
    assert out[0]["logprob"] == pytest.approx(lp[1], abs=1e-5)


@pytest.fixture(scope="module", params=["end", "chatml"])
def templated_lm(request, tmp_path_factory):
    """A tiny llama whose template writes a newline after its end-of-turn token: ``<|end|>\\n`` (the EOS) or
    ChatML's ``<|im_end|>\\n`` (the EOS stays ``</s>``)."""
    from tests.helpers import CHATML_TEMPLATE, END_TEMPLATE, make_hf_causal_lm_with_template

    d = str(tmp_path_factory.mktemp(f"lm_{request.param}"))
    if request.param == "end":
        model, tok = make_hf_causal_lm_with_template(
            "llama", d, END_TEMPLATE, ["<|end|>", "<|user|>", "<|assistant|>"], eos="<|end|>", seed=3
        )
        return d, model, tok, "<|end|>"
    model, tok = make_hf_causal_lm_with_template("llama", d, CHATML_TEMPLATE, ["<|im_start|>", "<|im_end|>"], seed=3)
    return d, model, tok, "<|im_end|>"


def test_lm_logprob_counts_the_response_through_its_end_of_turn_and_nothing_after(templated_lm):
    """``rm-jax lm logprob`` rows: response_tokens are the response's tokens plus the template's end-of-turn
    token (not the newline after it, not a second EOS), and logprob is transformers' sum over exactly those."""
    from rm_jax.policy import logprob_rows

    d, model, tok, end = templated_lm
    rows = [
        {"prompt": "hello", "response": "hi! how can I help?"},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    ]
    out = logprob_rows(load_policy(d), rows, progress=False)
    for row, r in zip(out, rows):
        text = r.get("response") or r["messages"][-1]["content"]
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": r.get("prompt") or r["messages"][0]["content"]}],
            tokenize=False,
            add_generation_prompt=True,
        )
        ids = np.asarray(tok(prompt + text + end, add_special_tokens=False)["input_ids"])
        start = len(tok(prompt, add_special_tokens=False)["input_ids"])
        assert row["response_tokens"] == len(ids) - start == len(tok(text, add_special_tokens=False)["input_ids"]) + 1
        assert row["logprob"] == pytest.approx(_torch_logprob(model, ids, start), abs=1e-4)
    ids, starts = encode_responses(tok, [row_to_messages(rows[0])])
    assert tok.convert_ids_to_tokens(ids[0][starts[0] :].tolist())[-2:] == ["?", end]


def test_a_response_holding_the_end_of_turn_token_is_refused(templated_lm):
    from rm_jax.core.errors import ConversationError

    _, _, tok, end = templated_lm
    with pytest.raises(ConversationError, match=r"conv 1: the response contains the end-of-turn token"):
        encode_responses(tok, [row_to_messages({"prompt": "q", "response": f"a{end} b"})], locations=["conv 1"])


def _numpy_sampled_logprob(logits, targets, temperature, top_p):
    """The definition written plainly, in float64: per token softmax(logits / T), kept the k most likely tokens
    (k the fewest whose probability reaches top_p, plus ties with the k-th), renormalised; summed."""
    total = 0.0
    for z, t in zip(logits.astype(np.float64) / temperature, targets):
        p = np.exp(z - z.max())
        p /= p.sum()
        srt = np.sort(p)[::-1]
        cut = srt[np.argmax(np.cumsum(srt) >= top_p)]
        keep = p >= cut if top_p < 1 else np.ones_like(p, bool)  # top-p 1: no nucleus (sums may miss 1.0)
        total += np.log(p[t]) - np.log(p[keep].sum()) if keep[t] else -np.inf
    return total


@pytest.fixture(scope="module")
def ending_lm(tmp_path_factory):
    from tests.helpers import make_hf_causal_lm_that_ends_turns

    d = str(tmp_path_factory.mktemp("ending_lm"))
    return (d, *make_hf_causal_lm_that_ends_turns(d))


def test_logprobs_under_the_sampling_distribution_equal_numpy(ending_lm):
    """Responses sampled at temperature 0.5 / top-p 0.8, scored under that distribution: equal to the numpy
    definition on transformers' logits, and different from the plain (temperature 1) log-probability."""
    from rm_jax.policy import generate

    d, model, tok = ending_lm
    pol = load_policy(d)
    prompts = [[{"role": "user", "content": "Name a colour."}], [{"role": "user", "content": "What is 2 plus 2?"}]]
    gen = generate(pol, prompts, n=4, temperature=0.5, top_p=0.8, max_new_tokens=16, seed=3, return_tokens=True)
    convs = []
    for p, ys, toks, fs in zip(prompts, gen.texts, gen.tokens, gen.finished):
        for y, t, f in zip(ys, toks, fs):
            conv = p + [{"role": "assistant", "content": y}]
            ids, starts = encode_responses(tok, [conv])
            if f and y.strip() and ids[0][starts[0] :].tolist() == t.tolist():  # text gives back the tokens
                convs.append(conv)
    assert len(convs) >= 4
    tempered, count = response_logprobs(pol, convs, temperature=0.5, top_p=0.8)
    plain, _ = response_logprobs(pol, convs)
    ids, starts = encode_responses(tok, convs)
    import torch

    for i, (x, s) in enumerate(zip(ids, starts)):
        with torch.no_grad():
            logits = model(input_ids=torch.as_tensor(x[None].astype(np.int64))).logits[0].numpy()
        want = _numpy_sampled_logprob(logits[s - 1 : len(x) - 1], x[s:], 0.5, 0.8)
        assert np.isfinite(want) and tempered[i] == pytest.approx(want, abs=1e-4)
        assert count[i] == len(x) - s
    assert np.abs(tempered - plain).min() > 1e-2  # the plain log-prob is not log Q'
    # temperature alone (no nucleus) is softmax(logits / T) too
    only_t, _ = response_logprobs(pol, convs[:1], temperature=0.5)
    with torch.no_grad():
        logits = model(input_ids=torch.as_tensor(ids[0][None].astype(np.int64))).logits[0].numpy()
    want = _numpy_sampled_logprob(logits[starts[0] - 1 : len(ids[0]) - 1], ids[0][starts[0] :], 0.5, 1.0)
    assert only_t[0] == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("hf_causal_lm", [("mistral", False)], indirect=True, ids=["mistral-window"])
def test_shared_prompts_give_each_response_its_unshared_logprob(hf_causal_lm):
    """A prompt's samples (some opening with the same words), another prompt's pair and a lone conversation:
    laid out with each prompt once (``share_prompts="auto"`` shares here), every response's log-probability
    equals the unshared one within 1e-5, plain and under a tempered distribution; Mistral's sliding window (7)
    is shorter than the conversations, so it is measured in the unshared positions."""
    d, _, _ = hf_causal_lm
    pol = load_policy(d)
    ys = ["Paris.", "Paris, of course.", "It is Paris, on the Seine.", "Lyon? No: Paris.", "The capital is Paris."]
    convs = [CONVS[1][:-1] + [{"role": "assistant", "content": y}] for y in ys]
    convs += [CONVS[0][:-1] + [{"role": "assistant", "content": y}] for y in ys[:2]] + [CONVS[2]]
    for temperature in (1.0, 0.5):
        report: list = []
        shared, n_shared = response_logprobs(
            pol, convs, max_segments=8, temperature=temperature, share_prompts="auto", share_report=report
        )
        plain, n_plain = response_logprobs(pol, convs, max_segments=8, temperature=temperature)
        assert len(report) == 1 and report[0].shared_groups == 2 and report[0].prompt_tokens_saved > 0
        np.testing.assert_array_equal(n_shared, n_plain)
        np.testing.assert_allclose(shared, plain, rtol=1e-5, atol=1e-5)
        assert np.isfinite(plain).all() and np.ptp(plain[:5]) > 1e-2  # different responses, different numbers
