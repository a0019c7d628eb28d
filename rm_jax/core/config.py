"""Run configuration: typed dataclasses loaded from YAML, with ``key=value`` overrides.

Unknown keys and wrong types are errors that name the key (``train.lr: expected float, got 'x'``).
The resolved config is written to each run folder as ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Optional, Sequence, Union

import yaml

from rm_jax.core.attributes import ATTRIBUTES
from rm_jax.core.errors import ConfigError

__all__ = ["ConfigError", "RunConfig", "build_config", "load_config", "load_yaml", "dump_yaml", "to_dict"]

# The allowed values of the choice fields: the annotation is the only list (the validator and
# rm_jax.models read it with typing.get_args).
Task = Literal["rm", "sft", "steerlm2"]
Dtype = Literal["float32", "bfloat16"]
Remat = Literal["none", "full", "dots", "dots_no_batch"]
# pallas: rm_jax.models.pallas_shared (Triton); pallas_tpu: rm_jax.models.pallas_shared_tpu (Mosaic)
Attention = Literal["auto", "xla", "cudnn", "cudnn_dense", "splash", "pallas", "pallas_tpu"]
MatmulPrecision = Literal["default", "high", "highest"]
DataKind = Literal["helpsteer", "pairs", "helpsteer3", "chat"]
PAIR_KINDS = ("pairs", "helpsteer3")  # data kinds read as preference pairs (a pair loss)
PaddingSide = Literal["right", "left"]
Overlength = Literal["truncate", "drop"]
OnBadRow = Literal["error", "skip"]
SharePrompts = Union[bool, Literal["auto"]]  # each prompt encoded once for its responses (docs/sharing.md)
SharedSteps = Literal["same", "fill"]
Schedule = Literal["constant", "cosine", "linear"]
LossType = Literal["mse", "bt", "margin_bt", "scaled_bt"]
Steerlm2Normalisation = Literal["group_mean_length", "batch_mean_length"]
OptimizerName = Literal["adamw", "adafactor"]
OptimizerStateMemory = Literal["device", "host"]
AttributeHead = Literal["regression", "categorical", "ordinal"]  # rm_jax.models.heads, docs/heads.md
SoftLabels = Literal["none", "gaussian"]
PairTarget = Literal["attributes", "separate"]  # what loss.pair_weight's Bradley-Terry term reads (docs/heads.md)


@dataclass(frozen=True)
class Range:
    """Allowed numeric values of a field, declared on it as ``Annotated[int, Range(1)]`` and checked by the
    same validator as the types; a bound of None is open-ended."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False  # (low, ...] instead of [low, ...]
    high_open: bool = False

    def __contains__(self, v: float) -> bool:
        above = self.low is None or (v > self.low if self.low_open else v >= self.low)
        below = self.high is None or (v < self.high if self.high_open else v <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"greater than {self.low:g}" if self.low_open else f"at least {self.low:g}"
        if self.low is None:
            return f"less than {self.high:g}" if self.high_open else f"at most {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


Count = Annotated[int, Range(1)]  # sizes and counts that must hold something
NonNegInt = Annotated[int, Range(0)]  # counts where 0 means off / derive / all
Positive = Annotated[float, Range(0, low_open=True)]
NonNegative = Annotated[float, Range(0)]
Unit = Annotated[float, Range(0, 1)]
Beta = Annotated[float, Range(0, 1, high_open=True)]  # Adam moment decay


@dataclass
class ModelConfig:
    path: Optional[str] = None  # HF folder (or hub id); None = a new model of ``arch`` (from scratch)
    arch: dict = field(default_factory=dict)  # DecoderConfig fields for a from-scratch model
    tokenizer: Optional[str] = None  # default: ``path``, else the bundled tokenizer
    dtype: Dtype = "float32"  # compute dtype; parameters and optimizer state stay float32
    remat: Remat = "none"
    scan_layers: bool = False
    attention: Attention = "auto"  # auto = GPU: cudnn, TPU: splash, CPU: xla
    attention_block: int = 128  # xla attention: query block (<= 0: the whole row); a block reads only keys it can see
    matmul_precision: Optional[MatmulPrecision] = None  # None = highest for float32, default for bfloat16
    attributes: list = field(default_factory=lambda: list(ATTRIBUTES))
    init_from: Optional[str] = None  # a previous run folder: start from its kept checkpoint's parameters
    adapter: Optional[str] = None  # a PEFT LoRA adapter folder for model.path: continue from it (docs/lora.md)
    seed: int = 0  # initialisation of new parameters (from-scratch model, new head)
    # The attribute head (docs/heads.md): regression | categorical (levels logits) | ordinal (cumulative link);
    # every consumer reads E[y]. label_levels: labels are the levels 0..label_levels-1.
    head: AttributeHead = "regression"
    label_levels: Annotated[int, Range(2)] = 5


@dataclass
class DataConfig:
    train: str = "bundled"  # file, folder, hub id, or "bundled" (the sample shipped in rm_jax/assets)
    train_split: str = "train"
    validation: Optional[str] = "bundled"
    validation_split: str = "validation"
    # helpsteer (attribute regression) | pairs (chosen/rejected or HelpSteer2-Preference)
    # | helpsteer3 (HelpSteer3-Preference rows as pairs) | chat (task sft: prompt/response or messages rows)
    kind: DataKind = "helpsteer"
    domains: Optional[list[str]] = None  # helpsteer3: keep only these domains (general, stem, code, multilingual)
    languages: Optional[list[str]] = None  # helpsteer3: keep only these languages
    template: Optional[str] = None  # chat template: None = the tokenizer's own, else a built-in name (nemotron)
    seq_len: Annotated[int, Range(8)] = 128
    packing: bool = True
    max_segments: Count = 16  # conversations per packed row at most
    padding_side: PaddingSide = "right"  # when packing is off
    overlength: Overlength = "truncate"  # truncate: the prompt from the left
    # share of prompts used for training (nested across fractions for one seed)
    fraction: Annotated[float, Range(0, 1, low_open=True)] = 1.0
    max_prompts: Optional[Count] = None  # absolute count instead of a fraction
    subset_seed: int = 0
    on_bad_row: OnBadRow = "error"  # skip: counted and reported
    shuffle: bool = True
    attributes_as_label: bool = False  # task sft on HelpSteer2 rows: each response's labels become its SteerLM label
    # Attribute regression: a prompt's responses are sampled together (one unit), whatever the layout, so a
    # shared and an unshared run see the same steps. false: each response on its own.
    sample_by_prompt: bool = True
    # Reward-model tasks: a prompt's tokens once per packed row, its responses after it (exact; docs/sharing.md).
    # auto: on where responses share a prompt.
    share_prompts: SharePrompts = False
    # same: a step holds the examples the unshared layout gives it, in fewer rows (the same run, faster steps);
    # fill: rows are filled at shared lengths (more examples per step, fewer steps per epoch).
    shared_steps: SharedSteps = "same"


@dataclass
class TrainConfig:
    seed: int = 0
    max_steps: NonNegInt = 0  # 0 = derive from epochs
    epochs: Positive = 1.0
    batch_rows: Count = 16  # packed rows per optimizer step (global, all devices)
    grad_accum: Count = 1
    lr: Positive = 1e-3
    warmup_steps: NonNegInt = 10
    schedule: Schedule = "constant"  # after warmup
    min_lr_ratio: Unit = 0.0
    weight_decay: NonNegative = 0.0
    b1: Beta = 0.9
    b2: Beta = 0.95
    eps: NonNegative = 1e-8
    clip_norm: NonNegative = 1.0  # 0 = off
    # adamw | adafactor (factored second moments: ~no optimizer state for matrices)
    optimizer: OptimizerName = "adamw"
    optimizer_state_dtype: Dtype = "float32"  # bfloat16: the moments stored in bf16 (half the bytes)
    # host: the optimizer state lives in pinned host memory between steps (backends with a pinned_host memory kind)
    optimizer_state_memory: OptimizerStateMemory = "device"
    log_every: Count = 10
    eval_every: NonNegInt = 0  # 0 = only at the end
    eval_rows: Count = 16  # packed rows per evaluation batch


@dataclass
class LossConfig:
    type: LossType = "mse"
    attribute_weights: list = field(default_factory=lambda: [1.0] * len(ATTRIBUTES))
    reward_weights: Any = "helpfulness-only"  # pair losses: which combination of attributes is the reward
    centering: NonNegative = 0.0  # pair losses: coefficient of the (r_chosen + r_rejected)^2 term
    # task steerlm2: group_mean_length (NeMo-Aligner: each group's loss / its own mean response length, averaged
    # over groups) | batch_mean_length (the step's summed loss / the sum of the groups' mean lengths)
    steerlm2_normalisation: Steerlm2Normalisation = "group_mean_length"
    # Distributional heads (model.head categorical | ordinal): the level targets (rm_jax.models.heads)
    label_smoothing: Annotated[float, Range(0, 1, high_open=True)] = 0.0
    soft_labels: SoftLabels = "none"  # gaussian: LDL-style discretised N(y, soft_label_sigma^2) targets
    soft_label_sigma: Positive = 1.0
    # task rm on HelpSteer2 rows: the joint objective pointwise + pair_weight * BT on the pairs of responses to one
    # prompt (ordered by helpfulness, ties left out); the BT term reads the weighted attribute reward
    # (pair_target attributes: E[y] @ reward_weights) or a separate scalar output beside the attribute head
    # (separate: exported as the extra logit "reward_head", scored with --weights reward_head)
    pair_weight: NonNegative = 0.0
    pair_target: PairTarget = "attributes"


@dataclass
class MeshConfig:
    data: int = -1
    fsdp: int = 1
    tensor: int = 1  # any one of the three may be -1 = the rest of the devices
    num_devices: NonNegInt = 0  # use only the first N devices (0 = all); e.g. 1 for a single-device baseline


@dataclass
class CheckpointConfig:
    every_steps: NonNegInt = 0  # 0 = at evaluations and at the end
    keep_latest: Count = 2  # two, so an unreadable latest checkpoint has a previous one to resume from
    keep_best: NonNegInt = 1
    async_save: bool = True


@dataclass
class LabelProbeConfig:
    """task sft: after training, generate for held-out validation prompts at each requested level of one
    attribute (the others from ``base``) and report response lengths per level in eval.json."""

    prompts: NonNegInt = 0  # 0 = off
    attribute: str = "verbosity"
    levels: list = field(default_factory=lambda: [0, 4])
    base: str = "helpfulness:4,correctness:4,coherence:4,complexity:2"
    max_new_tokens: Count = 96
    temperature: NonNegative = 0.0  # 0 = greedy
    seed: int = 0
    every: int = 0  # > 0: also during training, every n steps and at the last, into metrics.jsonl


@dataclass
class EvalConfig:
    reward_weights: list = field(default_factory=lambda: ["70b-rewardbench", "helpfulness-only"])
    rewardbench: Optional[str] = None  # file / hub id of RewardBench-format pairs to evaluate at the end
    rewardbench_split: str = "filtered"
    rewardbench2: Optional[str] = None  # RewardBench 2 sets (file / hub id / bundled) scored at the end
    rewardbench2_split: Optional[str] = None  # hub split (default test)
    # The yardsticks HelpSteer's authors report now, scored at the end like rewardbench2 (file / hub id / bundled)
    rm_bench: Optional[str] = None  # RM-Bench rows (THU-KEG/RM-Bench data/total_dataset.json)
    judgebench: Optional[str] = None  # JudgeBench pairs (ScalerLab/JudgeBench)
    judgebench_split: str = "gpt"
    helpsteer3: Optional[str] = None  # HelpSteer3-Preference rows; pairwise accuracy per domain and language
    helpsteer3_split: str = "validation"
    label_probe: LabelProbeConfig = field(default_factory=LabelProbeConfig)


@dataclass
class DistributedConfig:
    enabled: bool = False  # call jax.distributed.initialize (auto-detects TPU pods and SLURM)
    coordinator_address: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None
    local_device_ids: Optional[list] = None


@dataclass
class LoggingConfig:
    progress: bool = True
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "rm_jax"
    peak_flops: Optional[Positive] = None  # per device, for MFU; None = known GPUs/TPUs only


LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass
class LoraConfig:
    rank: NonNegInt = 0  # 0 = full fine-tune; > 0 = the base is frozen, adapters of this rank (and the head) train
    alpha: Positive = 16.0  # the adapters' update is scaled by alpha / rank (PEFT's default scaling)
    rslora: bool = False  # rsLoRA (PEFT's use_rslora): scaled by alpha / sqrt(rank) instead
    # PEFT's lora_dropout: dropout on each adapter's input while training (the frozen base sees x unchanged)
    dropout: Annotated[float, Range(0, 1, high_open=True)] = 0.0
    targets: list = field(default_factory=lambda: list(LORA_TARGETS))  # which projections get an adapter
    base_dtype: Dtype = "float32"  # storage dtype of the frozen base (bfloat16 halves its memory)
    train_lm_head: bool = False  # policies: also train the LM head (reward models always train their head)


@dataclass
class RunConfig:
    run_dir: str = "runs/default"
    task: Task = "rm"  # rm (reward model) | sft (causal LM, response-only next-token loss; SteerLM with labels)
    #                   | steerlm2 (SteerLM 2.0 on NeMo-format groups of sampled responses: data.train/validation)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)


# ---------------------------------------------------------------- dict <-> dataclass


def _check(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        base, *extras = typing.get_args(tp)
        value = _check(value, base, key)
        for r in extras:
            if isinstance(r, Range) and value not in r:
                raise ConfigError(f"{key} must be {r}, got {value!r}")
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value in allowed and isinstance(value, str):
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(allowed)}")
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if tp is list or origin is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        raise ConfigError(f"{key}: expected a list, got {value!r}")
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            full = f"{prefix}.{k}" if prefix else k
            raise ConfigError(
                f"unknown config key {full!r} (known under {prefix or 'the top level'}: {', '.join(sorted(names))})"
            )
    kwargs = {}
    for k, v in data.items():
        full = f"{prefix}.{k}" if prefix else k
        kwargs[k] = _check(v, hints[k], full)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value (e.g. train.lr=1e-4)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    data = _deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for p in path[:-1]:
            if not isinstance(node.setdefault(p, {}), dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
            node = node[p]
        node[path[-1]] = value
    return data


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def _yaml_floats(data: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; treat numeric-looking strings as numbers."""
    if isinstance(data, dict):
        return {k: _yaml_floats(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_yaml_floats(v) for v in data]
    if isinstance(data, str) and any(c in data.lower() for c in "e.") and data[:1] in "0123456789-+.":
        try:
            return float(data)
        except ValueError:
            return data
    return data


def load_yaml(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML: {where}{getattr(e, 'problem', None) or e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return _yaml_floats(data)


def build_config(data: dict, overrides: Sequence[str] = (), where: str = "config") -> RunConfig:
    try:
        cfg = from_dict(RunConfig, _yaml_floats(apply_overrides(data, overrides)))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    validate(cfg, where)
    return cfg


def load_config(path: str, overrides: Sequence[str] = ()) -> RunConfig:
    return build_config(load_yaml(path), overrides, where=path)


def validate(cfg: RunConfig, where: str = "config") -> None:
    """Checks that need more than one key; run before anything compiles."""
    n_attr = len(cfg.model.attributes)
    if len(cfg.loss.attribute_weights) != n_attr:
        raise ConfigError(
            f"{where}: loss.attribute_weights has {len(cfg.loss.attribute_weights)} values; "
            f"expected {n_attr} (one per attribute: {', '.join(cfg.model.attributes)})"
        )
    if cfg.train.batch_rows % cfg.train.grad_accum:
        raise ConfigError(
            f"{where}: train.batch_rows ({cfg.train.batch_rows}) must be a multiple of "
            f"train.grad_accum ({cfg.train.grad_accum})"
        )
    if cfg.task == "steerlm2" and not (cfg.model.init_from or cfg.model.path):
        raise ConfigError(
            f"{where}: task steerlm2 starts from the sampling policy Q': set model.init_from (an sft "
            f"run folder) or model.path (an HF *ForCausalLM folder)"
        )
    if cfg.task in ("sft", "steerlm2"):
        if cfg.data.kind in PAIR_KINDS:
            raise ConfigError(
                f"{where}: task {cfg.task} trains on conversations: data.kind helpsteer or chat, not {cfg.data.kind}"
            )
        if cfg.loss.type != "mse":
            raise ConfigError(
                f"{where}: task {cfg.task} has its own loss; loss.type={cfg.loss.type} is for reward models"
            )
    elif cfg.data.kind == "chat":
        raise ConfigError(f"{where}: data.kind=chat holds no labels for a reward model; use it with task: sft")
    if cfg.task != "rm" and cfg.eval.rewardbench:
        raise ConfigError(f"{where}: eval.rewardbench scores a reward model; task {cfg.task} trains a policy")
    for key in ("rewardbench2", "rm_bench", "judgebench", "helpsteer3"):
        if cfg.task != "rm" and getattr(cfg.eval, key):
            raise ConfigError(f"{where}: eval.{key} scores a reward model; task {cfg.task} trains a policy")
    if cfg.eval.label_probe.prompts and cfg.task == "rm":
        raise ConfigError(f"{where}: eval.label_probe is for task: sft (a policy that reads labels)")
    if cfg.data.attributes_as_label and cfg.task != "sft":
        raise ConfigError(f"{where}: data.attributes_as_label is for task: sft (SteerLM attribute-conditioned SFT)")
    if cfg.data.kind in PAIR_KINDS and cfg.loss.type == "mse":
        raise ConfigError(
            f"{where}: data.kind={cfg.data.kind} needs a pair loss (loss.type bt, margin_bt or scaled_bt)"
        )
    if cfg.data.kind == "helpsteer" and cfg.loss.type != "mse":
        raise ConfigError(f"{where}: loss.type={cfg.loss.type} needs data.kind=pairs or helpsteer3")
    if (cfg.data.domains or cfg.data.languages) and cfg.data.kind != "helpsteer3":
        raise ConfigError(f"{where}: data.domains / data.languages filter HelpSteer3 rows: set data.kind=helpsteer3")
    if cfg.model.head == "regression" and (cfg.loss.label_smoothing or cfg.loss.soft_labels != "none"):
        raise ConfigError(f"{where}: loss.label_smoothing / loss.soft_labels need model.head categorical or ordinal")
    if cfg.loss.pair_weight and (cfg.task != "rm" or cfg.data.kind != "helpsteer"):
        raise ConfigError(
            f"{where}: loss.pair_weight adds Bradley-Terry on the responses to one prompt of HelpSteer2 rows: "
            f"task rm with data.kind=helpsteer (data.kind={cfg.data.kind}, task {cfg.task})"
        )
    if cfg.loss.pair_weight and "helpfulness" not in cfg.model.attributes:
        raise ConfigError(
            f"{where}: loss.pair_weight orders a prompt's responses by helpfulness: not in model.attributes"
        )
    if cfg.loss.pair_target != "attributes" and not cfg.loss.pair_weight:
        raise ConfigError(f"{where}: loss.pair_target={cfg.loss.pair_target} needs loss.pair_weight > 0")
    if cfg.loss.pair_target == "separate" and cfg.lora.rank:
        raise ConfigError(f"{where}: loss.pair_target=separate is not supported with LoRA (lora.rank > 0)")
    if cfg.model.head != "regression" and cfg.task != "rm":
        raise ConfigError(
            f"{where}: model.head={cfg.model.head} is a reward model's head; task {cfg.task} trains a policy"
        )
    if cfg.model.path is None and not cfg.model.arch and cfg.model.init_from is None:
        raise ConfigError(f"{where}: set model.path (an HF folder) or model.arch (a from-scratch model)")
    if cfg.lora.rank < 0:
        raise ConfigError(f"{where}: lora.rank must be >= 0 (0 = full fine-tune), got {cfg.lora.rank}")
    if cfg.lora.dropout and not cfg.lora.rank and not cfg.model.adapter:
        raise ConfigError(f"{where}: lora.dropout applies to LoRA adapters: set lora.rank > 0 (or model.adapter)")
    if cfg.model.adapter and not cfg.model.path:
        raise ConfigError(f"{where}: model.adapter is a LoRA adapter for the HF folder in model.path: set model.path")
    if cfg.lora.rank:
        bad = [t for t in cfg.lora.targets if t not in LORA_TARGETS]
        if bad or not cfg.lora.targets:
            raise ConfigError(f"{where}: lora.targets {bad or '[]'}: choose from {', '.join(LORA_TARGETS)}")
        if not cfg.model.path:
            raise ConfigError(f"{where}: lora.rank > 0 adapts a base model: set model.path (an HF folder)")
        if cfg.model.init_from:
            raise ConfigError(
                f"{where}: lora.rank > 0 adapts the HF folder in model.path; model.init_from is not supported "
                f"with LoRA (export that run with `rm-jax export` and use the folder as model.path)"
            )
    from rm_jax.core.attributes import eval_weightings, resolve_reward_weights

    for spec in cfg.eval.reward_weights:
        refuse_gate(spec, f"{where}: eval.reward_weights")
    refuse_gate(cfg.loss.reward_weights, f"{where}: loss.reward_weights")
    # Weights are matched to model.attributes by name; presets are scored for HelpSteer2's five attributes only.
    for spec in eval_weightings(cfg.eval.reward_weights, cfg.model.attributes):
        try:
            resolve_reward_weights(spec, cfg.model.attributes)
        except ValueError as e:
            raise ConfigError(f"{where}: eval.reward_weights: {e}") from None
    try:
        if cfg.data.kind in PAIR_KINDS or (cfg.loss.pair_weight and cfg.loss.pair_target == "attributes"):
            resolve_reward_weights(cfg.loss.reward_weights, cfg.model.attributes)
    except ValueError as e:
        raise ConfigError(f"{where}: loss.reward_weights: {e}") from None


def refuse_gate(spec: object, where: str) -> None:
    """A prompt gate (``weights fit --gate``) is fitted on one trained RM; the runs a config or a sweep names
    train their own, so a gate cannot weigh their training or evaluation: a ConfigError, never a constant."""
    from rm_jax.core.attributes import is_gate_spec

    if is_gate_spec(spec):
        raise ConfigError(
            f"{where}: {str(spec).strip()!r} is a prompt gate (weights fit --gate), fitted on one trained RM; a run "
            "trains its own RM, so the gate cannot weigh it: after training, fit one on the run (rm-jax weights "
            "fit --model RUN --gate) and evaluate with rm-jax eval --model RUN --weights GATE_DIR"
        )


def dump_yaml(cfg: RunConfig, path: str) -> None:
    from rm_jax.core.files import write_text

    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
