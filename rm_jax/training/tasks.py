"""What a run trains, as an object: regression (``rm``), preference ``pairs``, ``sft`` and ``steerlm2``.

A :class:`Task` knows how its splits are read and encoded, the loss config its step gets, how the step's
metrics dict becomes a metrics.jsonl record, how its validation split is scored, and how that is
summarised on stderr. :func:`task_for` picks one from the config; the loop (:mod:`rm_jax.training.loop`)
holds a task and never looks at task names or metric keys itself.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar, Optional

import numpy as np

from rm_jax.core.attributes import eval_weightings, resolve_reward_weights
from rm_jax.core.config import PAIR_KINDS, LossConfig, RunConfig
from rm_jax.data.helpsteer3_pairs import load_helpsteer3
from rm_jax.data.pipeline import (
    Encoded,
    Loader,
    encode_helpsteer,
    encode_pairs,
    prompt_pair_units,
    resolve_source,
    subset_prompts,
)
from rm_jax.data.sft import encode_sft
from rm_jax.data.sources import LoadResult, load_chat, load_helpsteer, load_pairs
from rm_jax.data.steer_groups import encode_groups, load_groups, unequal_sizes
from rm_jax.engine.losses import pair_sums
from rm_jax.engine.train_step import step_inputs
from rm_jax.evaluation.metrics import helpsteer_report, level_cross_entropy
from rm_jax.training.logs import logger
from rm_jax.training.validators import LossSums, ModelParts, RewardPredictions, Validator

# Keys of the step's metrics dict the loop reads itself (the record's first fields, the token counts, the
# finite check); every other key is the task's to format (or logged under its own name).
LOOP_KEYS = ("loss", "lr", "grad_norm", "ok", "real_tokens")

MetricFormat = Callable[[Any], dict]
PAIR_ORDER = "helpfulness"  # the label that orders the responses to one prompt for loss.pair_weight


def split_outputs(pred: np.ndarray, n_attributes: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(attributes [N, A], the separate reward [N] or None) of a reward model's output columns."""
    return pred[:, :n_attributes], (pred[:, n_attributes] if pred.shape[1] > n_attributes else None)


def plain_metric(key: str, value: Any) -> dict:
    """A step metric no task formats: a number under its own name (an int for integer dtypes), or a list."""
    a = np.asarray(value)
    if a.ndim:
        return {key: a.tolist()}
    return {key: int(a) if a.dtype.kind in "iub" else float(a)}


