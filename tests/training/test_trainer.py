"""The Trainer without a model: a counting step function and a fake loader, so every schedule is exact."""

import numpy as np
import pytest

from rm_jax.core.errors import TrainingError
from rm_jax.training.trainer import StepInfo, Trainer


class FakeLoader:
    """Batches of 2 x 3 x 4 positions; an epoch every 4 steps; its position is the batch count."""

    def __init__(self):
        self.index, self.epoch = 0, 0

    def next_step(self, accum):
        self.index += 1
        self.epoch = self.index // 4
        seg = np.zeros((accum, 3, 4), np.int32)
        seg[:, :, : self.index % 4 + 1] = 1  # a different real-token count each step
        return {"segment_ids": seg, "example_index": np.zeros((accum, 3, 4), np.int32)}

    def get_state(self):
        return {"index": self.index, "epoch": self.epoch}


def counting_step(state, host):
    """state: the number of steps applied; loss 1/(state + 1); 'bad' in the state makes the step non-finite."""
    assert "example_index" not in host  # the trainer drops it before the step
    n = state["n"] + 1
    ok = n not in state.get("bad", ())
    m = {
        "loss": np.float32(1.0 / n) if ok else np.float32("nan"),
        "lr": np.float32(0.1 * n),
        "grad_norm": np.float32(2.0),
        "ok": np.bool_(ok),
        "real_tokens": np.int32((host["segment_ids"] > 0).sum()),
        "extra": np.float32(n),
    }
    return ({**state, "n": n} if ok else state), m


def fired(every, start, total, **kw):
    t = Trainer(counting_step, FakeLoader(), accum=2, checkpoint_dir="/ckpt")
    seen = []
    t.add_hook(lambda info: seen.append(info.step), every=every, **kw)
    t.train({"n": start}, start, total)
    return seen


@pytest.mark.parametrize(
    "every, start, total, kw, steps",
    [
        (3, 0, 10, {}, [3, 6, 9, 10]),  # every n-th step, and the final one
        (5, 0, 10, {}, [5, 10]),  # the final step is not run twice
        (0, 0, 10, {}, [10]),  # every=0: the final step only
        (1, 0, 4, {}, [1, 2, 3, 4]),
        (3, 7, 10, {}, [9, 10]),  # resumed at step 7: counted from 0, not from the resume
        (3, 4, 10, {"first": True}, [5, 6, 9, 10]),  # first=True: the session's first step too
        (4, 0, 10, {"when": lambda i: i.step == 7}, [4, 7, 8, 10]),
    ],
)
def test_hooks_fire_at_their_steps(every, start, total, kw, steps):
    assert fired(every, start, total, **kw) == steps


def test_hooks_run_in_registration_order_and_see_earlier_results():
    t = Trainer(counting_step, FakeLoader(), accum=1, checkpoint_dir="/ckpt")
    order = []

    def a(info):
        order.append(("a", info.step))
        info.results["a"] = info.step

    def b(info):
        order.append(("b", info.step, info.results.get("a")))

    def c(info):
        order.append(("c", info.step))

    t.add_hook(a, every=2)
    t.add_hook(b, every=1)
    t.add_hook(c, every=3)
    t.train({"n": 0}, 0, 4)
    assert order == [
        ("b", 1, None),
        ("a", 2),
        ("b", 2, 2),
        ("b", 3, None),  # results are per step
        ("c", 3),
        ("a", 4),
        ("b", 4, 4),
        ("c", 4),
    ]


def test_step_records_carry_the_step_and_its_metrics():
    loader = FakeLoader()
    t = Trainer(counting_step, loader, accum=2, checkpoint_dir="/ckpt")
    infos = list(t.training_steps({"n": 3}, 3, 6))
    assert [i.step for i in infos] == [4, 5, 6]
    assert [i.first for i in infos] == [True, False, False]
    assert all(i.total == 6 and i.final == (i.step == 6) for i in infos)
    for k, i in enumerate(infos, start=1):  # the loader's k-th batch
        assert i.loss == pytest.approx(1.0 / i.step) and i.lr == pytest.approx(0.1 * i.step)
        assert i.state["n"] == i.step
        assert i.tokens == 2 * 3 * 4
        assert i.real_tokens == 2 * 3 * (k % 4 + 1)
        assert i.epoch == k // 4 and i.seconds >= 0
        assert float(i.metrics["extra"]) == i.step  # every key of the step's metrics, unrenamed
        assert i.loader is loader
    assert t.train({"n": 0}, 0, 2)["n"] == 2


def test_a_non_finite_step_stops_before_its_hooks():
    t = Trainer(counting_step, FakeLoader(), accum=1, checkpoint_dir="/run/checkpoints")
    seen = []
    t.add_hook(lambda info: seen.append(info.step))
    with pytest.raises(TrainingError) as e:
        t.train({"n": 0, "bad": (3,)}, 0, 5)
    assert seen == [1, 2]
    assert "step 3" in str(e.value) and "/run/checkpoints" in str(e.value) and "loss=nan" in str(e.value)


def test_negative_every_is_refused():
    t = Trainer(counting_step, FakeLoader(), accum=1, checkpoint_dir="/ckpt")
    with pytest.raises(ValueError, match="every must be >= 0"):
        t.add_hook(lambda info: None, every=-1, name="x")


def test_step_info_final():
    info = StepInfo(3, 3, False, 0.0, 0.0, {}, 0, 0, 0.0, 0, None, None)
    assert info.final and info.results == {}
