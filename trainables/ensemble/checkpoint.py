"""Self-describing Ensemble MoE checkpoints: JSON config + safetensors + each expert's tokenizer.

Layout of a checkpoint directory::

    config.json            {"format": "moe-orch/ensemble", "version": 1, "config": EnsembleConfig,
                            "experts": [{"name", "path", "source"}], "label_names", "metadata"}
    gate.safetensors       the gating network's weights
    experts/<name>/        save_pretrained of the expert (config.json, model.safetensors) and its tokenizer

``load_checkpoint`` rebuilds the model from the directory alone (no pickles, no network).
``metadata`` carries free-form data, e.g. the step, dev metrics and the experiment's ``serve`` section.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from trainables.ensemble.config import EnsembleConfig
from trainables.ensemble.model import EnsembleMoE

FORMAT, VERSION = "moe-orch/ensemble", 1
LABEL_NAMES = ["negative", "positive"]


def save_checkpoint(model: EnsembleMoE, directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` into ``directory`` (created); returns it."""
    directory = Path(directory)
    (directory / "experts").mkdir(parents=True, exist_ok=True)
    experts = []
    for name, expert, tokenizer, spec in zip(model.expert_names, model.experts, model.tokenizers,
                                             model.cfg.experts, strict=True):
        path = directory / "experts" / name
        expert.save_pretrained(path)
        tokenizer.save_pretrained(path)
        experts.append({"name": name, "path": f"experts/{name}", "source": spec})
    gate = {k: v.detach().cpu().contiguous() for k, v in model.gate.state_dict().items()}
    save_file(gate, str(directory / "gate.safetensors"))
    labels = LABEL_NAMES if model.cfg.num_labels == 2 else [str(i) for i in range(model.cfg.num_labels)]
    doc = {"format": FORMAT, "version": VERSION, "config": model.cfg.to_dict(), "experts": experts,
           "label_names": labels, "metadata": metadata or {}}
    (directory / "config.json").write_text(json.dumps(doc, indent=2, default=str))
    return directory


def read_checkpoint_config(directory: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint; ValueError if it is not an ensemble checkpoint."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no config.json; expected an Ensemble MoE checkpoint directory")
    doc = json.loads(path.read_text())
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path}: got format {doc.get('format')!r}, expected {FORMAT!r}")
    return doc


def load_checkpoint(directory: str | Path) -> EnsembleMoE:
    """Rebuild the ``EnsembleMoE`` saved in ``directory`` (eval mode, CPU)."""
    directory = Path(directory).absolute()
    doc = read_checkpoint_config(directory)
    cfg_dict = dict(doc["config"])
    cfg_dict["experts"] = [{"name": e["name"], "pretrained": str(directory / e["path"])} for e in doc["experts"]]
    cfg = EnsembleConfig.from_dict(cfg_dict)
    experts, tokenizers = [], []
    for e in doc["experts"]:
        path = directory / e["path"]
        experts.append(AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True))
        tokenizers.append(AutoTokenizer.from_pretrained(path, local_files_only=True))
    model = EnsembleMoE(cfg, experts, tokenizers)
    model.gate.load_state_dict(load_file(str(directory / "gate.safetensors")))
    return model.eval()