class Task:
    """The base: reads rows by ``data.kind`` and reports them; subclasses set :attr:`name`, encode rows,
    validate and may format step metrics (:attr:`formats`: step key -> function of its value)."""

    name: ClassVar[str] = ""
    formats: ClassVar[dict[str, str]] = {}  # step key -> name of the method formatting it

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg

    @property
    def loss(self) -> LossConfig:
        """The loss config the jitted step is built with."""
        return self.cfg.loss

    # ------------------------------------------------------------------ data

    def encode(self, rows: list, tokenizer: Any) -> Encoded:
        raise NotImplementedError

    def load_split(self, source: Optional[str], split: str, tokenizer: Any, subset: bool) -> tuple[Encoded, dict]:
        """One split, encoded, with its report (rows read, skipped, truncated, dropped)."""
        d = self.cfg.data
        src = resolve_source(source)
        extra: dict = {}
        if d.kind == "helpsteer3":
            hs3 = load_helpsteer3(str(source), split, d.domains, d.languages, on_bad_row=d.on_bad_row)
            res, extra = LoadResult(rows=hs3.rows, skipped=hs3.skipped, source=src), hs3.report()
            rows_read = len(hs3.rows) + len(hs3.skipped) + hs3.ties_left_out + hs3.filtered_out
            logger.info(
                f"{source} [{split}]: HelpSteer3 {len(hs3.rows)} pairs, {hs3.ties_left_out} ties (preference 0) "
                f"left out, {hs3.filtered_out} outside data.domains / data.languages"
            )
        else:
            loader = {"pairs": load_pairs, "chat": load_chat}.get(d.kind, load_helpsteer)
            res = loader(src, split, on_bad_row=d.on_bad_row)
            rows_read = len(res.rows) + len(res.skipped)
        rows = res.rows
        if subset and (d.fraction < 1 or d.max_prompts is not None):
            rows = [rows[i] for i in subset_prompts(rows, d.fraction, d.max_prompts, d.subset_seed)]
        enc = self.encode(rows, tokenizer)
        report = split_report(source, split, rows_read, len(rows), enc)
        if subset and d.share_prompts is not False and self.cfg.task == "rm":  # the training split's epoch
            report["sharing"] = self.loader(enc, pad_id=0).share_summary()
        if extra:
            report["helpsteer3"] = {k: extra[k] for k in ("ties_left_out", "filtered_out", "domains")}
        report["rows_skipped"] = len(res.skipped)
        report["skipped"] = [list(s) for s in res.skipped[:100]]
        if res.skipped:
            logger.info(f"{source} [{split}]: skipped {len(res.skipped)} bad rows (first: {res.skipped[0]})")
        if enc.report.truncated or enc.report.dropped:
            logger.info(
                f"{source} [{split}]: over-length policy {d.overlength!r}: {enc.report.truncated} truncated, "
                f"{enc.report.dropped} dropped (seq_len {d.seq_len})"
            )
        return enc, report

    def loader(self, enc: Encoded, pad_id: int) -> Loader:
        """The training loader of an encoded split: ``train.batch_rows / train.grad_accum`` rows per
        micro-batch, laid out as ``data`` says."""
        d, t = self.cfg.data, self.cfg.train
        return Loader(
            enc,
            d.seq_len,
            d.max_segments,
            t.batch_rows // t.grad_accum,
            pad_id,
            d.packing,
            d.padding_side,
            t.seed,
            d.shuffle,
            # sft: not yet (its units are single examples; docs/sharing.md); steerlm2: a group's prompt once
            d.share_prompts if self.cfg.task != "sft" else False,
            sample_by_prompt=d.sample_by_prompt and self.cfg.task == "rm",
            shared_steps=d.shared_steps,
        )

    def stand_in(self) -> Encoded:
        """One unit of encoded data of one-token examples, with every field this task's encoder fills: what
        :func:`step_batch_spec` lays out to learn the step's batch without data or a tokenizer."""
        raise NotImplementedError

    # ------------------------------------------------------------------ metrics

    def train_metrics(self, metrics: dict) -> dict:
        """The step's own metrics for a metrics.jsonl record: every key the step returned beyond the loop's,
        formatted by the task where it has a format, else under its own name."""
        out: dict = {}
        for key, value in metrics.items():
            if key in LOOP_KEYS:
                continue
            fmt = self.formats.get(key)
            out.update(getattr(self, fmt)(value) if fmt else plain_metric(key, value))
        return out

    def validator(self, parts: ModelParts, enc: Encoded) -> Validator:
        """Scores the validation split for given parameters: (metrics with ``val_loss``, predictions or None)."""
        raise NotImplementedError

    def kept_line(self, step: int, val: dict) -> str:
        """The stderr summary of the kept checkpoint's validation."""
        return f"kept checkpoint: step {step}, val_loss {val['val_loss']:.4f}"

    def eval_report(self, enc: Encoded, pred: Optional[np.ndarray], probs: Optional[np.ndarray] = None) -> dict:
        """What eval.json adds for the kept checkpoint beyond its validation metrics."""
        return {}


