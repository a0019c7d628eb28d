"""rm_jax against transformers (torch, CPU) on the same weights: every family, every layout."""

import numpy as np
import pytest

from rm_jax.data.packing import build_batch, plan_packed
from rm_jax.models import apply_model
from rm_jax.models.hf_io import load_hf_reward_model
from tests.helpers import FAMILIES, PAD, make_hf_model, random_conversations, torch_batch_scores, torch_scores

TOL = 2e-5  # observed max-abs-diff ~2e-6 in fp32; the issue asks for 1e-4


def _batch(convs, bins, seq_len, max_segments, side="right"):
    n = len(convs)
    return build_batch(
        convs,
        np.zeros((n, 5), np.float32),
        np.ones((n, 5), np.float32),
        bins,
        seq_len,
        max_segments,
        PAD,
        padding_side=side,
    )


def _scores_by_example(out, batch, n):
    res = np.full((n, out.shape[-1]), np.nan, np.float32)
    for (r, s), idx in np.ndenumerate(batch["example_index"]):
        if idx >= 0:
            res[idx] = out[r, s]
    return res


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_model(request, tmp_path_factory):
    d = str(tmp_path_factory.mktemp(request.param))
    torch_model = make_hf_model(request.param, d)
    return request.param, d, torch_model, load_hf_reward_model(d)


def test_single_rows(family_model):
    _, _, tm, lm = family_model
    convs = random_conversations(3, 3, 20, seed=1)
    want = torch_scores(tm, convs)
    for i, c in enumerate(convs):
        b = _batch([c], [[0]], len(c), 1)
        got = np.asarray(apply_model(lm.cfg, lm.params, b, 1))[0, 0]
        np.testing.assert_allclose(got, want[i], atol=TOL, rtol=0)


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batches(family_model, side):
    _, _, tm, lm = family_model
    convs = random_conversations(4, 2, 18, seed=2)
    want = torch_batch_scores(tm, convs, side)
    np.testing.assert_allclose(want, torch_scores(tm, convs), atol=TOL)  # the reference agrees with itself
    b = _batch(convs, [[i] for i in range(4)], 20, 1, side)
    got = np.asarray(apply_model(lm.cfg, lm.params, b, 1))[:, 0]
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_packed_rows_score_each_conversation_as_alone(family_model):
    _, _, tm, lm = family_model
    convs = random_conversations(9, 2, 15, seed=3)
    bins = plan_packed([len(c) for c in convs], 32, 6)
    assert any(len(b) > 1 for b in bins)
    b = _batch(convs, bins, 32, 6)
    want = torch_scores(tm, convs)
    got = _scores_by_example(np.asarray(apply_model(lm.cfg, lm.params, b, 6)), b, len(convs))
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    # Query blocks smaller than the row (and than the sliding window): the same function.
    small = lm.cfg.replace(attention_block=5)
    got = _scores_by_example(np.asarray(apply_model(small, lm.params, b, 6)), b, len(convs))
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_head_and_names_loaded(family_model):
    _, d, tm, lm = family_model
    assert lm.head_loaded
    assert lm.attribute_names == ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
    np.testing.assert_array_equal(np.asarray(lm.params["head_kernel"]), tm.score.weight.detach().numpy().T)


def test_scan_and_remat_give_the_same_scores(family_model):
    _, d, tm, lm = family_model
    scanned = load_hf_reward_model(d, scan_layers=True, remat="full")
    convs = random_conversations(5, 2, 12, seed=4)
    b = _batch(convs, plan_packed([len(c) for c in convs], 24, 4), 24, 4)
    a = np.asarray(apply_model(lm.cfg, lm.params, b, 4))
    s = np.asarray(apply_model(scanned.cfg, scanned.params, b, 4))
    np.testing.assert_allclose(s, a, atol=1e-5, rtol=0)


