"""Max-abs-diff of rm_jax vs transformers (torch) per family, packed and left-padded rows.
Run from the repo root: PYTHONPATH=. python scripts/parity_report.py  (needs torch, as the tests do)."""

import tempfile

import numpy as np

from rm_jax.data.packing import build_batch, plan_packed
from rm_jax.models import apply_model
from rm_jax.models.hf_io import load_hf_reward_model
from tests.helpers import FAMILIES, PAD, make_hf_model, random_conversations, torch_batch_scores, torch_scores

for fam in sorted(FAMILIES):
    d = tempfile.mkdtemp()
    tm = make_hf_model(fam, d)
    lm = load_hf_reward_model(d)
    convs = random_conversations(9, 2, 15, seed=3)
    bins = plan_packed([len(c) for c in convs], 32, 6)
    b = build_batch(convs, np.zeros((9, 5), np.float32), np.ones((9, 5), np.float32), bins, 32, 6, PAD)
    out = np.asarray(apply_model(lm.cfg, lm.params, b, 6))
    got = np.zeros((9, 5))
    for (r, s), i in np.ndenumerate(b["example_index"]):
        if i >= 0:
            got[i] = out[r, s]
    packed = np.abs(got - torch_scores(tm, convs)).max()
    b2 = build_batch(
        convs,
        np.zeros((9, 5), np.float32),
        np.ones((9, 5), np.float32),
        [[i] for i in range(9)],
        16,
        1,
        PAD,
        padding_side="left",
    )
    left = np.abs(np.asarray(apply_model(lm.cfg, lm.params, b2, 1))[:, 0] - torch_batch_scores(tm, convs, "left")).max()
    print(f"{fam}: packed max|diff| {packed:.2e}, left-padded {left:.2e}")
