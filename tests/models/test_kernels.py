"""Choosing and guarding the attention kernels (model.attention), the packed cuDNN layout, and splash
attention inside the model and the train step. cuDNN itself needs a GPU: here its inputs (segment
offsets and lengths) are checked on hand-worked rows and against the mask they must describe."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rm_jax.core.errors import ConfigError
from rm_jax.models.attention import KernelUnavailableError, attend, attention_mask, resolve_kernel
from rm_jax.models.cudnn import _kv_offsets_follow_kv_heads, max_runs, segment_runs
from rm_jax.models.llama import DecoderConfig
from tests.helpers import requires_cpu, requires_devices, requires_gpu

# ---------------------------------------------------------------- which kernel runs where


@pytest.mark.parametrize(
    "backend,dtype,cc,want",
    [
        ("cpu", "float32", None, "xla"),
        ("cpu", "bfloat16", None, "xla"),
        ("tpu", "bfloat16", None, "splash"),
        ("tpu", "float32", None, "splash"),
        ("gpu", "bfloat16", (9, 0), "cudnn"),  # H100: packed
        ("gpu", "bfloat16", (10, 0), "cudnn"),
        ("gpu", "bfloat16", (8, 0), "cudnn_dense"),  # A100: cuDNN has no packed layout before Hopper
        ("gpu", "float32", (9, 0), "xla"),  # cuDNN flash attention has no float32
        ("rocm", "bfloat16", None, "xla"),
    ],
)
def test_auto_picks_the_kernel_for_the_backend(backend, dtype, cc, want):
    assert resolve_kernel("auto", backend, dtype=dtype, compute_capability=cc) == want


def test_explicit_kernels_and_bad_names():
    for name in ("xla", "splash"):
        assert resolve_kernel(name, "cpu") == name
    assert resolve_kernel("cudnn", "gpu") == "cudnn" and resolve_kernel("cudnn_dense", "gpu") == "cudnn_dense"
    with pytest.raises(ValueError, match="choose auto or one of"):
        resolve_kernel("flash", "cpu")
    with pytest.raises(ValueError, match="model.attention"):
        DecoderConfig(attention="flash")
    assert DecoderConfig(dtype="float32").attention_kernel("gpu") == "xla"
    assert DecoderConfig(attention="splash").attention_kernel("cpu") == "splash"


@pytest.mark.parametrize("backend", ["cpu", "tpu", "rocm"])
@pytest.mark.parametrize("kernel", ["cudnn", "cudnn_dense"])
def test_cudnn_elsewhere_is_refused_by_name(kernel, backend):
    """The backend is an argument here: this half holds on every machine."""
    with pytest.raises(KernelUnavailableError, match=f"backend is '{backend}'") as e:
        resolve_kernel(kernel, backend)
    assert isinstance(e.value, ConfigError)  # the command line prints it as one line


@requires_cpu("the traced model must refuse cuDNN for want of a GPU")
@pytest.mark.parametrize("kernel", ["cudnn", "cudnn_dense"])
def test_cudnn_without_a_gpu_fails_before_compiling_and_names_the_backend(kernel):
    # The check resolve_kernel makes, while the model is traced on this machine (lower() compiles nothing).
    from rm_jax.models import RewardModel, abstract_params

    cfg = DecoderConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        dtype="bfloat16",
        attention=kernel,
    )
    ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    fn = jax.jit(lambda p, i: RewardModel(cfg).apply({"params": p}, i, jnp.ones_like(i), jnp.zeros_like(i)))
    with pytest.raises(KernelUnavailableError, match="'cpu'"):
        fn.lower(abstract_params(cfg), ids)
    q = jnp.zeros((1, 8, 2, 8), jnp.bfloat16)
    with pytest.raises(KernelUnavailableError, match="'cpu'"):
        attend(q, q, q, jnp.ones((1, 8), jnp.int32), kernel=kernel, max_segments=1)


# ---------------------------------------------------------------- packed cuDNN layout


def _rows(*rows):
    return jnp.asarray(np.asarray(rows, np.int32))


def test_segment_runs_on_hand_worked_rows():
    # m = 5 (max_segments 3 + a padding run before and after).
    m = max_runs(3)
    assert m == 5
    seg = _rows(
        [1, 1, 1, 2, 2, 0, 0, 0, 0, 0],  # packed, padding tail
        [0, 0, 0, 1, 1, 1, 1, 1, 1, 1],  # left padded
        [1, 1, 2, 3, 3, 3, 3, 3, 3, 3],  # a full max_segments, no padding
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # an all-padding row
        [0, 1, 1, 2, 2, 3, 3, 3, 0, 0],  # the bound used up: pads on both sides of 3 conversations
    )
    offsets, lengths, count = (np.asarray(a) for a in segment_runs(seg, m))
    np.testing.assert_array_equal(
        offsets,
        [
            [0, 3, 5, -1, -1, -1],
            [0, 3, -1, -1, -1, -1],
            [0, 2, 3, -1, -1, -1],
            [0, -1, -1, -1, -1, -1],
            [0, 1, 3, 5, 8, -1],
        ],
    )
    np.testing.assert_array_equal(
        lengths, [[3, 2, 5, -1, -1], [3, 7, -1, -1, -1], [2, 1, 7, -1, -1], [10, -1, -1, -1, -1], [1, 2, 2, 3, 2]]
    )
    np.testing.assert_array_equal(count, [3, 2, 3, 1, 5])
    assert offsets.dtype == np.int32 and lengths.dtype == np.int32


def test_segment_runs_report_rows_past_the_bound():
    seg = _rows([1, 2, 3, 4, 5, 6, 0, 0])  # 7 runs, bound 4
    offsets, lengths, count = (np.asarray(a) for a in segment_runs(seg, 4))
    assert count[0] == 7  # the caller poisons this row instead of using a layout that is cut short
    np.testing.assert_array_equal(offsets[0], [0, 1, 2, 3, -1])
    np.testing.assert_array_equal(lengths[0], [1, 1, 1, 1])


def _mask_from_runs(offsets: np.ndarray, lengths: np.ndarray, t: int) -> np.ndarray:
    """What cuDNN's PADDING_CAUSAL packed layout lets token i see: earlier tokens of its own run."""
    run = np.full((offsets.shape[0], t), -1)
    for b in range(offsets.shape[0]):
        for j, (o, n) in enumerate(zip(offsets[b], lengths[b])):
            if o >= 0:
                run[b, o : o + n] = j
    assert np.all(run >= 0), "every token must be in a run (else cuDNN leaves its output unwritten)"
    idx = np.arange(t)
    return (run[:, :, None] == run[:, None, :]) & (idx[:, None] >= idx[None, :])


