"""Self-describing Ensemble MoE checkpoints: JSON config + safetensors + each expert's tokenizer.

Layout of a checkpoint directory::

    config.json            the manifest (trainables.training.manifest): {"family": "ensemble",
                           "format_version": 2, "config": EnsembleConfig, "base": null, "metadata",
                           "experts": [{"name", "path", "source"}], "label_names"}
                           (version 1, {"format": "moe-orch/ensemble", "version": 1, ...}, still loads)
    gate.safetensors       the gating network's weights
    experts/<name>/        save_pretrained of the expert (config.json, model.safetensors) and its tokenizer

``load_checkpoint`` rebuilds the model from the directory alone (no pickles, no network).
``metadata`` carries free-form data, e.g. the step, dev metrics and the experiment's ``serve`` section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from trainables.ensemble.config import TRAINING_KEYS, EnsembleConfig
from trainables.ensemble.model import EnsembleMoE
from trainables.training.manifest import Manifest, read_manifest, write_manifest

FAMILY, FORMAT_VERSION = "ensemble", 2
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
    write_manifest(directory, Manifest(family=FAMILY, format_version=FORMAT_VERSION, config=model.cfg.to_dict(),
                                       metadata=metadata or {}, extra={"experts": experts, "label_names": labels}))
    return directory


def read_checkpoint_config(directory: str | Path) -> dict[str, Any]:
    """The manifest of an ensemble checkpoint as plain data; ValueError if it is another family's."""
    manifest = read_manifest(directory)
    if manifest.family != FAMILY:
        raise ValueError(f"{directory}: family is {manifest.family!r}, expected {FAMILY!r}")
    return manifest.to_json()


def load_model_from(directory: Path, manifest: Manifest) -> EnsembleMoE:
    """The family contract's loader: the ``EnsembleMoE`` in ``directory`` (eval mode, CPU)."""
    return load_checkpoint(directory)


def load_checkpoint(directory: str | Path) -> EnsembleMoE:
    """Rebuild the ``EnsembleMoE`` saved in ``directory`` (eval mode, CPU)."""
    directory = Path(directory).absolute()
    doc = read_checkpoint_config(directory)
    cfg_dict = dict(doc["config"])
    cfg_dict["experts"] = [{"name": e["name"], "pretrained": str(directory / e["path"]),
                            **{k: e["source"][k] for k in TRAINING_KEYS if k in e.get("source", {})}}
                           for e in doc["experts"]]
    cfg = EnsembleConfig.from_dict(cfg_dict)
    experts, tokenizers = [], []
    for e in doc["experts"]:
        path = directory / e["path"]
        experts.append(AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True))
        tokenizers.append(AutoTokenizer.from_pretrained(path, local_files_only=True))
    model = EnsembleMoE(cfg, experts, tokenizers)
    model.gate.load_state_dict(load_file(str(directory / "gate.safetensors")))
    return model.eval()