class RegressionTask(Task):
    """A multi-attribute reward model on rated rows: masked, attribute-weighted MSE."""

    name = "rm"
    formats = {
        "attr_mse": "_attr_mse",
        "pair_accuracy": "_pair_accuracy",
        "pair_loss": "_pair_loss",
        "pointwise_loss": "_pointwise_loss",
        "pairs": "_pairs",
    }

    @property
    def joint(self) -> bool:
        """loss.pair_weight > 0: Bradley-Terry on the responses to one prompt beside the pointwise loss."""
        return self.cfg.loss.pair_weight > 0 and self.cfg.data.kind == "helpsteer"

    def encode(self, rows: list, tokenizer: Any) -> Encoded:
        d, attributes = self.cfg.data, self.cfg.model.attributes
        enc = encode_helpsteer(rows, tokenizer, d.seq_len, d.template, d.overlength, attributes)
        # The joint objective's pairs are the responses to one prompt, ordered by helpfulness: one unit each.
        return prompt_pair_units(enc, list(attributes).index(PAIR_ORDER)) if self.joint else enc

    def stand_in(self) -> Encoded:
        n = len(self.cfg.model.attributes)
        if self.joint:
            pairs = np.asarray([[0, 1]], np.int64)
            return _stand_in(2, n, pairs=pairs, pair_strength=np.ones(1, np.float32))
        return _stand_in(1, n)

    def _attr_mse(self, value: Any) -> dict:
        return {f"train_mse_{a}": float(v) for a, v in zip(self.cfg.model.attributes, value)}

    def _pair_accuracy(self, value: Any) -> dict:
        return {"train_pair_accuracy": float(value)}

    def _pair_loss(self, value: Any) -> dict:
        return {"train_pair_loss": float(value)}

    def _pointwise_loss(self, value: Any) -> dict:
        return {"train_pointwise_loss": float(value)}

    def _pairs(self, value: Any) -> dict:
        return {"train_pairs": int(value)}

    def validator(self, parts: ModelParts, enc: Encoded) -> Validator:
        levels = self.cfg.model.head != "regression" and self.cfg.data.kind == "helpsteer"
        return RewardPredictions(self.cfg, parts, enc, self.metrics, levels)

    def eval_report(self, enc: Encoded, pred: Optional[np.ndarray], probs: Optional[np.ndarray] = None) -> dict:
        """HelpSteer2 rows: per-attribute MSE / Pearson / Spearman and pairwise accuracy under each of
        ``eval.reward_weights`` (matched to model.attributes by name; a weighting that does not apply to them,
        e.g. a preset for a model without the five HelpSteer2 attributes, is left out, as config checking says)."""
        cfg = self.cfg
        if cfg.data.kind != "helpsteer":
            return {}
        weights = {str(w): w for w in eval_weightings(cfg.eval.reward_weights, cfg.model.attributes)}
        pred = split_outputs(pred, len(cfg.model.attributes))[0]
        rep = helpsteer_report(pred, enc.labels, enc.label_mask, enc.group, weights, cfg.model.attributes, probs)
        return {"per_attribute": rep["per_attribute"], "pairwise": rep["pairwise"]}

    def metrics(self, pred: np.ndarray, enc: Encoded, probs: Optional[np.ndarray] = None) -> dict:
        """Validation loss (the training objective: MSE, or with level probabilities ``probs`` [N, A, K] the
        cross-entropy against the labels' level targets, without smoothing) and per-attribute MSE of
        predictions [N, A] (E[y] for a distributional head)."""
        w = np.asarray(self.cfg.loss.attribute_weights, np.float64)
        pred, separate = split_outputs(pred, len(self.cfg.model.attributes))
        err = (pred - enc.labels) ** 2 * enc.label_mask
        loss = err if probs is None else level_cross_entropy(probs, enc.labels) * enc.label_mask
        out: dict[str, Any] = {"val_loss": float((loss * w).sum() / max((enc.label_mask * w).sum(), 1e-9))}
        for a, name in enumerate(self.cfg.model.attributes):
            n = enc.label_mask[:, a].sum()
            out[f"val_mse_{name}"] = float(err[:, a].sum() / n) if n else None
        if self.joint and enc.pairs is not None and len(enc.pairs):
            out.update(self._val_pairs(pred, separate, enc))
        return out

    def _val_pairs(self, pred: np.ndarray, separate: Optional[np.ndarray], enc: Encoded) -> dict:
        """The BT term and its accuracy on the validation split's prompt pairs (the reward the term reads)."""
        assert enc.pairs is not None and enc.pair_strength is not None
        if separate is not None:
            reward = separate.astype(np.float64)
        else:
            w = resolve_reward_weights(self.cfg.loss.reward_weights, self.cfg.model.attributes)
            reward = pred.astype(np.float64) @ w
        batch = {
            "pair_chosen": enc.pairs[:, 0],
            "pair_rejected": enc.pairs[:, 1],
            "pair_mask": np.ones(len(enc.pairs)),
            "pair_strength": enc.pair_strength,
        }
        sums = pair_sums(reward[None, :, None], batch, np.ones(1), "scaled_bt", 0.0)
        return {
            "val_pair_loss": float(sums["num"] / sums["den"]),
            "val_pair_accuracy": float(sums["correct"] / sums["den"]),
        }


