"""The DyLoRA-MoE family's recipe for the shared training loop (DDP): one run over the whole stream.

- data: ``data.phases`` of Code Alpaca skills (``trainables.dylora.stream``), chat-formatted with the
  loss on the answer only; batch ``i`` comes from the skill of the phase step ``i`` falls in (``naive``
  and ``dylora``; ``replay`` mixes ``model.replay_fraction`` of earlier skills in), or from all the stream's
  skills mixed (``joint``). No skill label reaches the model;
  each skill keeps ``data.heldout`` held-out examples (split by ``data.heldout_seed``, else ``train.seed``);
- model: the frozen base (``model.base``) with a ``DyLoRAModel`` pool; the first expert is born at step 0;
- after every optimizer step (``on_step_end``, every rank alike: the values are averaged over ranks):
  the router's immature prototypes follow the features routed to them, experts mature, and, for
  ``dylora``, the ``NoveltyDetector`` decides; a novel window adds an expert (fresh slot, its
  prototype the window's mean feature, seeding LR, older experts frozen);
- evaluation (every ``train.eval_every`` steps): per skill held-out ``loss``, ``ppl`` and answer-token
  ``acc`` (``skill/<name>/...``; ``val_loss`` is their mean); at step 0 (before training) and at every
  phase end also MBPP / HumanEval pass@k (``evaluate:`` section; ``trainables.codeeval``). Phase
  ends add ``registry/phase`` and ``registry/experts``: the orchestrator registers those checkpoints;
- checkpoint: the pool directory (``trainables.dylora.checkpoint``) whose metadata holds the matrix rows,
  code scores, lifecycle events and per-step curves the evaluator turns into metrics and pictures.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.dylora import evaluation
from trainables.dylora.checkpoint import restore_pool, save_pool
from trainables.dylora.experts import DyLoRAModel, ExpertManager
from trainables.dylora.novelty import NoveltyDetector
from trainables.dylora.router import DynamicHybridRouter
from trainables.dylora.schedule import TwoPhaseLRScheduler
from trainables.dylora.stream import SkillStream, skill_splits, stream_batches
from trainables.lm import instructions
from trainables.lm.base import load_base
from trainables.training import Recipe, StepOutput
from trainables.training.metrics import all_reduce_sum, perplexity_of

Batch = dict[str, torch.Tensor]  # input_ids, attention_mask, labels: each (B, T)


class DyLoRARecipe(Recipe):
    """Continual learning over ``data.phases`` (``experiment.model`` is its ``DyLoRAConfig``)."""

    throughput_unit = "tokens"

    # -- set-up ---------------------------------------------------------------------------------

    def setup(self) -> None:
        exp = self.experiment
        cfg, data = exp.model, exp.data
        self.base, self.tokenizer = load_base(cfg.base)
        self.stream = SkillStream(data.phase_list)
        self.train_sets: dict[str, list] = {}
        self.heldout_sets: dict[str, list] = {}
        for skill in self.stream.skills:
            split_seed = exp.train.seed if data.heldout_seed is None else data.heldout_seed
            train, heldout = skill_splits(skill, data.root, data.heldout, split_seed, data.max_train_examples,
                                         data.skills)
            self.train_sets[skill] = [instructions.encode(self.tokenizer, ex, cfg.max_length) for ex in train]
            self.heldout_sets[skill] = [instructions.encode(self.tokenizer, ex, cfg.max_length) for ex in heldout]
        self.code_problems = evaluation.code_problems(exp.evaluate, data.root)
        self.events: list[dict[str, Any]] = [{"step": b, "kind": "phase_boundary", "phase": i + 1}
                                             for i, b in enumerate(self.stream.boundaries())]
        self.curves: dict[str, list[tuple[int, float]]] = {}
        self.rows: list[dict[str, Any]] = []  # {"phase", "step", "skills": {name: {loss, ppl, acc}}, "code": {...}}
        self._window_features: deque[torch.Tensor] = deque(maxlen=cfg.detector_window)
        self._reset_step_stats()

    def build_model(self, resume_dir: Path | None) -> nn.Module:
        cfg, seed = self.experiment.model, self.experiment.train.seed
        model = DyLoRAModel(self.base, cfg)
        model.set_template(self.tokenizer)
        self.manager = ExpertManager(model, cfg, seed)
        self.detector = NoveltyDetector(cfg) if cfg.grows else None
        if resume_dir is not None:
            from trainables.training.manifest import read_manifest

            manifest = read_manifest(resume_dir)
            restore_pool(model, self.manager, self.detector, resume_dir, manifest)
            state = manifest.metadata.get("continual", {})
            boundaries = [e for e in self.events if e["kind"] == "phase_boundary"]  # this stream's (it may have grown)
            self.events = [e for e in state.get("events", []) if e["kind"] != "phase_boundary"] + boundaries
            self.rows = state.get("rows", [])
            self.curves = {k: [tuple(p) for p in v] for k, v in state.get("curves", {}).items()}
        else:
            self.manager.add_expert(0)
            self.events.append({"step": 0, "kind": "expert_added", "expert": 0, "detected": False,
                                "seed_end": cfg.seed_steps})
            self.events.append({"step": 0, "kind": "router_mode", "mode": model.router.mode})
            self.rows.append(self._phase_row(model, phase=0, step=0))  # row 0: the base, before any training
        self.model = model
        if self.worker.rank == 0:
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            print(f"[{self.experiment.name}] {cfg.method}: {cfg.max_experts} expert slots of "
                  f"{trainable // cfg.max_experts:,} parameters, {self.manager.num_active} active", flush=True)
        return model

    def param_groups(self, model: nn.Module) -> list[dict]:
        return self.manager.param_groups(self.experiment.train.lr)

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        births = [None] * self.experiment.model.max_experts
        self.scheduler = TwoPhaseLRScheduler(optimizer, self.experiment.model, births)
        for info in self.manager.experts:  # a resumed run's state_dict overwrites these with the same values
            self.scheduler.births[info.slot] = info.birth_step
            self.scheduler.frozen_at[info.slot] = info.frozen_step
        self.scheduler._apply_now()
        return self.scheduler

    def batches(self, generator: torch.Generator) -> Iterator[Batch]:
        method = self.experiment.model.method
        mode = method if method in ("joint", "replay") else "stream"
        return stream_batches(self.stream, self.train_sets, self.experiment.train.batch_size,
                              self.tokenizer.pad_token_id, generator, lambda: self.step, mode,
                              self.experiment.model.replay_fraction)

    # -- steps ----------------------------------------------------------------------------------

    def _reset_step_stats(self) -> None:
        slots, dim = self.experiment.model.max_experts, self.base.config.hidden_size
        self._loss_sum = self._entropy_sum = 0.0
        self._micro = 0
        self._feature_sums = torch.zeros(slots, dim)
        self._feature_counts = torch.zeros(slots)

    def forward(self, model: nn.Module, batch: Batch) -> StepOutput:
        batch = {k: v.to(self.worker.device) for k, v in batch.items()}
        out = model(**batch)
        features, _, probs = self.model.last_routing  # (B, d), (B, E), (B, E)
        entropy = DynamicHybridRouter.normalised_entropy(probs.detach())
        winners = probs.argmax(-1).cpu()
        self._feature_sums.index_add_(0, winners, features.detach().cpu())
        self._feature_counts.index_add_(0, winners, torch.ones(len(winners)))
        self._loss_sum += out.loss.item()
        self._entropy_sum += entropy
        self._micro += 1
        return StepOutput(out.loss, {"train_loss": out.loss, "router_entropy": entropy},
                          num_items=int(batch["attention_mask"].sum()))

    def on_step_end(self, model: nn.Module, step: int) -> None:
        """Prototypes, maturity and novelty after ``step`` optimizer steps (same values on every rank)."""
        scalars = all_reduce_sum(torch.tensor([self._loss_sum, self._entropy_sum, float(self._micro)]))
        sums, counts = all_reduce_sum(self._feature_sums.clone()), all_reduce_sum(self._feature_counts.clone())
        loss, entropy = (scalars[0] / scalars[2]).item(), (scalars[1] / scalars[2]).item()
        self._window_features.append(sums.sum(0) / counts.sum().clamp_min(1))
        self._reset_step_stats()
        router = self.model.router
        mode_before = router.mode
        router.update_prototypes(sums, counts)
        for info in self.manager.step_done(step, loss):
            self.events.append({"step": step, "kind": "expert_mature", "expert": info.slot})
        self._curve("dylora/train_loss", step, loss)
        self._curve("dylora/router_entropy", step, entropy)
        if self.detector is not None:
            distance = self._window_distance()
            if distance is not None:
                self._curve("dylora/prototype_distance", step, distance)
            decision = self.detector.observe(step, self.manager.num_active, entropy, loss, self.manager.full,
                                             distance)
            if decision is not None:
                # the loss test is two-sided: its curve is |z|, against the one threshold line
                self._curve("dylora/detector_value", step,
                            abs(decision.value) if decision.criterion == "loss" else decision.value)
                self._curve("dylora/threshold", step, decision.threshold)
                if decision.novel:
                    self._add_expert(step, decision)
        for slot in range(self.manager.num_active):
            self._curve(f"lr/expert_{slot}", step, self.scheduler.get_last_lr()[slot])
        if router.mode != mode_before:
            self.events.append({"step": step, "kind": "router_mode", "mode": router.mode})

    def _window_distance(self) -> float | None:
        """Cosine distance of the window's mean routing feature to the nearest expert prototype (None until
        the window is full or while no prototype is set)."""
        router = self.model.router
        known = router.initialised[:router.num_active]
        if len(self._window_features) < self.experiment.model.detector_window or not bool(known.any()):
            return None
        mean = torch.nn.functional.normalize(torch.stack(list(self._window_features)).mean(0), dim=-1)
        prototypes = torch.nn.functional.normalize(router.prototypes[:router.num_active][known], dim=-1)
        return float(1 - (prototypes @ mean).max())

    def _add_expert(self, step: int, decision: Any) -> None:
        prototype = torch.stack(list(self._window_features)).mean(0)  # the novel window's mean feature
        before = [e.slot for e in self.manager.experts if e.frozen_step is None]
        info = self.manager.add_expert(step, prototype)
        self.scheduler.expert_added(info.slot, step)
        for slot in before:
            if self.manager.experts[slot].frozen_step is not None:
                self.scheduler.expert_frozen(slot, step)
                self.events.append({"step": step, "kind": "lr_phase", "expert": slot, "phase": "frozen"})
        self.detector.expert_added(step)
        self._window_features.clear()
        self.events.append({"step": step, "kind": "expert_added", "expert": info.slot, "detected": True,
                            "seed_end": step + self.experiment.model.seed_steps, "criterion": decision.criterion,
                            "value": decision.value, "threshold": decision.threshold})
        if self.worker.rank == 0:
            print(f"[{self.experiment.name}] step {step}: novelty ({decision.criterion} {decision.value:.3f} > "
                  f"{decision.threshold}): expert {info.slot} added", flush=True)

    def _curve(self, key: str, step: int, value: float) -> None:
        self.curves.setdefault(key, []).append((step, float(value)))

    # -- evaluation -----------------------------------------------------------------------------

    def _phase_row(self, model: DyLoRAModel, phase: int, step: int) -> dict[str, Any]:
        """Held-out scores of every skill and the code benchmarks, as one row of the matrix."""
        skills = evaluation.skill_scores(model, self.heldout_sets, self.tokenizer.pad_token_id,
                                         self.experiment.train.batch_size, self.worker.device)
        code = evaluation.code_scores(model, self.tokenizer, self.code_problems, self.experiment.evaluate,
                                      seed=self.experiment.train.seed, rank=self.worker.rank,
                                      world_size=self.worker.world_size, log=self._log)
        return {"phase": phase, "step": step, "skills": skills, "code": code,
                "num_experts": self.manager.num_active}

    def _log(self, line: str) -> None:
        if self.worker.rank == 0:
            print(f"[{self.experiment.name}] {line}", flush=True)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        step, ends = self.step, self.stream.phase_ends()
        metrics: dict[str, float] = {"phase": float(self.stream.phase_at(max(0, step - 1)) + 1)}
        if step in ends:
            row = self._phase_row(model, phase=ends.index(step) + 1, step=step)
            self.rows = [r for r in self.rows if r["phase"] != row["phase"]] + [row]
            metrics.update({"registry/phase": float(row["phase"]), "registry/experts": float(row["num_experts"])})
            metrics.update({k: v for k, v in row["code"].items() if isinstance(v, (int, float))})
            skills = row["skills"]
        else:
            skills = evaluation.skill_scores(model, self.heldout_sets, self.tokenizer.pad_token_id,
                                             self.experiment.train.batch_size, self.worker.device)
        for name, scores in skills.items():
            metrics.update({f"skill/{name}/{k}": v for k, v in scores.items() if k != "items"})
        metrics["val_loss"] = sum(s["loss"] for s in skills.values()) / len(skills)
        router = self.model.router
        metrics.update({"dylora/num_experts": float(self.manager.num_active),
                        "dylora/router_sparse": float(router.mode == "sparse")})
        if self.curves.get("dylora/detector_value"):
            metrics["dylora/detector_value"] = self.curves["dylora/detector_value"][-1][1]
        rates = self.scheduler.get_last_lr()
        for slot in range(self.manager.num_active):
            metrics[f"lr/expert_{slot}"] = rates[slot]
        metrics["lr"] = max(rates)  # the loop reports the first group's, a frozen expert's 0 after a birth
        if step == self.stream.total_steps:
            metrics.update(evaluation.detection_summary(self.events, self.stream.boundaries()))
        return metrics

    def save_model(self, model: nn.Module, directory: Path, metadata: dict[str, Any]) -> None:
        continual = {"phases": self.stream.phases, "boundaries": self.stream.boundaries(),
                     "rows": self.rows, "events": self.events, "curves": self.curves,
                     "method": self.experiment.model.method}
        save_pool(self.model, self.manager, self.detector, self.experiment.model, directory,
                  {**metadata, "continual": continual})

    def checkpoint_metadata(self, metrics: dict[str, float]) -> dict[str, Any]:
        return {"val_loss": metrics.get("val_loss"), "skills": self.stream.skills,
                "perplexity": perplexity_of(metrics.get("val_loss", 0.0))}