def test_pooled_last_layer_has_the_full_stacks_gradients(family_model):
    """Both stacks (unrolled and scanned) run the last layer at the head's tokens only; the same
    function as running it at every token (full_last_layer=True), so the same gradient for every
    parameter. The scanned stack's params stay stacked [L, ...] (the layout hf_io reads and writes)."""
    import jax
    import jax.numpy as jnp

    from rm_jax.models import RewardModel

    _, d, _, lm = family_model
    scanned = load_hf_reward_model(d, scan_layers=True)
    convs = random_conversations(5, 2, 12, seed=6)
    b = _batch(convs, plan_packed([len(c) for c in convs], 24, 4), 24, 4)
    w = jnp.asarray(np.random.default_rng(0).standard_normal((1, 4, 5)), jnp.float32)

    def grads(cfg, params, full):
        def loss(p):
            out = RewardModel(cfg, full_last_layer=full).apply(
                {"params": p}, b["input_ids"], b["segment_ids"], b["positions"], max_segments=4
            )
            return jnp.sum(out * w)

        return jax.jit(jax.grad(loss))(params)

    def assert_same(got, want, what):
        for path, g in jax.tree_util.tree_leaves_with_path(want):
            x = got
            for key in path:
                x = x[key.key]
            scale = float(jnp.abs(g).max()) + 1e-12
            np.testing.assert_allclose(x, g, atol=1e-5 * scale, rtol=0, err_msg=f"{what} {jax.tree_util.keystr(path)}")

    g_unrolled, g_scanned = grads(lm.cfg, lm.params, False), grads(scanned.cfg, scanned.params, False)
    assert_same(g_unrolled, grads(lm.cfg, lm.params, True), "unrolled pooled vs full")
    assert_same(g_scanned, grads(scanned.cfg, scanned.params, True), "scanned pooled vs full")
    n = lm.cfg.num_hidden_layers
    assert jax.tree.leaves(g_scanned["layers"])[0].shape[0] == n
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[g_unrolled[f"layers_{i}"] for i in range(n)])
    assert_same(stacked, g_scanned["layers"], "unrolled vs scanned")
    # The last layer's params get a gradient through the pooled tokens (not zeros from a skipped layer).
    assert float(jnp.abs(jax.tree.leaves(g_scanned["layers"])[0][n - 1]).max()) > 0


def bf16_score_tolerance(num_layers: int) -> float:
    """Relative tolerance of bfloat16 scores against float32 ones, from bf16's unit roundoff and the depth.

    On its way to a score a value is rounded to bf16 n = 4 + 22 L times in series: the embedding, the final
    norm, the head's weights and output (4), and per layer the input norm, q/k/v weights and outputs (6), the
    attention probabilities and output (2), o's weight and output (2), the residual add, the second norm,
    gate/up weights and outputs (4), SiLU x up, down's weight and output (2), the residual add. Each is a
    relative error uniform in [-u, u] (u = 2^-9, half of eps 2^-8; std u / sqrt(3)); independent, they add
    in quadrature: sigma = u sqrt(n / 3), 3 sigma = 12 u = 2.3e-2 for L = 2 (0.05 before). The estimate is
    high, not low: a dot product averages its elements' weight roundings further. Measured on CPU, all
    four families, seeds 5-7: 2.9e-3 to 6.2e-3 (up to 3.2 u). The worst case (all n errors aligned,
    n u = 9.4e-2) is not a tolerance that could catch anything. The scale is max |score| + 1: the errors
    are relative to the activations, which the head maps to scores of order its weights (std 0.5), so a
    score near 0 still carries the absolute error of its neighbours. A GPU (cuDNN attention under
    `attention: auto`, float32 accumulation of bf16 dots) rounds at the same places."""
    u = 2.0**-9
    return 3 * u * np.sqrt((4 + 22 * num_layers) / 3)


def test_bf16_compute_is_close(family_model):
    _, d, tm, lm = family_model
    bf = load_hf_reward_model(d, dtype="bfloat16")
    convs = random_conversations(3, 4, 16, seed=5)
    b = _batch(convs, [[i] for i in range(3)], 16, 1)
    got = np.asarray(apply_model(bf.cfg, bf.params, b, 1))[:, 0]
    want = torch_scores(tm, convs)
    assert np.abs(got - want).max() > TOL  # bf16 compute really ran (float32 matches to TOL)
    tol = bf16_score_tolerance(bf.cfg.num_hidden_layers)
    assert np.abs(got - want).max() < tol * (np.abs(want).max() + 1), (np.abs(got - want).max(), tol)


def test_causal_lm_gets_a_new_head(tmp_path):
    make_hf_model("llama", str(tmp_path), kind="causal")
    lm = load_hf_reward_model(str(tmp_path), seed=3)
    assert not lm.head_loaded and lm.cfg.num_labels == 5
    w = np.asarray(lm.params["head_kernel"])
    assert w.shape == (48, 5) and 0.01 < w.std() < 0.03