class PairsTask(RegressionTask):
    """A reward model on preference pairs (``data.kind: pairs``): a Bradley-Terry-family loss on the reward."""

    name = "pairs"
    formats = {"pair_accuracy": "_pair_accuracy"}

    def encode(self, rows: list, tokenizer: Any) -> Encoded:
        d = self.cfg.data
        return encode_pairs(rows, tokenizer, d.seq_len, d.template, d.overlength, len(self.cfg.model.attributes))

    def stand_in(self) -> Encoded:
        return _stand_in(2, len(self.cfg.model.attributes))  # examples 0 (chosen) and 1 (rejected)

    def _pair_accuracy(self, value: Any) -> dict:
        return {"train_pair_accuracy": float(value)}

    def metrics(self, pred: np.ndarray, enc: Encoded) -> dict:
        """The training objective itself (rm_jax.engine.losses), on the whole split as one "row"."""
        n = len(enc.units)
        pairs = {
            "pair_chosen": np.arange(0, 2 * n, 2),
            "pair_rejected": np.arange(1, 2 * n, 2),
            "pair_mask": np.ones(n, np.float32),
            "pair_strength": enc.strength,
        }
        loss = self.cfg.loss
        w = resolve_reward_weights(loss.reward_weights, self.cfg.model.attributes).astype(np.float32)
        sums = pair_sums(pred[None], pairs, w, loss.type, loss.centering)
        return {
            "val_loss": float(sums["num"] / sums["den"]) if n else float("nan"),
            "val_pair_accuracy": float(sums["correct"] / sums["den"]) if n else float("nan"),
        }


class SftTask(Task):
    """A causal LM: response-only next-token loss (SteerLM SFT with ``data.attributes_as_label``)."""

    name = "sft"
    formats = {"loss_tokens": "_loss_tokens"}

    def encode(self, rows: list, tokenizer: Any) -> Encoded:
        d = self.cfg.data
        return encode_sft(rows, tokenizer, d.seq_len, d.template, d.overlength, d.attributes_as_label)

    def stand_in(self) -> Encoded:
        return _stand_in(1, 0, response_start=np.zeros(1, np.int64))

    def _loss_tokens(self, value: Any) -> dict:
        return {"loss_tokens": int(value)}

    def validator(self, parts: ModelParts, enc: Encoded) -> Validator:
        return LossSums(self.cfg, parts, enc, self.metrics)

    def metrics(self, total: dict) -> dict:
        loss = _ratio(total)
        return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 700.0)), "val_tokens": int(total["den"])}

    def kept_line(self, step: int, val: dict) -> str:
        return super().kept_line(step, val) + f", perplexity {val['val_perplexity']:.2f}"


