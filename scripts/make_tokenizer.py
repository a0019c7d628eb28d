"""Train the bundled tokenizer: rm_jax/assets/tokenizer/ (a ~1000-token byte-level BPE).

Trained offline with `tokenizers` on the bundled sample (run scripts/make_sample_data.py first),
rendered through the Nemotron chat template so role words get their own merges. Byte-level
pre-tokenization means any text encodes (no unknown bytes) and decode(encode(text)) == text,
newlines and repeated spaces included. Special tokens, each a single id:
``<pad>`` (pad), ``<s>`` (bos), ``</s>`` (eos), ``<unk>``, ``<extra_id_0>``, ``<extra_id_1>``.
No BOS/EOS is added on encode: the chat template is the whole text the reward model reads.

    python scripts/make_tokenizer.py
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rm_jax.data.conversation import NEMOTRON_TEMPLATE, row_to_messages  # noqa: E402

DEFAULT_SAMPLE = REPO / "rm_jax" / "assets" / "sample"
DEFAULT_OUT = REPO / "rm_jax" / "assets" / "tokenizer"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<extra_id_0>", "<extra_id_1>"]
_SPECIAL_SPLIT = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
ROUND_TRIP_TEXTS = [
    "What is 3 + 4?\n\nThe answer is 7.",
    "  two  spaces, a\ttab and trailing newline\n",
    "unicode: café, naïve, 東京, emoji 🙂",
    "<extra_id_0>System\n\n<extra_id_1>User\nhi\n<extra_id_1>Assistant\nhello\n",
]


def training_texts(sample_dir: Path) -> Iterator[str]:
    """Sample conversations rendered with the Nemotron template, cut at the special tokens
    (those are added whole, so BPE should not spend merges on their pieces)."""
    import jinja2

    from rm_jax.data.sources import load_helpsteer

    template = jinja2.Environment().from_string(NEMOTRON_TEMPLATE)
    for split in ("train", "validation"):
        for row in load_helpsteer(str(sample_dir), split=split).rows:
            text = template.render(messages=row_to_messages(row), add_generation_prompt=False)
            yield from (piece for piece in _SPECIAL_SPLIT.split(text) if piece)


def build_tokenizer(texts: Iterator[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<extra_id_0>", "<extra_id_1>"],
        model_max_length=1024,
        padding_side="right",
        clean_up_tokenization_spaces=False,  # cleanup would eat spaces before "."
    )
    fast.chat_template = NEMOTRON_TEMPLATE
    return fast


def save(tokenizer, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        (out_dir / stale).unlink(missing_ok=True)
    # Chat template inline in tokenizer_config.json (not chat_template.jinja), as the brief
    # and transformers 4.x expect.
    tokenizer.save_pretrained(str(out_dir), save_jinja_files=False)
    # transformers 5 writes tokenizer_class "TokenizersBackend" and no special_tokens_map.json;
    # transformers 4.x (allowed by pyproject) needs the older names to load the folder.
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["additional_special_tokens"] = ["<extra_id_0>", "<extra_id_1>"]
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    special_map = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "additional_special_tokens": ["<extra_id_0>", "<extra_id_1>"],
    }
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")


def verify(out_dir: Path) -> None:
    """Reload as users will (AutoTokenizer, offline) and check the properties the code relies on."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out_dir), local_files_only=True)
    for t in SPECIAL_TOKENS:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] == tok.convert_tokens_to_ids(t), f"{t} is not one token: {ids}"
    assert tok.pad_token == "<pad>" and tok.bos_token == "<s>" and tok.eos_token == "</s>"
    for text in ROUND_TRIP_TEXTS:
        back = tok.decode(tok(text, add_special_tokens=False)["input_ids"])
        assert back == text, f"round trip changed {text!r} into {back!r}"
    msgs = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4\n\nDone."}]
    out = tok.apply_chat_template(msgs, tokenize=True)
    ids = out["input_ids"] if not isinstance(out, list) else out
    rendered = tok.apply_chat_template(msgs, tokenize=False)
    assert ids == tok(rendered, add_special_tokens=False)["input_ids"], (
        "chat template ids differ from encoding the text"
    )
    print(f"ok: vocab {len(tok)}, template renders {rendered!r} -> {len(ids)} tokens")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sample-dir", type=Path, default=DEFAULT_SAMPLE)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--vocab-size", type=int, default=1000)
    args = ap.parse_args(argv)
    if not (args.sample_dir / "train.jsonl.gz").exists():
        print(f"no sample in {args.sample_dir}: run scripts/make_sample_data.py first", file=sys.stderr)
        return 1
    save(build_tokenizer(training_texts(args.sample_dir), args.vocab_size), args.out)
    print(f"wrote {args.out}")
    verify(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
