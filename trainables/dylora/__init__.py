"""DyLoRA-MoE: continual learning with LoRA experts added at run time (``../shared/specs/dylora-moe.md``)."""