class SteerLM2Task(Task):
    """SteerLM 2.0 on NeMo-Aligner-format groups: the importance-weighted group loss and KL(w || b)."""

    name = "steerlm2"

    def load_split(self, source: Optional[str], split: str, tokenizer: Any, subset: bool) -> tuple[Encoded, dict]:
        d = self.cfg.data
        src = resolve_source(source)
        groups = load_groups(src)  # errors name file, row and field
        if subset and (d.fraction < 1 or d.max_prompts is not None):
            k = d.max_prompts if d.max_prompts is not None else max(1, round(d.fraction * len(groups)))
            keep = np.sort(np.random.default_rng(d.subset_seed).permutation(len(groups))[:k])
            groups = [groups[i] for i in keep]
        enc = encode_groups(groups, tokenizer, d.seq_len, d.template, d.overlength)
        uneven = unequal_sizes([len(g.responses) for g in groups], lambda i: f"{src}: row {groups[i].row}")
        if uneven:
            logger.info(f"note: {uneven}")
        if enc.report.truncated or enc.report.dropped:
            logger.info(
                f"{source} [{split}]: over-length policy {d.overlength!r}: {enc.report.truncated} groups truncated "
                f"(each group's prompt cut once), {enc.report.dropped} groups dropped (seq_len {d.seq_len})"
            )
        report = split_report(source, split, len(groups), len(groups), enc)
        if subset and d.share_prompts is not False:  # the training split's epoch
            report["sharing"] = self.loader(enc, pad_id=0).share_summary()
        return enc, report

    def stand_in(self) -> Encoded:
        # A group of two responses; the per-example values are encode_groups' (importance weight, log Q').
        values = {"w": np.full(2, 0.5, np.float32), "logq_prime": np.zeros(2, np.float32)}
        return _stand_in(2, 0, response_start=np.zeros(2, np.int64), example_values=values)

    def validator(self, parts: ModelParts, enc: Encoded) -> Validator:
        return LossSums(self.cfg, parts, enc, self.metrics)

    def metrics(self, total: dict) -> dict:
        return {
            "val_loss": _ratio(total),
            "val_kl_w_b": total["kl_sum"] / max(total["groups"], 1.0),
            "val_groups": int(total["groups"]),
        }


def task_for(cfg: RunConfig) -> Task:
    """The task a config trains: ``task`` (rm, sft, steerlm2), an ``rm`` on ``data.kind: pairs`` being pairs."""
    if cfg.task == "steerlm2":
        return SteerLM2Task(cfg)
    if cfg.task == "sft":
        return SftTask(cfg)
    return PairsTask(cfg) if cfg.data.kind in PAIR_KINDS else RegressionTask(cfg)


def step_batch_spec(task: Task, micro_rows: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every entry of one optimizer step's batch as the train step receives it: the task's
    stand-in laid out by its own training loader (the code a run uses, so the two cannot drift apart), with
    ``micro_rows`` rows per micro-batch and the ``train.grad_accum`` micro-batches stacked in front."""
    cfg = task.cfg
    resized = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_rows=micro_rows, grad_accum=1))
    one = step_inputs(type(task)(resized).loader(task.stand_in(), pad_id=0).next_step(1))
    return {k: ((cfg.train.grad_accum, *v.shape[1:]), v.dtype) for k, v in one.items()}


def _stand_in(n: int, n_labels: int, **fields: Any) -> Encoded:
    """``n`` one-token examples forming one unit, with ``n_labels`` label columns and ``fields`` added."""
    return Encoded(
        ids=[np.ones(1, np.int32) for _ in range(n)],
        labels=np.zeros((n, n_labels), np.float32),
        label_mask=np.zeros((n, n_labels), np.float32),
        units=[tuple(range(n))],
        source_rows=np.zeros(n, np.int64),
        group=np.zeros(n, np.int64),
        strength=np.ones(1, np.float32),
        **fields,
    )


def split_report(source: Optional[str], split: str, rows_read: int, rows_used: int, enc: Encoded) -> dict:
    """data_report.json's entry for one split (key order as written)."""
    return {
        "source": source,
        "split": split,
        "rows_read": rows_read,
        "rows_skipped": 0,
        "rows_used": rows_used,
        "truncated": enc.report.truncated,
        "dropped_overlength": enc.report.dropped,
        "examples": len(enc.ids),
        "skipped": [],
    }


def _ratio(total: dict) -> float:
    return total["num"] / total["den"] if total.get("den") else float("nan")