@pytest.mark.parametrize("side", ["packed", "left", "right"])
def test_segment_runs_describe_the_same_mask_as_the_segment_ids(side):
    from rm_jax.data.packing import build_batch, plan_packed

    rng = np.random.default_rng(0)
    convs = [rng.integers(3, 50, int(n)).astype(np.int32) for n in rng.integers(3, 20, 12)]
    if side == "packed":
        bins = plan_packed([len(c) for c in convs], 48, 6)
    else:
        bins = [[i] for i in range(len(convs))]
    batch = build_batch(
        convs,
        np.zeros((12, 5), np.float32),
        np.ones((12, 5), np.float32),
        bins,
        48,
        6,
        0,
        rows=len(bins) + 1,
        padding_side="left" if side == "left" else "right",
    )  # + an all-pad row
    seg = jnp.asarray(batch["segment_ids"])
    offsets, lengths, count = (np.asarray(a) for a in segment_runs(seg, max_runs(6)))
    assert np.all(count <= max_runs(6))
    want = np.asarray(attention_mask(seg, None))[:, 0, 0]
    np.testing.assert_array_equal(_mask_from_runs(offsets, lengths, 48), want)


def test_gqa_offset_probe():
    """jax <= 0.11.0 scaled the kv offsets by the query heads (wrong keys under GQA): the probe tells
    the old rule from the fixed one, and anything it cannot run counts as the old rule."""

    def fix(mult_by_kv_heads):
        def f(q_seqlen, kv_seqlen, q_offsets, kv_offsets, query, key):
            heads = key.shape[2] if mult_by_kv_heads else query.shape[2]
            return q_seqlen, kv_seqlen, q_offsets * query.shape[2] * query.shape[3], kv_offsets * heads * key.shape[3]

        return types.SimpleNamespace(_fix_seqlen_offsets=f)

    assert _kv_offsets_follow_kv_heads(fix(True))
    assert not _kv_offsets_follow_kv_heads(fix(False))
    assert not _kv_offsets_follow_kv_heads(types.SimpleNamespace())
    # The installed JAX, whatever its version: the rule its own function follows, read off another GQA
    # shape (4 query heads, 2 kv heads, D=16, a segment starting at token 3), is the one the probe reports.
    try:
        from jax._src.cudnn import fused_attention_stablehlo as fa
    except ImportError:
        fa = types.SimpleNamespace()
    try:
        seqlen = jnp.asarray([[3, 3]], jnp.int32)
        offsets = jnp.asarray([[0, 3, -1]], jnp.int32)
        q, k = jnp.zeros((1, 6, 4, 16), jnp.bfloat16), jnp.zeros((1, 6, 2, 16), jnp.bfloat16)
        kv_start = int(np.asarray(fa._fix_seqlen_offsets(seqlen, seqlen, offsets, offsets, q, k)[3])[0, 1])
    except Exception:  # no such function in this JAX: the probe must fall back to the old rule
        kv_start = None
    assert kv_start in (None, 3 * 2 * 16, 3 * 4 * 16), f"a third rule: {kv_start}"
    assert _kv_offsets_follow_kv_heads(fa) == (kv_start == 3 * 2 * 16), (jax.__version__, kv_start)


