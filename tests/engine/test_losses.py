"""SteerLM 2.0's loss: weights and baseline against numpy, and its gradient against autodiff of the
definition written plainly (the baseline held fixed), on toy groups packed in [B, S] slots."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import softmax

from rm_jax.engine.losses import steerlm2_sums

# Two groups (3 and 2 responses) scattered over a [2, 4] slot grid; two empty slots.
GROUP = np.array([[0, 0, 1, -1], [0, 1, -1, -1]])
TOKENS = np.array([[5, 9, 4, 0], [7, 3, 0, 0]], np.float32)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    logq_prime = rng.normal(-20, 5, GROUP.shape).astype(np.float32)
    logw = rng.normal(0, 2, GROUP.shape)
    w = np.zeros(GROUP.shape, np.float32)
    for g in (0, 1):  # the data's weights: a softmax within each group
        m = GROUP == g
        w[m] = softmax(logw[m])
    theta = rng.normal(0, 1, GROUP.shape).astype(np.float32)  # log Q_theta = -20 + 3 * theta (a toy model)
    return theta, w, logq_prime


def _logq(theta):
    return -20.0 + 3.0 * theta


def _plain(theta, w, logq_prime, normalisation="group_mean_length"):
    """The definition, group by group, in plain jnp: NeMo's mean over groups of each group's loss divided by
    its own mean response length, or the step's summed loss over the sum of the groups' mean lengths."""
    logq = _logq(theta)
    losses, lengths = [], []
    for g in (0, 1):
        idx = np.argwhere(GROUP == g)
        lq = jnp.stack([logq[i, j] for i, j in idx])
        lp = jnp.asarray([logq_prime[i, j] for i, j in idx])
        wg = jnp.asarray([w[i, j] for i, j in idx])
        b = jax.nn.softmax(jax.lax.stop_gradient(lq) - lp)
        losses.append(-jnp.sum((wg - b) * lq))
        lengths.append(np.mean([TOKENS[i, j] for i, j in idx]))
    if normalisation == "group_mean_length":
        return sum(loss / n for loss, n in zip(losses, lengths)) / len(losses)
    return sum(losses) / sum(lengths)


@pytest.mark.parametrize("normalisation", ["group_mean_length", "batch_mean_length"])
def test_loss_value_baseline_kl_and_ess_against_numpy(normalisation):
    theta, w, lp = _inputs()
    s = steerlm2_sums(
        jnp.asarray(_logq(theta)),
        jnp.asarray(TOKENS),
        jnp.asarray(w),
        jnp.asarray(lp),
        jnp.asarray(GROUP),
        normalisation,
    )
    lengths = {0: np.mean([5, 9, 7]), 1: np.mean([4, 3])}
    want_num, want_kl, loss, ess = 0.0, 0.0, {}, {}
    for g in (0, 1):
        m = GROUP == g
        b = softmax(_logq(theta)[m].astype(np.float64) - lp[m])
        loss[g] = -np.sum((w[m] - b) * _logq(theta)[m])
        want_kl += np.sum(w[m] * (np.log(w[m]) - np.log(b)))
        ess[g] = 1.0 / np.sum(w[m].astype(np.float64) ** 2)
    if normalisation == "group_mean_length":
        want_num, want_den = loss[0] / lengths[0] + loss[1] / lengths[1], 2.0
    else:
        want_num, want_den = loss[0] + loss[1], lengths[0] + lengths[1]
    assert float(s["num"]) == pytest.approx(want_num, rel=1e-5)
    assert float(s["den"]) == pytest.approx(want_den)
    assert float(s["kl_sum"]) == pytest.approx(want_kl, rel=1e-4) and int(s["groups"]) == 2
    assert float(s["ess_sum"]) == pytest.approx(ess[0] + ess[1], rel=1e-5)
    assert float(s["ess_min"]) == pytest.approx(min(ess.values()), rel=1e-5)


def test_nemo_scales_each_group_by_its_own_mean_length():
    """Groups of mean length 10 and 100 with the same summed term: NeMo's normalisation scales them 1/10 and
    1/100 (then averages over the 2 groups); the batch option scales both by 1/110."""
    group = np.array([[0, 0, 1, 1]])
    tokens = np.array([[8, 12, 90, 110]], np.float32)
    logq = jnp.asarray([[-3.0, -5.0, -3.0, -5.0]])
    w = jnp.asarray([[0.9, 0.1, 0.9, 0.1]])
    lp = jnp.asarray([[-4.0, -4.0, -4.0, -4.0]])  # b = softmax(logq - lp) = softmax([1, -1]) in both groups
    b = softmax(np.array([1.0, -1.0]))
    term = -np.sum((np.array([0.9, 0.1]) - b) * np.array([-3.0, -5.0]))  # each group's summed loss
    assert term != 0

    def loss(norm):
        s = steerlm2_sums(logq, jnp.asarray(tokens), w, lp, jnp.asarray(group), norm)
        return float(s["num"] / s["den"])

    assert loss("group_mean_length") == pytest.approx((term / 10 + term / 100) / 2, rel=1e-5)
    assert loss("batch_mean_length") == pytest.approx((term + term) / 110, rel=1e-5)
    with pytest.raises(ValueError, match="not one of group_mean_length, batch_mean_length"):
        steerlm2_sums(logq, jnp.asarray(tokens), w, lp, jnp.asarray(group), "tokens")


@pytest.mark.parametrize("normalisation", ["group_mean_length", "batch_mean_length"])
def test_gradient_equals_autodiff_of_the_plain_definition(normalisation):
    theta, w, lp = _inputs(1)

    def ours(t):
        s = steerlm2_sums(
            _logq(t), jnp.asarray(TOKENS), jnp.asarray(w), jnp.asarray(lp), jnp.asarray(GROUP), normalisation
        )
        return s["num"] / s["den"]

    g_ours = jax.grad(ours)(jnp.asarray(theta))
    g_plain = jax.grad(lambda t: _plain(t, w, lp, normalisation))(jnp.asarray(theta))
    np.testing.assert_allclose(np.asarray(g_ours), np.asarray(g_plain), rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(g_ours)[GROUP < 0] == 0)  # empty slots get no gradient
    # The gradient is -(w - b) dlogq / den: zero exactly when the policy's baseline already equals w.
    assert np.abs(np.asarray(g_ours)[GROUP >= 0]).max() > 1e-4


def test_when_the_baseline_matches_the_weights_the_gradient_vanishes():
    theta, w, lp = _inputs(2)
    # Choose log Q' so that softmax(logQ_theta - logQ') == w in each group.
    lp2 = lp.copy()
    for g in (0, 1):
        m = GROUP == g
        lp2[m] = _logq(theta)[m] - np.log(w[m])
    grad = jax.grad(
        lambda t: steerlm2_sums(_logq(t), jnp.asarray(TOKENS), jnp.asarray(w), jnp.asarray(lp2), jnp.asarray(GROUP))[
            "num"
        ]
    )(jnp.asarray(theta))
    np.testing.assert_allclose(np.asarray(grad), 0.0, atol=1e-5)


def _groups_file(tmp_path, rows):
    import json

    p = tmp_path / "groups.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(p)


def _group(n=3, **over):
    resp = [
        {
            "from": "Assistant",
            "value": f"answer {i} " * (i + 1),
            "log(P(a|x,y))": -1.0 - i,
            "log(P(y|x))": -10.0 - i,
            "log(Q(y|a,x))": -9.0 - 2 * i,
        }
        for i in range(n)
    ]
    g = {
        "system": "",
        "prompt_turns": [{"from": "User", "value": "What is 2+2?"}],
        "label": "helpfulness:4,verbosity:1",
        "responses": resp,
    }
    g.update(over)
    return g


def test_nemo_groups_round_trip_weights_and_batches(tmp_path):
    from rm_jax.data.pipeline import Loader, bundled_tokenizer_path
    from rm_jax.data.steer_groups import encode_groups, load_groups, write_groups
    from rm_jax.models.hf_io import load_tokenizer

    groups = load_groups(_groups_file(tmp_path, [_group(3), _group(2, label="verbosity:4")]))
    w = groups[0].weights
    np.testing.assert_allclose(w, softmax(np.array([-1 - 10 + 9, -2 - 11 + 11, -3 - 12 + 13.0])), rtol=1e-12)
    out = str(tmp_path / "again.jsonl")
    write_groups(out, groups)
    again = load_groups(out)
    assert [(g.label, g.responses, g.prompt) for g in again] == [(g.label, g.responses, g.prompt) for g in groups]
    np.testing.assert_array_equal(again[1].log_q, groups[1].log_q)

    tok = load_tokenizer(bundled_tokenizer_path())
    enc = encode_groups(groups, tok, 256)
    assert enc.units == [(0, 1, 2), (3, 4)]
    assert "<extra_id_2>helpfulness:4,verbosity:1\n" in tok.decode(enc.ids[0][: enc.response_start[0]])
    assert enc.unit_lengths.max() <= 256
    b = next(Loader(enc, 256, 8, 2, tok.pad_token_id, shuffle=False))
    present = b["example_index"] >= 0
    assert sorted(b["example_index"][present].tolist()) == [0, 1, 2, 3, 4]  # both groups whole in one batch
    ex = b["example_index"][present]
    np.testing.assert_allclose(b["w"][present], enc.example_values["w"][ex])
    np.testing.assert_allclose(b["logq_prime"][present], enc.example_values["logq_prime"][ex])
    assert sorted(set(b["steer_group"][present].tolist())) == [0, 1] and (b["steer_group"][~present] == -1).all()
    assert "pair_chosen" not in b  # two-response groups are not reward-model pairs


@pytest.mark.parametrize(
    "change, field, needle",
    [
        (lambda g: g.update(responses=g["responses"][:1]), "responses", "at least 2 responses"),
        (lambda g: g["responses"][1].pop("log(P(y|x))"), "responses[1]", "missing 'log(P(y|x))'"),
        (lambda g: g["responses"][0].update({"log(Q(y|a,x))": float("nan")}), "responses[0]", "not finite"),
        (lambda g: g.update(label="helpfulness:7"), "label", "not an integer 0-4"),
        (lambda g: g.update(label="humor:2"), "label", "unknown attribute 'humor'"),
        (lambda g: g["responses"][2].update(value="  "), "responses[2].value", "empty response"),
        (lambda g: g.update(prompt_turns=[{"from": "Robot", "value": "x"}]), "prompt_turns[0]", "User"),
    ],
)
def test_bad_groups_name_file_row_and_field(tmp_path, change, field, needle):
    from rm_jax.core.errors import DataError
    from rm_jax.data.steer_groups import load_groups

    bad = _group(3)
    change(bad)
    path = _groups_file(tmp_path, [_group(3), bad])
    with pytest.raises(DataError) as e:
        load_groups(path)
    assert str(e.value).startswith(f"{path}: row 2, field '{field}': ") and needle in str(e.value)
