"""Training the LLM-judge MoE: one question per iteration, value learning from the rewards.

Each iteration (``JudgeRecipe.iterate``), after the tutorial's loop:

1. the question ``iteration % len(questions)`` (the data section's seeded subset);
2. the experts that answer: all, or ``experts_per_query`` chosen epsilon-greedy on the values
   (``values.ValueLearner.choose``);
3. ``pipeline.run_round``: answers, the judges' selection, the intrinsic reward, the ground truth
   of the selected answer;
4. the credited expert (the repetition rule), total reward = intrinsic + external (ground truth
   1.0 / 0.0, or the tutorial's uniform(0.3, 1) with ``external_reward: random``), the value
   update, the exploration schedule; a round with no selection updates nothing (``skipped``).

Reported every iteration (and so logged to MLflow at ``step`` = iterations done): the selected and
credited expert, its judge score, the rewards, every value (``value/E<i>``), the exploration rate,
tokens, calls and seconds, and the running accuracy of the selected answers.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

from trainables.llm_judge.backends import Caller, make_backend
from trainables.llm_judge.checkpoint import JudgeCheckpoint, load, save
from trainables.llm_judge.experts import seed_for
from trainables.llm_judge.pipeline import Team, csv_text, run_round
from trainables.llm_judge.tasks import load_questions
from trainables.llm_judge.values import ValueLearner
from trainables.training.iterative import IterativeRecipe
from trainables.training.manifest import read_manifest


class JudgeRecipe(IterativeRecipe):
    """The LLM-judge MoE's iterations (module docstring)."""

    def setup(self, resume_dir: Path | None) -> None:
        exp, cfg, data = self.experiment, self.experiment.model, self.experiment.data
        self.seed = exp.train.seed
        self.questions = load_questions(data.dataset, data.split, data.limit, data.root, seed=self.seed,
                                        prompts_file=data.prompts_file)
        if resume_dir is not None:
            self.checkpoint = load(resume_dir, read_manifest(resume_dir))
            self.checkpoint.config = cfg  # a resumed run keeps its drawn team and state, under this config
        else:
            self.checkpoint = JudgeCheckpoint(cfg, Team.draw(cfg, self.seed), ValueLearner.fresh(cfg).state,
                                              {"graded": 0, "correct": 0, "tokens": 0, "skipped": 0},
                                              csv_text([], header=True))
        self.learner = ValueLearner(cfg, self.checkpoint.state)
        self.loop = asyncio.new_event_loop()
        self.caller = Caller(make_backend(cfg), cfg.max_concurrency, cfg.timeout_s, cfg.retries, cfg.backoff_s)
        team = self.checkpoint.team
        print(f"[{exp.name}] {len(self.questions)} {data.dataset} questions; experts: "
              + "; ".join(f"E{i} {e.model} T={e.temperature:.2f} p={e.top_p:.2f}" for i, e in enumerate(team.experts)),
              flush=True)

    def iterate(self, iteration: int) -> dict[str, float]:
        cfg, ck, learner = self.experiment.model, self.checkpoint, self.learner
        rng = random.Random(f"{self.seed}/{iteration}")
        question = self.questions[iteration % len(self.questions)]
        experts, explored = learner.choose(rng)
        self.caller.reset()
        result = self.loop.run_until_complete(
            run_round(self.caller, ck.team, cfg, question, experts, seed=seed_for(self.seed, iteration),
                      log=lambda line: print(f"[{self.experiment.name}] iteration {iteration}: {line}", flush=True)))
        counts = self.caller.reset()
        metrics: dict[str, float] = {"experts_answered": len(result.answers), "explored": float(explored),
                                     "expert_failures": len(result.expert_failures),
                                     "judge_failures": len(result.selection.failures) if result.selection else 0,
                                     "iteration_s": result.seconds, "tokens": counts["prompt_tokens"]
                                     + counts["completion_tokens"], **counts}
        if result.selection is None:
            ck.counts["skipped"] += 1
            print(f"[{self.experiment.name}] iteration {iteration} skipped: {result.error}", flush=True)
            metrics["skipped"] = 1.0
        else:
            selected = result.selection.best
            credited = learner.credit(selected, rng)
            correct = result.correct.get(selected)
            if cfg.external_reward == "random" or correct is None:
                external = rng.uniform(0.3, 1.0)
            else:
                external = 1.0 if correct else 0.0
            total = result.intrinsic_reward + external
            learner.update(credited, total)
            if correct is not None:
                ck.counts["graded"] += 1
                ck.counts["correct"] += int(correct)
                metrics["correct"] = float(correct)
            metrics.update(skipped=0.0, selected_expert=selected, credited_expert=credited,
                           judge_score=result.selection.scores[selected], intrinsic_reward=result.intrinsic_reward,
                           external_reward=external, total_reward=total)
        learner.end_iteration(iteration)
        ck.counts["tokens"] += metrics["tokens"]
        ck.candidates_csv += csv_text(result.csv_rows(iteration, ck.team), header=False)
        metrics.update({f"value/E{i}": v for i, v in enumerate(learner.state.values)},
                       cumulative_reward=learner.state.cumulative_reward,
                       exploration_rate=learner.state.exploration_rate,
                       iterations_skipped=ck.counts["skipped"])
        if ck.counts["graded"]:
            metrics["accuracy"] = ck.counts["correct"] / ck.counts["graded"]
        return metrics

    def finished(self) -> bool:
        return self.learner.finished()

    def save_model(self, directory: Path, metadata: dict[str, Any]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        save(directory, self.checkpoint, metadata)

    def close(self) -> None:
        if hasattr(self, "caller"):
            self.loop.run_until_complete(self.caller.backend.aclose())
            self.loop.close()