# ---------------------------------------------------------------- splash inside the model and the step


def _tiny(**kw) -> DecoderConfig:
    base = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        dtype="float32",
    )
    base.update(kw)
    return DecoderConfig(**base)


def _packed_batch(rows: int, seq: int, max_segments: int, vocab: int, seed: int) -> dict:
    from rm_jax.data.packing import build_batch, plan_packed

    rng = np.random.default_rng(seed)
    convs = [rng.integers(3, vocab, int(n)).astype(np.int32) for n in rng.integers(5, 30, 3 * rows)]
    bins = plan_packed([len(c) for c in convs], seq, max_segments)[:rows]
    labels = rng.integers(0, 5, (len(convs), 5)).astype(np.float32)
    b = build_batch(convs, labels, np.ones_like(labels), bins, seq, max_segments, 0, rows=rows)
    b.pop("example_index")
    return b


def test_a_tiny_train_with_splash_gives_the_xla_losses():
    """Three AdamW steps of the real train step (scanned layers, remat) on packed rows: splash in
    interpret mode and the xla kernel give the same losses within 1e-4 relative."""
    from rm_jax.core.config import LossConfig, TrainConfig
    from rm_jax.engine.train_step import create_state, lr_schedule, make_optimizer, make_train_step
    from rm_jax.models import init_params
    from rm_jax.models.sharding import make_mesh

    mesh = make_mesh(devices=jax.devices()[:1])
    batches = [{k: v[None] for k, v in _packed_batch(2, 64, 4, 64, s).items()} for s in range(3)]
    losses = {}
    for kernel in ("xla", "splash"):
        cfg = _tiny(attention=kernel, scan_layers=True, remat="full")
        tc = TrainConfig(lr=1e-2, warmup_steps=0)
        tx = make_optimizer(tc, 10)
        state, _ = create_state(cfg, tx, mesh, init_params(cfg, mesh, seed=0))
        step = jax.jit(make_train_step(cfg, LossConfig(), tx, 4, lr_schedule(tc, 10), mesh))
        losses[kernel] = []
        for b in batches:
            state, m = step(state, b)
            losses[kernel].append(float(m["loss"]))
    assert losses["xla"][-1] != losses["xla"][0]  # the parameters moved: later steps test the update too
    np.testing.assert_allclose(losses["splash"], losses["xla"], rtol=1e-4, atol=0)


@requires_devices(4)
def test_splash_runs_per_shard_on_a_mesh():
    """Rows over data x fsdp and heads over tensor (shard_map): the same scores as one device."""
    from rm_jax.models import apply_model, init_params
    from rm_jax.models.sharding import make_mesh

    one = make_mesh(devices=jax.devices()[:1])
    mesh = make_mesh(data=2, tensor=2, devices=jax.devices()[:4])
    cfg = _tiny(attention="splash")  # layer 0 runs the kernel on every token; the last is pooled
    params = init_params(cfg, one, seed=1)
    batch = _packed_batch(4, 48, 4, 64, seed=5)
    want = apply_model(cfg.replace(attention="xla"), params, batch, 4)
    got = apply_model(cfg, init_params(cfg, mesh, seed=1), batch, 4, mesh=mesh)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)


