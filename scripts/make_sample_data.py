"""Write the bundled HelpSteer2-format sample: rm_jax/assets/sample/{train,validation}.jsonl.gz.

A synthetic stand-in for nvidia/HelpSteer2 that is small enough to ship and to train a tiny
transformer on two CPU cores, yet has labels that depend on the text in documented ways
(docs/data.md, "The bundled sample"):

* prompts are small arithmetic or lookup questions; ~28% are multi-turn, joined with the
  dataset's ``\\n<extra_id_1>Assistant\\n`` / ``\\n<extra_id_1>User\\n`` separators;
* each prompt has two responses on consecutive rows (the HelpSteer2 pair layout);
* correctness: right answer 4 (3 if hedged), wrong answer 0 (1 if hedged), refusal 2, off-topic 1;
* helpfulness: right answer 4 (3 if hedged), wrong answer 1, refusal 1, off-topic 0;
  minus 1 when the response has two or more garbled segments;
* coherence: 4 minus the number of garbled (shuffled words + nonsense tokens) segments;
* complexity: number of "advanced" sentences (jargon), plus 1 unless it is a refusal;
* verbosity: response word count in bins (<=10, <=18, <=28, <=40, more) -> 0..4;
* then each label moves by +-1 (clipped to 0..4) with a small probability (label noise).

Deterministic from ``--seed``. ``--check`` reloads the files through ``load_helpsteer``, prints
the Table 2 statistics, and fits a bag-of-words + length ridge regression on train: it fails
unless validation Pearson on verbosity (the easy attribute) is >= 0.9.

    python scripts/make_sample_data.py --check
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import random
import re
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rm_jax.core.attributes import ATTRIBUTES  # noqa: E402

DEFAULT_OUT = REPO / "rm_jax" / "assets" / "sample"
MULTI_TURN_FRACTION = 0.28
NOISE = {"helpfulness": 0.06, "correctness": 0.06, "coherence": 0.08, "complexity": 0.08, "verbosity": 0.04}
VERBOSITY_BINS = (10, 18, 28, 40)  # upper word-count bounds of verbosity 0..3; above -> 4
EASY_ATTRIBUTE, EASY_MIN_PEARSON = "verbosity", 0.9

# ----------------------------------------------------------------------------- questions

CAPITALS = {
    "France": "Paris",
    "Japan": "Tokyo",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Egypt": "Cairo",
    "Canada": "Ottawa",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Norway": "Oslo",
    "Greece": "Athens",
    "Germany": "Berlin",
    "Cuba": "Havana",
    "Chile": "Santiago",
    "Poland": "Warsaw",
}
LEGS = {"spider": 8, "dog": 4, "bird": 2, "ant": 6, "horse": 4, "beetle": 6, "duck": 2, "crab": 10}
COLORS = {
    "the sky": "blue",
    "grass": "green",
    "snow": "white",
    "a banana": "yellow",
    "coal": "black",
    "a ripe tomato": "red",
    "an orange": "orange",
}
OPPOSITES = {
    "hot": "cold",
    "up": "down",
    "big": "small",
    "fast": "slow",
    "early": "late",
    "light": "dark",
    "open": "closed",
    "happy": "sad",
}
UNITS = [
    ("days", "a week", 7),
    ("hours", "a day", 24),
    ("minutes", "an hour", 60),
    ("months", "a year", 12),
    ("seconds", "a minute", 60),
    ("weeks", "a year", 52),
    ("sides", "a triangle", 3),
    ("sides", "a square", 4),
]
OPS = {"+": ("plus", lambda a, b: a + b), "-": ("minus", lambda a, b: a - b), "*": ("times", lambda a, b: a * b)}


def _wrong_number(rng: random.Random, right: int) -> int:
    return max(0, right + rng.choice([-3, -2, -1, 1, 2, 3])) if right > 3 else right + rng.choice([1, 2, 3])


def _wrong_choice(rng: random.Random, pool, right):
    return rng.choice([v for v in pool if v != right])


def make_question(rng: random.Random) -> tuple[str, str, str]:
    """(question, statement with the right answer, statement with a wrong answer)."""
    kind = rng.choices(["arith", "capital", "legs", "color", "opposite", "unit"], [4, 2, 1, 1, 1, 1])[0]
    if kind == "arith":
        op = rng.choice(list(OPS))
        a, b = rng.randint(2, 15), rng.randint(2, 15)
        if op == "-" and b > a:
            a, b = b, a
        word, fn = OPS[op]
        q = rng.choice(
            [
                f"What is {a} {word} {b}?",
                f"Compute {a} {op} {b}.",
                f"What is {a} {op} {b}?",
                f"Can you work out {a} {word} {b}?",
            ]
        )
        right = fn(a, b)
        say = rng.choice(["{a} {w} {b} equals {x}.", "The answer is {x}.", "{a} {o} {b} = {x}."])
        return (
            q,
            say.format(a=a, w=word, b=b, o=op, x=right),
            say.format(a=a, w=word, b=b, o=op, x=_wrong_number(rng, right)),
        )
    if kind == "capital":
        country = rng.choice(list(CAPITALS))
        q = rng.choice(
            [
                f"What is the capital of {country}?",
                f"Which city is the capital of {country}?",
                f"Name the capital city of {country}.",
            ]
        )
        right, wrong = CAPITALS[country], _wrong_choice(rng, CAPITALS.values(), CAPITALS[country])
        return q, f"The capital of {country} is {right}.", f"The capital of {country} is {wrong}."
    if kind == "legs":
        animal = rng.choice(list(LEGS))
        q = rng.choice([f"How many legs does a {animal} have?", f"How many legs has a {animal} got?"])
        return (
            q,
            f"A {animal} has {LEGS[animal]} legs.",
            f"A {animal} has {_wrong_choice(rng, range(0, 11, 2), LEGS[animal])} legs.",
        )
    if kind == "color":
        thing = rng.choice(list(COLORS))
        q = rng.choice([f"What color is {thing}?", f"What is the usual color of {thing}?"])
        cap = thing[0].upper() + thing[1:]
        return q, f"{cap} is {COLORS[thing]}.", f"{cap} is {_wrong_choice(rng, COLORS.values(), COLORS[thing])}."
    if kind == "opposite":
        w = rng.choice(list(OPPOSITES))
        q = rng.choice([f"What is the opposite of {w}?", f"Give me the opposite of the word {w}."])
        return (
            q,
            f"The opposite of {w} is {OPPOSITES[w]}.",
            f"The opposite of {w} is {_wrong_choice(rng, OPPOSITES.values(), OPPOSITES[w])}.",
        )
    unit, span, n = rng.choice(UNITS)
    q = rng.choice([f"How many {unit} are in {span}?", f"How many {unit} does {span} have?"])
    return q, f"There are {n} {unit} in {span}.", f"There are {_wrong_number(rng, n)} {unit} in {span}."


OPENERS = [
    "",
    "",
    "",
    "Hi! ",
    "Quick question: ",
    "Please tell me: ",
    "I have a homework question. ",
    "My friend asked me this. ",
    "Help me out here. ",
]


def make_prompt(rng: random.Random, multi_turn: bool) -> tuple[str, tuple[str, str]]:
    """A prompt string and the (right, wrong) statements for its last question."""
    question, right, wrong = make_question(rng)
    if not multi_turn:
        return rng.choice(OPENERS) + question, (right, wrong)
    parts = []
    for _ in range(rng.choices([1, 2], [3, 1])[0]):  # earlier exchanges, answered correctly
        q0, a0, _ = make_question(rng)
        parts += [q0, "\n<extra_id_1>Assistant\n", a0, "\n<extra_id_1>User\n"]
    follow = rng.choice(["{q}", "Thanks. {q}", "Great. Next one: {q}", "OK, and another: {q}"])
    return "".join(parts) + follow.format(q=question), (right, wrong)


# ----------------------------------------------------------------------------- responses

FILLERS = [
    "I hope this helps.",
    "Let me know if you have other questions.",
    "This is a common question.",
    "Many people ask about this.",
    "You can find this in most reference books.",
    "It is good to check facts like this.",
    "Feel free to ask a follow-up question.",
    "Thank you for asking.",
    "This comes up often in school.",
    "Here is a short note on it.",
]
ADVANCED = [
    "Formally, the result follows from the axioms of arithmetic.",
    "Epistemologically, such facts rest on shared conventions.",
    "Notwithstanding edge cases, the derivation is rigorous.",
    "Consequently, the claim is invariant under reformulation.",
    "Analogously, a homomorphism preserves this structure.",
    "Historically, the nomenclature derives from Latin etymology.",
    "Empirically, this is corroborated by independent sources.",
    "Theoretically, the mapping is bijective and well defined.",
]
NONSENSE = ["zorp", "blim", "quax", "frell", "vunt", "skree"]
REFUSALS = [
    "I'm sorry, but I can't help with that request.",
    "Sorry, I am unable to answer that.",
    "I cannot assist with this question.",
    "Unfortunately, I won't be able to help with that.",
]
OFF_TOPIC = [
    "Let me tell you about my favourite recipe instead.",
    "By the way, the weather is lovely today.",
    "I would rather talk about football.",
    "Have you ever tried painting landscapes?",
]
HEDGES = [
    "I think {s}, but I am not sure.",
    "Probably {s}, though I might be wrong.",
    "I believe {s}, but please double check.",
]


def _hedge(rng: random.Random, statement: str) -> str:
    s = statement.rstrip(".")  # every statement starts with a common word or a digit
    s = s[0].lower() + s[1:]
    return rng.choice(HEDGES).format(s=s)


def _garble(rng: random.Random) -> str:
    words = re.sub(r"[^\w\s']", "", rng.choice(FILLERS + ADVANCED)).lower().split()
    words += rng.sample(NONSENSE, rng.randint(1, 2))
    rng.shuffle(words)
    return " ".join(words)


def verbosity_of(response: str) -> int:
    n = len(response.split())
    return next((v for v, bound in enumerate(VERBOSITY_BINS) if n <= bound), len(VERBOSITY_BINS))


def make_response(rng: random.Random, right: str, wrong: str) -> tuple[str, dict[str, int]]:
    kind = rng.choices(["answer", "refusal", "off_topic"], [0.85, 0.08, 0.07])[0]
    n_adv = 0 if kind == "refusal" else rng.choices([0, 1, 2, 3], [0.45, 0.35, 0.15, 0.05])[0]
    n_fill = rng.choices([0, 1, 2, 3, 4], [0.25, 0.3, 0.25, 0.15, 0.05])[0]
    n_garbled = rng.choices([0, 1, 2, 3], [0.72, 0.16, 0.08, 0.04])[0]
    if kind == "answer":
        correct, hedged = rng.random() < 0.8, rng.random() < 0.25
        main = right if correct else wrong
        main = _hedge(rng, main) if hedged else main
        correctness = (3 if hedged else 4) if correct else (1 if hedged else 0)
        helpfulness = (3 if hedged else 4) if correct else 1
    elif kind == "refusal":
        main, correctness, helpfulness = rng.choice(REFUSALS), 2, 1
    else:
        main, correctness, helpfulness = rng.choice(OFF_TOPIC), 1, 0
    extras = rng.sample(FILLERS, n_fill) + rng.sample(ADVANCED, n_adv)
    rng.shuffle(extras)
    for _ in range(n_garbled):
        extras.insert(rng.randint(0, len(extras)), _garble(rng))
    # The answer (or refusal) always comes first; a few responses are laid out on lines.
    response = ("\n" if rng.random() < 0.2 else " ").join([main] + extras)
    labels = {
        "helpfulness": max(0, helpfulness - (1 if n_garbled >= 2 else 0)),
        "correctness": correctness,
        "coherence": 4 - n_garbled,
        "complexity": min(4, n_adv + (0 if kind == "refusal" else 1)),
        "verbosity": verbosity_of(response),
    }
    for name, p in NOISE.items():
        if rng.random() < p:
            labels[name] = min(4, max(0, labels[name] + rng.choice([-1, 1])))
    return response, labels


def make_rows(n_prompts: int, rng: random.Random) -> list[dict]:
    rows: list[dict] = []
    seen: set[str] = set()
    for _ in range(n_prompts):
        # Unique prompts, as in HelpSteer2; equal neighbours would also merge two pairs into
        # one group. Lookup facts still repeat inside different prompts, which keeps them learnable.
        # Turn count is drawn first so that retries do not favour (more varied) multi-turn prompts.
        multi_turn = rng.random() < MULTI_TURN_FRACTION
        for _attempt in range(100):
            prompt, (right, wrong) = make_prompt(rng, multi_turn)
            if prompt not in seen:
                break
        else:
            raise RuntimeError("make_rows: ran out of distinct prompts; add questions or lower --*-prompts")
        seen.add(prompt)
        for _ in range(2):
            response, labels = make_response(rng, right, wrong)
            rows.append({"prompt": prompt, "response": response, **{a: labels[a] for a in ATTRIBUTES}})
    return rows


def write_jsonl_gz(rows: list[dict], path: Path) -> None:
    buf = io.BytesIO()
    # mtime=0 and no file name in the header: the same rows give the same bytes.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        for row in rows:
            gz.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


# ----------------------------------------------------------------------------- --check


def _features(rows: list[dict], vocab: dict[str, int] | None = None):
    tokenize = lambda s: re.findall(r"\w+|[^\w\s]", s.lower())  # noqa: E731
    docs = [(tokenize(r["prompt"]), tokenize(r["response"])) for r in rows]
    if vocab is None:
        counts: dict[str, int] = {}
        for p, t in docs:
            for w in [f"p:{w}" for w in p] + [f"r:{w}" for w in t]:
                counts[w] = counts.get(w, 0) + 1
        vocab = {w: i for i, w in enumerate(sorted(w for w, c in counts.items() if c >= 3))}
    x = np.zeros((len(rows), len(vocab) + 3))
    for i, ((p, t), r) in enumerate(zip(docs, rows)):
        for w in [f"p:{w}" for w in p] + [f"r:{w}" for w in t]:
            if w in vocab:
                x[i, vocab[w]] += 1
        n_words = len(r["response"].split())
        x[i, -3:] = (n_words, np.log1p(n_words), len(r["response"]) / 100)
    return x, vocab


def ridge_pearsons(train: list[dict], valid: list[dict], alpha: float = 10.0) -> dict[str, float]:
    """Validation Pearson per attribute of a bag-of-words + length ridge regression fitted on train."""
    from scipy.stats import pearsonr

    xt, vocab = _features(train)
    xv, _ = _features(valid, vocab)
    mu, sd = xt.mean(0), xt.std(0) + 1e-8
    xt, xv = (xt - mu) / sd, (xv - mu) / sd
    out = {}
    for name in ATTRIBUTES:
        y = np.asarray([r[name] for r in train], dtype=np.float64)
        w = np.linalg.solve(xt.T @ xt + alpha * np.eye(xt.shape[1]), xt.T @ (y - y.mean()))
        pred = xv @ w + y.mean()
        out[name] = float(pearsonr(pred, [r[name] for r in valid]).statistic)
    return out


def check(out_dir: Path) -> bool:
    from rm_jax.data.conversation import count_turns, row_to_messages
    from rm_jax.data.sources import load_helpsteer, pair_ids
    from rm_jax.data.stats import format_stats_table, helpsteer_stats, token_length_stats

    files = [out_dir / "train.jsonl.gz", out_dir / "validation.jsonl.gz"]
    total = sum(f.stat().st_size for f in files)
    print(
        "sizes: "
        + ", ".join(f"{f.name} {f.stat().st_size / 1024:.1f} KiB" for f in files)
        + f"; total {total / 1024:.1f} KiB"
    )
    train = load_helpsteer(str(out_dir), split="train").rows
    valid = load_helpsteer(str(out_dir), split="validation").rows
    ok = total < 1_000_000
    for split, rows in (("train", train), ("validation", valid)):
        ids = pair_ids(rows)
        multi = np.mean([count_turns(r["prompt"]) > 1 for r in rows])
        pairs_ok = len(set(ids)) * 2 == len(rows) and all(ids[i] == i // 2 for i in range(len(ids)))
        ok &= pairs_ok
        print(f"\n{split}: {len(rows)} rows, {len(set(ids))} pairs (layout ok: {pairs_ok}), multi-turn {multi:.1%}")
        print(format_stats_table(helpsteer_stats(rows)))
    tok_dir = REPO / "rm_jax" / "assets" / "tokenizer"
    if (tok_dir / "tokenizer.json").exists():
        from transformers import AutoTokenizer

        from rm_jax.data.conversation import encode

        tok = AutoTokenizer.from_pretrained(str(tok_dir))
        lengths = [len(x) for x in encode(tok, [row_to_messages(r) for r in train])]
        s = token_length_stats(lengths)
        print(
            "\ntokens per conversation (bundled tokenizer, train): " + ", ".join(f"{k} {v:.1f}" for k, v in s.items())
        )
    print("\nbag-of-words + length ridge, validation Pearson:")
    rs = ridge_pearsons(train, valid)
    for name, r in rs.items():
        print(f"  {name:12s} {r:.3f}")
    easy_ok = rs[EASY_ATTRIBUTE] >= EASY_MIN_PEARSON
    print(f"{EASY_ATTRIBUTE} >= {EASY_MIN_PEARSON}: {easy_ok}; size < 1 MB: {total < 1_000_000}")
    return bool(ok and easy_ok)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-prompts", type=int, default=1500)
    ap.add_argument("--validation-prompts", type=int, default=200)
    ap.add_argument("--check", action="store_true", help="reload, print statistics, run the ridge check")
    args = ap.parse_args(argv)
    # Separate streams so changing one split's size leaves the other split's rows unchanged.
    write_jsonl_gz(make_rows(args.train_prompts, random.Random(f"{args.seed}-train")), args.out / "train.jsonl.gz")
    write_jsonl_gz(
        make_rows(args.validation_prompts, random.Random(f"{args.seed}-validation")), args.out / "validation.jsonl.gz"
    )
    print(f"wrote {args.out}/train.jsonl.gz and validation.jsonl.gz")
    if args.check:
        return 0 if check(args.out) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
