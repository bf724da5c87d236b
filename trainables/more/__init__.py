"""MoRE (Mixture of Recurrent Experts): a decoder-only MoE LM with five variants."""

from trainables.more.checkpoint import load_checkpoint, read_description, save_checkpoint
from trainables.more.config import POS_ENCODINGS, VARIANTS, MoREConfig
from trainables.more.model import LayerRouting, MoRELM, MoREOutput

__all__ = [
    "POS_ENCODINGS",
    "VARIANTS",
    "LayerRouting",
    "MoREConfig",
    "MoRELM",
    "MoREOutput",
    "load_checkpoint",
    "read_description",
    "save_checkpoint",
]