def _pretend_hopper(monkeypatch):
    """Let the packed call trace on CPU: stub the GPU-only checks (cuDNN version, compute capability,
    backend). Tracing then runs JAX's own argument checks and the primitive's shape rules."""
    from jax._src.cudnn import fused_attention_stablehlo as fa

    from rm_jax.models import cudnn

    monkeypatch.setattr(fa, "check_cudnn_version", lambda: 91000)
    monkeypatch.setattr(fa, "check_compute_capability", lambda cc: True)
    monkeypatch.setattr(fa, "is_cuda_compute_capability_equal", lambda cc: False)
    monkeypatch.setattr(cudnn, "check_backend", lambda *a, **k: None)
    monkeypatch.setattr(cudnn, "gpu_compute_capability", lambda: (9, 0))
    cudnn._packed_attention_fn.cache_clear()
    monkeypatch.setattr(cudnn, "_packed_attention_fn", cudnn._packed_attention_fn.__wrapped__)


@pytest.mark.parametrize("window", [None, 16])
def test_the_packed_call_passes_jaxs_own_checks(monkeypatch, window):
    """Forward and backward of the private packed call trace with our offsets/lengths: the
    signature, the [B, M+1] / [B, M] int32 layout and GQA are what this JAX accepts."""
    from rm_jax.models.cudnn import packed_attention

    _pretend_hopper(monkeypatch)
    q = jax.ShapeDtypeStruct((2, 64, 4, 16), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((2, 64, 2, 16), jnp.bfloat16)
    seg = jax.ShapeDtypeStruct((2, 64), jnp.int32)

    def f(q, k, v, s):
        return packed_attention(q, k, v, s, max_segments=3, sliding_window=window)

    assert jax.eval_shape(f, q, kv, kv, seg).shape == q.shape
    grads = jax.eval_shape(jax.grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32)), argnums=(0, 1, 2)), q, kv, kv, seg)
    assert [g.shape for g in grads] == [q.shape, kv.shape, kv.shape]


@pytest.mark.parametrize("gqa_native", [True, False])
def test_packed_attention_repeats_kv_heads_only_for_the_old_offset_rule(monkeypatch, gqa_native):
    from rm_jax.models import cudnn

    seen = {}

    def fake(q, k, v, **kw):
        seen.update(k=k.shape, kw=kw)
        return jnp.zeros_like(q)

    monkeypatch.setattr(cudnn, "check_backend", lambda *a, **k: None)
    monkeypatch.setattr(
        cudnn, "_packed_attention_fn", lambda: (fake, types.SimpleNamespace(PADDING_CAUSAL="pc"), gqa_native)
    )
    q = jnp.zeros((1, 8, 4, 8), jnp.bfloat16)
    k = jnp.zeros((1, 8, 2, 8), jnp.bfloat16)
    seg = _rows([1, 1, 1, 2, 2, 0, 0, 0])
    out = cudnn.packed_attention(q, k, k, seg, max_segments=2, sliding_window=5)
    assert seen["k"] == ((1, 8, 2, 8) if gqa_native else (1, 8, 4, 8))
    assert seen["kw"]["mask_type"] == "pc" and seen["kw"]["sliding_window_length"] == 5
    assert seen["kw"]["scale"] == 8**-0.5
    np.testing.assert_array_equal(seen["kw"]["q_offsets"], [[0, 3, 5, -1, -1]])
    np.testing.assert_array_equal(seen["kw"]["q_seqlen"], [[3, 2, 3, -1]])
    assert np.all(np.isfinite(np.asarray(out, np.float32)))
    # A row past the bound (5 runs > 2 + 2) is poisoned, not silently wrong.
    bad = cudnn.packed_attention(q, k, k, _rows([1, 2, 3, 4, 5, 0, 0, 0]), max_segments=2)
    assert np.all(np.isnan(np.asarray(bad, np.float32)))


@requires_devices(8)
def test_scanned_pooled_stack_on_a_mesh_matches_one_device():
    """The scanned stack indexes its stacked params per step; with params split over fsdp and
    tensor, scores and gradients are those of one device."""
    from rm_jax.models import RewardModel, init_params
    from rm_jax.models.sharding import activate, make_mesh

    cfg = _tiny(scan_layers=True, remat="dots_no_batch", num_hidden_layers=3)
    batch = _packed_batch(4, 48, 4, 64, seed=6)
    w = jnp.asarray(np.random.default_rng(1).standard_normal((4, 4, 5)), jnp.float32)

    def grads(mesh):
        params = init_params(cfg, mesh, seed=2)

        def loss(p):
            with activate(mesh):
                out = RewardModel(cfg).apply(
                    {"params": p}, batch["input_ids"], batch["segment_ids"], batch["positions"], max_segments=4
                )
            return jnp.sum(out * w)

        return jax.jit(jax.value_and_grad(loss))(params)

    (l1, g1) = grads(make_mesh(devices=jax.devices()[:1]))
    (l8, g8) = grads(make_mesh(data=2, fsdp=2, tensor=2, devices=jax.devices()[:8]))
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g8), jax.tree.leaves(g1)):
        np.testing.assert_allclose(
            a, b, atol=1e-5 * float(jnp.abs(b).max()), rtol=0, err_msg=jax.tree_util.keystr(path)
        )


