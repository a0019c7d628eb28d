"""Reading samples for ``rm-jax steer label``: the sampling settings each row records (what log Q' is scored
under), and the settings it refuses, named by file, line and field. No model is loaded here; the log-probs
themselves are checked in tests/policy/test_logprob.py and end to end in tests/integration/test_steer.py."""

from __future__ import annotations

import json

import pytest

from rm_jax.core.errors import InputError
from rm_jax.steer.label import read_samples

SAMPLED = {"temperature": 0.5, "top_p": 0.8, "seed": 4, "max_new_tokens": 16}


def _row(prompt="q", **over):
    row = {"prompt": prompt, "attributes": "verbosity:1", "responses": ["a", "b"], "finished": [True, True]}
    row.update(over)
    return row


def _file(tmp_path, rows):
    p = tmp_path / "samples.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(p)


def test_settings_are_read_per_row_and_default_when_absent(tmp_path):
    got = read_samples(_file(tmp_path, [_row(sampling=SAMPLED), _row(sampling={**SAMPLED, "temperature": 1.0})]))
    assert [(s.sampling, s.recorded) for s in got] == [((0.5, 0.8), True), ((1.0, 0.8), True)]
    got = read_samples(_file(tmp_path, [_row(), _row()]))
    assert [(s.sampling, s.recorded) for s in got] == [((1.0, 1.0), False)] * 2


@pytest.mark.parametrize(
    "rows, field, needle",
    [
        ([_row(sampling=SAMPLED), _row()], "sampling", "missing, while"),
        ([_row(), _row(sampling=SAMPLED)], "sampling", "missing, while"),
        ([_row(), _row(sampling={**SAMPLED, "top_k": 50})], "sampling.top_k", "unknown setting"),
        ([_row(), _row(sampling={**SAMPLED, "temperature": 0.0})], "sampling.temperature", "greedy"),
        ([_row(), _row(sampling={**SAMPLED, "top_p": "0.8"})], "sampling.top_p", "expected a number"),
        ([_row(), _row(sampling={**SAMPLED, "top_p": 1.5})], "sampling", "cannot be a sampling distribution"),
        ([_row(), _row(sampling=[0.5, 0.8])], "sampling", "expected a mapping"),
    ],
)
def test_settings_log_q_cannot_reproduce_are_refused_by_name(tmp_path, rows, field, needle):
    path = _file(tmp_path, rows)
    with pytest.raises(InputError) as e:
        read_samples(path)
    msg = str(e.value)
    line = 1 if field == "sampling" and needle == "missing, while" and "sampling" not in rows[0] else 2
    assert msg.startswith(f"{path}: line {line}, field '{field}'") and needle in msg, msg


def test_prompt_turns_must_alternate_user_assistant_for_nemo(tmp_path):
    ok = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "c"}]
    rows = [_row(messages=ok), _row(messages=bad)]
    for r in rows:
        r.pop("prompt")
    path = _file(tmp_path, rows)
    with pytest.raises(InputError) as e:
        read_samples(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: line 2, field 'messages': turn 1 is the user's") and "alternate" in msg
    assert len(read_samples(_file(tmp_path, rows[:1]))) == 1


def test_response_ids_are_read_per_response_and_bad_ones_named_or_skipped(tmp_path):
    ids = [[5, 2], None, [7, 2]]
    got = read_samples(_file(tmp_path, [_row(responses=["a", "b", "c"], finished=[True] * 3, response_ids=ids)]))
    assert got[0].response_ids == ids and got[0].ids() == ids
    assert read_samples(_file(tmp_path, [_row()]))[0].ids() == [None, None]  # older files: the text
    bad_ids = [[5, 2], [True], [7, 2]]
    path = _file(tmp_path, [_row(responses=["a", "b", "c"], finished=[True] * 3, response_ids=bad_ids),
                            _row(response_ids=[[1]])])  # fmt: skip
    with pytest.raises(InputError) as e:
        read_samples(path)
    assert str(e.value).startswith(f"{path}: line 1, field 'response_ids[1]': item 0 is True, not a token id")
    skipped, bad = {}, []
    got = read_samples(path, skipped=skipped, bad=bad)
    assert [s.responses for s in got] == [["a", "c"]] and got[0].response_ids == [[5, 2], [7, 2]]
    assert skipped == {"bad_responses": 1, "bad_rows": 1}
    assert bad[0].startswith(f"{path}: line 1, field 'response_ids[1]'")
    assert bad[1].startswith(f"{path}: line 2, field 'response_ids': expected one list of token ids")
