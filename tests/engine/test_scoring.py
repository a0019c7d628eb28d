"""`rm-jax score`: transformers parity on chat-templated ids, row order, bad input."""

import json
import os

import numpy as np
import pytest

from rm_jax.cli import main
from rm_jax.core.attributes import REWARD_PRESETS
from rm_jax.data.conversation import row_to_messages
from tests.helpers import make_hf_rm_with_tokenizer

ROWS = [
    {"prompt": "What is 2 plus 2?", "response": "2 plus 2 equals 4."},
    {
        "prompt": "Hi\n<extra_id_1>Assistant\nHello! How can I help?\n<extra_id_1>User\nName a red fruit.",
        "response": "An apple is a red fruit.",
    },
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello there"},
        ]
    },
    {"prompt": "Tell me a long story. " * 30, "response": "Once upon a time " * 40, "id": 7},
]


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("rm"))
    model, tok = make_hf_rm_with_tokenizer("qwen2", d)
    return d, model, tok


def _write(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


def test_score_matches_transformers(rm_dir, tmp_path):
    import torch
    from transformers import AutoTokenizer

    d, model, _ = rm_dir
    tok = AutoTokenizer.from_pretrained(d)  # as a transformers user loads it (Qwen2 picks its own class)
    _write(tmp_path / "in.jsonl", ROWS)
    assert (
        main(
            [
                "score",
                "--model",
                d,
                "--input",
                str(tmp_path / "in.jsonl"),
                "--output",
                str(tmp_path / "out.jsonl"),
                "--weights",
                "340b-rewardbench",
                "--batch-rows",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    out = [json.loads(x) for x in open(tmp_path / "out.jsonl")]
    assert len(out) == len(ROWS)
    w = np.asarray(REWARD_PRESETS["340b-rewardbench"])
    for row, o in zip(ROWS, out):
        assert {k: v for k, v in o.items() if k not in ("attributes", "reward")} == row  # order and fields kept
        ids = tok.apply_chat_template(row_to_messages(row), tokenize=True, return_dict=False)
        with torch.no_grad():
            want = model(input_ids=torch.tensor([ids])).logits[0].numpy()
        got = np.asarray(list(o["attributes"].values()))
        assert list(o["attributes"]) == ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert o["reward"] == pytest.approx(float(got @ w), abs=1e-6)


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"prompt": "a", "response": "b"}', '{"prompt": "a", "response": '], "line 2: invalid JSON"),
        (
            ['{"prompt": "a", "response": "b"}', '{"text": "no conversation"}'],
            "line 2: needs either 'prompt' and 'response', or 'messages'",
        ),
        (["[1, 2]"], "line 1: expected a JSON object"),
        (['{"messages": [{"role": "user", "content": "hi"}]}'], "line 1: the last message must be the assistant's"),
    ],
)
def test_bad_input_names_file_and_line_and_writes_nothing(rm_dir, tmp_path, capsys, lines, message):
    d, _, _ = rm_dir
    _write(tmp_path / "bad.jsonl", lines)
    out = tmp_path / "out.jsonl"
    out.write_text("previous results\n")
    assert main(["score", "--model", d, "--input", str(tmp_path / "bad.jsonl"), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "bad.jsonl") in err and message in err
    assert out.read_text() == "previous results\n"
    assert not os.path.exists(str(out) + ".tmp")


def test_bad_model_and_weights(rm_dir, tmp_path, capsys):
    d, _, _ = rm_dir
    _write(tmp_path / "in.jsonl", ROWS[:1])
    assert (
        main(
            [
                "score",
                "--model",
                str(tmp_path / "nope"),
                "--input",
                str(tmp_path / "in.jsonl"),
                "--output",
                str(tmp_path / "o.jsonl"),
            ]
        )
        == 1
    )
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "gpt2"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "gpt2"}')
    assert (
        main(
            ["score", "--model", str(bad), "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o.jsonl")]
        )
        == 1
    )
    assert "unsupported model_type 'gpt2'" in capsys.readouterr().err
    assert (
        main(
            [
                "score",
                "--model",
                d,
                "--input",
                str(tmp_path / "in.jsonl"),
                "--output",
                str(tmp_path / "o.jsonl"),
                "--weights",
                "1,2,3",
            ]
        )
        == 1
    )
    assert "expected 5" in capsys.readouterr().err
    assert (
        main(
            [
                "score",
                "--model",
                str(tmp_path / "nope"),
                "--input",
                str(tmp_path / "in.jsonl"),
                "--output",
                str(tmp_path / "o.jsonl"),
                "--weights",
                "bogus",
            ]
        )
        == 1
    )
    assert "unknown reward-weight preset 'bogus'" in capsys.readouterr().err
    assert (
        main(
            [
                "score",
                "--model",
                d,
                "--input",
                str(tmp_path / "in.jsonl"),
                "--output",
                str(tmp_path / "o.jsonl"),
                "--seq-len",
                "8",
            ]
        )
        == 1
    )
    assert "in.jsonl: row 1:" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o.jsonl")


def test_w_json_is_matched_to_reordered_attributes_by_name(rm_dir, tmp_path, capsys):
    """A model whose attributes are not in HelpSteer2's order, scored with a W.json naming only helpfulness:
    the reward is its helpfulness output; a W.json naming an attribute it lacks exits 1 with one line."""
    import shutil

    d = str(tmp_path / "reordered")
    shutil.copytree(rm_dir[0], d)
    reordered = ["correctness", "helpfulness", "coherence", "complexity", "verbosity"]
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg["id2label"] = {str(i): a for i, a in enumerate(reordered)}
    cfg["label2id"] = {a: i for i, a in enumerate(reordered)}
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    _write(tmp_path / "in.jsonl", ROWS[:2])
    (tmp_path / "W.json").write_text(json.dumps({"weights": {"helpfulness": 1.0}}))
    argv = ["score", "--model", d, "--input", str(tmp_path / "in.jsonl"), "--no-progress"]
    assert main(argv + ["--output", str(tmp_path / "out.jsonl"), "--weights", str(tmp_path / "W.json")]) == 0
    assert "do not name correctness, coherence, complexity, verbosity: weight 0" in capsys.readouterr().err
    for o in map(json.loads, open(tmp_path / "out.jsonl")):
        assert list(o["attributes"]) == reordered
        assert o["reward"] == pytest.approx(o["attributes"]["helpfulness"], abs=1e-6)
        assert abs(o["attributes"]["helpfulness"] - o["attributes"]["correctness"]) > 1e-3  # the test can tell
    (tmp_path / "W2.json").write_text(json.dumps({"weights": {"helpfulness": 1.0, "safety": 0.5}}))
    assert main(argv + ["--output", str(tmp_path / "o2.jsonl"), "--weights", str(tmp_path / "W2.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert "name safety, which the model does not predict" in err and len(err.splitlines()) == 1, err
    assert not os.path.exists(tmp_path / "o2.jsonl")


# ---------------------------------------------------------------- shared prompts (rm_jax.data.prefix_sharing)


def _shared_groups(seed: int, n_groups: int = 5) -> tuple[list[np.ndarray], list[int]]:
    """Groups of 1-4 responses after a 12-40 token prompt (so a group spans several 8-token blocks and
    Mistral's 7-token window), in interleaved order, plus a plain conversation of its own."""
    from tests.helpers import VOCAB

    rng = np.random.default_rng(seed)
    ids, groups = [], []
    for g in range(n_groups):
        prompt = rng.integers(1, VOCAB, int(rng.integers(12, 40)))
        for _ in range(int(rng.integers(1, 5))):
            ids.append(np.concatenate([prompt, rng.integers(1, VOCAB, int(rng.integers(1, 15)))]).astype(np.int32))
            groups.append(g)
    order = rng.permutation(len(ids))
    return [ids[i] for i in order], [groups[i] for i in order]


def _tiny_rm(family: str, **run):
    import jax

    from rm_jax.models.hf_io import decoder_config_from_hf
    from rm_jax.models.llama import RewardModel
    from tests.helpers import FAMILIES, VOCAB

    # A large init scale makes attention sharp, so a key seen or missed moves the scores visibly.
    hf = dict(FAMILIES[family], vocab_size=VOCAB, num_labels=5, initializer_range=0.5)
    cfg = decoder_config_from_hf(hf, dtype="float32", attention="xla", attention_block=8, **run)
    ids = np.ones((1, 16), np.int32)
    params = RewardModel(cfg).init(jax.random.key(0), ids, ids, ids, 1)["params"]
    return cfg, params


@pytest.mark.parametrize(
    "family,run",
    [("llama", {}), ("mistral", {}), ("qwen2", {"scan_layers": True}), ("qwen3", {})],
)
def test_shared_prompts_score_like_unshared(family, run):
    """Float32 scores of the shared layout equal the unshared ones within 1e-5 (GQA, sliding window, Qwen3's
    head_dim, a scanned stack), and the shared layout lays out fewer tokens."""
    from rm_jax.engine.scoring import Scorer

    cfg, params = _tiny_rm(family, **run)
    ids, groups = _shared_groups(1)
    scorer = Scorer(cfg, params)
    plain = scorer.predict(ids, 128, rows=4, max_segments=6, progress=False, groups=groups, share=False)
    assert scorer.share_report is None
    shared = scorer.predict(ids, 128, rows=4, max_segments=6, progress=False, groups=groups, share=True)
    rep = scorer.share_report
    assert rep.shared_groups >= 3 and rep.prompt_tokens_saved > 100, rep.as_dict()
    assert np.abs(plain).max() > 0.1  # scores that a wrong mask would move
    np.testing.assert_allclose(shared, plain, rtol=0, atol=1e-5 * max(1.0, float(np.abs(plain).max())))


def test_shared_groups_split_over_rows_score_the_same():
    """A group longer than seq_len (or with more responses than max_segments) is split with its prompt
    repeated, counted, and still scores as unshared."""
    from rm_jax.engine.scoring import Scorer

    cfg, params = _tiny_rm("mistral")
    rng = np.random.default_rng(3)
    prompt = rng.integers(1, 97, 30)
    ids = [np.concatenate([prompt, rng.integers(1, 97, 10)]).astype(np.int32) for _ in range(7)]
    scorer = Scorer(cfg, params)
    plain = scorer.predict(ids, 64, rows=2, max_segments=3, progress=False)
    shared = scorer.predict(ids, 64, rows=2, max_segments=3, progress=False, groups=[0] * 7, share=True)
    rep = scorer.share_report
    assert (rep.split_groups, rep.repeated_prompts) == (1, 2)  # 3 + 3 + 1 responses: two more prompt copies
    assert rep.tokens == 3 * 30 + 70
    np.testing.assert_allclose(shared, plain, rtol=0, atol=1e-5 * max(1.0, float(np.abs(plain).max())))


def test_score_share_prompts_flag(rm_dir, tmp_path):
    """`rm-jax score --share-prompts`: rows with one conversation before their last message share its tokens,
    and every row's attributes equal `--no-share-prompts` within 1e-5."""
    d, _, _ = rm_dir
    long_prompt = "Explain the water cycle in detail, step by step. " * 12
    rows = [{"prompt": long_prompt, "response": r} for r in ("Evaporation first.", "Rain falls.", "Clouds form.")]
    rows += [ROWS[0], {"prompt": ROWS[0]["prompt"], "response": "It is 4."}]
    _write(tmp_path / "in.jsonl", rows)
    got = {}
    for flag in ("--share-prompts", "--no-share-prompts"):
        out = tmp_path / f"{flag}.jsonl"
        argv = ["score", "--model", d, "--input", str(tmp_path / "in.jsonl"), "--output", str(out), flag]
        assert main(argv + ["--no-progress"]) == 0
        got[flag] = np.array([list(json.loads(line)["attributes"].values()) for line in open(out)])
    np.testing.assert_allclose(got["--share-prompts"], got["--no-share-prompts"], atol=1e-5, rtol=0)
    assert np.abs(got["--no-share-prompts"]).max() > 1e-3


def test_cpu_passes_hold_at_most_the_token_budget_and_score_the_same(monkeypatch):
    """On a CPU a pass holds <= CPU_TOKENS_PER_PASS token slots whatever --batch-rows asks (16 rows of 1,344
    tokens ran at half the tokens/s of one row); the scores are those of the uncapped batches."""
    import jax

    from rm_jax.engine import scoring
    from rm_jax.models import init_params
    from rm_jax.models.llama import DecoderConfig
    from rm_jax.models.sharding import make_mesh
    from tests.helpers import random_conversations

    assert scoring.rows_per_pass(16, 1344, "cpu") == 1
    assert scoring.rows_per_pass(16, 512, "cpu") == scoring.CPU_TOKENS_PER_PASS // 512
    assert scoring.rows_per_pass(2, 512, "cpu") == 2
    assert scoring.rows_per_pass(16, 8192, "cpu") == 1  # one row longer than the budget still runs
    assert scoring.rows_per_pass(16, 1344, "gpu") == 16  # accelerators take the rows asked for
    cfg = DecoderConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=1024, num_labels=3,
    )  # fmt: skip
    mesh = make_mesh(devices=jax.devices()[:1])
    params = init_params(cfg, mesh, 0)
    convs = random_conversations(12, 100, 500, seed=3)
    rows_seen = []
    real_build = scoring.build_batch

    def build(*args, **kw):
        rows_seen.append(kw["rows"])
        return real_build(*args, **kw)

    monkeypatch.setattr(scoring, "build_batch", build)
    monkeypatch.setattr(scoring, "CPU_TOKENS_PER_PASS", 1024)
    capped = scoring.Scorer(cfg, params, mesh).predict(convs, 512, rows=16, max_segments=2, progress=False)
    assert rows_seen and max(rows_seen) * 512 <= 1024
    rows_seen.clear()
    monkeypatch.setattr(scoring, "rows_per_pass", lambda rows, seq_len, backend=None: rows)
    full = scoring.Scorer(cfg, params, mesh).predict(convs, 512, rows=16, max_segments=2, progress=False)
    assert max(rows_seen) > 2  # the uncapped run really had bigger passes
    np.testing.assert_allclose(capped, full, atol=1e-5)