# ---------------------------------------------------------------- the kernels' numbers in bf16 (cuDNN on a GPU)

BF16_U = 2.0**-9  # bfloat16 unit roundoff (half its eps 2^-8)


def _packed_rows(b: int, t: int, seed: int) -> np.ndarray:
    """Rows of 3-6 conversations of mixed lengths, then padding (the layout training feeds the kernels)."""
    rng = np.random.default_rng(seed)
    seg = np.zeros((b, t), np.int32)
    for r in range(b):
        n = int(rng.integers(3, 7))
        cuts = np.sort(rng.choice(np.arange(8, t - 24), n - 1, replace=False))
        bounds = [0, *cuts, t - 8 - 5 * r]
        for i in range(n):
            seg[r, bounds[i] : bounds[i + 1]] = i + 1
    return seg


@pytest.mark.parametrize(
    "kernel",
    [
        "xla",  # runs everywhere: the same check of the same bound, and of this test, on the CPU
        pytest.param("cudnn", marks=requires_gpu("cuDNN flash attention")),
        pytest.param("cudnn_dense", marks=requires_gpu("cuDNN flash attention")),
    ],
)
def test_bf16_kernels_follow_the_float32_function(kernel):
    """bf16 q/k/v (B=2, T=256, 4 q / 2 kv heads, D=64, packed rows + padding) against the float32 dense
    softmax of the same values. Output: the kernel rounds the probabilities to bf16 before the PV dot
    (<= u sum p|v| <= u max|v|) and the output to bf16 (<= u max|v|); the score dot and the softmax run in
    float32 in all three kernels: |err| <= 2u max|v| per element. Gradients: dq, dk, dv each pass a few
    bf16 roundings in series (dO V^T with bf16 dO, dS rounded to bf16, the dS K / dS^T Q / P^T dO dots,
    the result): relative L2 error <= 8u = 1.6e-2 (an H200 measured 3.9e-3 to 4.7e-3 for cuDNN and xla
    at T=2048, docs/performance.md)."""
    from rm_jax.models.attention import reference_attention

    b, t, n, kv, d = 2, 256, 4, 2, 64
    rng = np.random.default_rng(3)
    shapes = ((b, t, n, d), (b, t, kv, d), (b, t, kv, d), (b, t, n, d))
    q, k, v, g = (jnp.asarray(rng.standard_normal(s), jnp.bfloat16) for s in shapes)
    seg = jnp.asarray(_packed_rows(b, t, seed=4))
    real = (seg > 0)[:, :, None, None]  # pad tokens' outputs are the kernel's business

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.where(real, fn(q, k, v).astype(jnp.float32) * g.astype(jnp.float32), 0.0))

    ours = jax.jit(lambda q, k, v: attend(q, k, v, seg, kernel=kernel, max_segments=8))
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
    ref = lambda q, k, v: reference_attention(f32(q), f32(k), f32(v), seg)  # noqa: E731
    out = np.asarray(ours(q, k, v), np.float32)
    want = np.asarray(ref(q, k, v))
    mask = np.broadcast_to(np.asarray(real), out.shape)
    bound = 2 * BF16_U * float(jnp.abs(f32(v)).max()) + 1e-5
    err = np.abs(out - want)[mask]
    assert np.all(np.isfinite(out[mask])) and err.max() <= bound, (err.max(), bound)
    got = jax.jit(jax.grad(loss(ours), argnums=(0, 1, 2)))(q, k, v)
    exp = jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
    for name, a, e in zip("qkv", got, exp):
        a, e = np.asarray(a, np.float32), np.asarray(e)
        rel = np.linalg.norm(a - e) / np.linalg.norm(e)
        assert np.all(np.isfinite(a)) and rel <= 8 * BF16_U, (f"d{name}", rel)
