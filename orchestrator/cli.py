"""The ``moe-orch`` command line: thin click commands over the orchestrator library."""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from orchestrator import __version__
from orchestrator.contract import DEVICES, WEIGHTS

ADDRESS_HELP = (
    "Ray cluster to join (e.g. ray://head:10001 or head:6379); default $RAY_ADDRESS, else a local "
    "Ray with its dashboard on 127.0.0.1. Joining sets RAY_AUTH_MODE=token for this client unless set "
    "(the token comes from $RAY_AUTH_TOKEN or ~/.ray/auth_token)."
)

WEIGHTS_HELP = ("Inference weights: int8 / int4 = the frozen base's linear layers as 8- / 4-bit weights (CPU; "
                "adapters stay float); LM families.")
DEVICE_HELP = ("Where the model runs: auto = cuda when torch sees a GPU and the family runs there (LM families: "
               "bfloat16 weights), else cpu.")
TRACKING_HELP = ("MLflow tracking store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the current "
                 "folder).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="moe-orch")
def main() -> None:
    """moe-orch: train, sweep, evaluate and serve Mixture-of-Experts models on Ray.

    One YAML file describes an experiment; Ray Train runs it, Ray Tune + Optuna sweep
    it, MLflow records it (sqlite:///mlflow.db by default).
    """


def _load(path: str, overrides: tuple[str, ...]):  # -> Experiment
    """Load + validate, or print every error to stderr and exit 2 (Ray is never started)."""
    from orchestrator.config import load_experiment
    from orchestrator.experiment import ExperimentError

    try:
        return load_experiment(path, overrides)
    except ExperimentError as exc:
        click.echo(f"{path}: {len(exc.errors)} error(s):", err=True)
        for line in exc.errors:
            click.echo(f"  {line}", err=True)
        sys.exit(2)


@main.command()
@click.argument("experiment", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
def validate(experiment: str, overrides: tuple[str, ...]) -> None:
    """Check EXPERIMENT (+ key=value OVERRIDES) and print the resolved config and search space.

    Errors go to stderr, one `path: got X, expected Y` line each, with exit code 2.
    """
    from orchestrator.schema import dump_yaml
    from orchestrator.space import describe_space

    exp = _load(experiment, overrides)
    click.echo(exp.to_yaml().rstrip())
    click.echo("# search space" + ("" if exp.sweep.space else ": empty"))
    if exp.sweep.space:
        click.echo(dump_yaml({"space": describe_space(exp.dims)}).rstrip())


@main.command()
@click.argument("experiment", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--resume", is_flag=True, help="Continue the newest run of this experiment from its latest checkpoint.")
@click.option("--address", default=None, help=ADDRESS_HELP)
def train(experiment: str, overrides: tuple[str, ...], resume: bool, address: str | None) -> None:
    """Train EXPERIMENT once with Ray Train (DDP or DeepSpeed), tracked in MLflow.

    OVERRIDES are key=value pairs typed by the schema, e.g. train.lr=3e-4 model.variant=more_a.
    Runs and checkpoints live in <storage.path>/<name>/train-* (./ray_results unless set; a bucket or
    shared mount on a cluster).
    """
    exp = _load(experiment, overrides)
    from orchestrator.ray_runtime import ray_session
    from orchestrator.trainer import run_train

    try:
        with ray_session(address):
            summary = run_train(exp, resume=resume)
    except Exception as exc:  # the traceback is already in the Ray output above
        _fail("train", exc)
    m = summary["metrics"]
    shown = " ".join(f"{label} {m[key]:.4f}" for key, label in exp.family_spec.progress
                     if isinstance(m.get(key), int | float))  # the family's progress metrics
    click.echo(f"done in {summary['wall_time_s']:.1f}s: step {m.get('step')} {shown} "
               f"(train loop {m.get('train_time_s', 0):.1f}s)")
    click.echo(f"checkpoint: {summary['checkpoint']}")
    click.echo(f"MLflow run: {summary['run_id']} ({summary['tracking_uri']})")


@main.command()
@click.argument("experiment", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--resume", is_flag=True, help="Finish an interrupted sweep without rerunning finished trials.")
@click.option("--address", default=None, help=ADDRESS_HELP)
def sweep(experiment: str, overrides: tuple[str, ...], resume: bool, address: str | None) -> None:
    """Sweep EXPERIMENT's sweep.space with Ray Tune + Optuna (TPE / NSGA-II) and ASHA.

    Each trial fits a TorchTrainer; MLflow gets a parent run, one nested run per trial,
    a summary CSV and Optuna plots. Results live in <storage.path>/<name>/sweep (./ray_results unless set).
    An interrupted sweep (Ctrl-C) exits with code 130; --resume finishes it.
    """
    exp = _load(experiment, overrides)
    from orchestrator.ray_runtime import ray_session
    from orchestrator.sweep import run_sweep

    try:
        with ray_session(address) as session:
            summary = run_sweep(exp, session, resume=resume)
    except Exception as exc:  # the traceback is already in the Ray output above
        _fail("sweep", exc)
    click.echo(summary["table"])
    click.echo(f"sweep wall time {summary['wall_time_s']:.1f}s; MLflow parent run {summary['parent_run_id']}")
    if summary["interrupted"]:
        sys.exit(130)


@main.command("serve")
@click.argument("target")
@click.argument("overrides", nargs=-1)
@click.option("--emit-config", "emit_path", type=click.Path(dir_okay=False), default=None,
              help="Write a Serve config file for `serve deploy` instead of starting the app.")
@click.option("--host", default=None, help="HTTP host (default: serve.host, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="HTTP port (default: serve.port, 8000).")
@click.option("--tracking-uri", default=None, help=TRACKING_HELP)
@click.option("--address", default=None, help=ADDRESS_HELP)
@click.option("--follow", is_flag=True,
              help="With TARGET models:/<name>@<alias>: poll the alias and swap the replicas to each new "
                   "version without restarting them (requests in flight finish on the old one).")
@click.option("--poll-s", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="How often --follow asks the registry.")
def serve_cmd(target: str, overrides: tuple[str, ...], emit_path: str | None, host: str | None, port: int | None,
              tracking_uri: str | None, address: str | None, follow: bool, poll_s: float) -> None:
    """Serve a trained model over HTTP with Ray Serve (FastAPI, batching, autoscaling).

    TARGET is an experiment YAML (its newest `moe-orch train` checkpoint), an MLflow run id, a
    registered model version (models:/<name>@current, models:/<name>@latest, models:/<name>/3), or
    a checkpoint directory of any family with a serve app (the Ensemble MoE: POST <route>/predict;
    the LM families: OpenAI's /v1/completions and /v1/chat/completions).
    OVERRIDES such as serve.max_replicas=4 apply to the serve settings (for a run id or directory,
    only serve.* keys). The app answers GET <route>/healthz and <route>/docs on 127.0.0.1:8000 by
    default; Ctrl-C or SIGTERM stops it.

    serve.ingress=haproxy puts HAProxy in front of replicas that serve HTTP themselves (autoscaling
    kept; about 3x the throughput of Ray's Python proxy on a 2-core machine, Linux).
    serve.ingress=direct serve.max_replicas=1 skips any proxy: the one replica answers on the port.
    """
    exp = _load(target, overrides) if target.endswith((".yaml", ".yml")) else None
    from serve.run import ServeError, serve_target

    try:
        serve_target(target, exp, overrides, emit_path, host, port, tracking_uri, address, echo=click.echo,
                     follow_s=poll_s if follow else None)
    except ServeError as exc:
        click.echo(str(exc), err=True)
        sys.exit(exc.exit_code)


@main.command("evaluate")
@click.argument("target")
@click.argument("settings", nargs=-1)
@click.option("--tasks", multiple=True,
              help="Shorthand for the tasks=[...] setting, comma-separated or repeated (MoRE: perplexity, babi, "
                   "arithmetic, generation, routing; default: all).")
@click.option("--limit", default=None, metavar="N|null",
              help="Shorthand for the limit=N setting: items per lm-eval task for a quick run (MixLoRA and the "
                   "other LM families); null = the full sets.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Also write the artifacts to this folder.")
@click.option("--tracking-uri", default=None, help=TRACKING_HELP)
@click.option("--experiment", default="moe-orch-evaluate", show_default=True,
              help="MLflow experiment of the new run made for a checkpoint directory or a base.")
@click.option("--family", "family_name", default=None,
              help="For a base model TARGET: the family whose evaluator runs (default: the one built on bases).")
@click.option("--weights", type=click.Choice(WEIGHTS), default="fp32", show_default=True, help=WEIGHTS_HELP)
@click.option("--device", type=click.Choice(DEVICES), default=None,
              help=DEVICE_HELP + " Default: the device setting (auto).")
def evaluate_cmd(target: str, settings: tuple[str, ...], tasks: tuple[str, ...], limit: str | None, out: str | None,
                 tracking_uri: str | None, experiment: str, family_name: str | None, weights: str,
                 device: str | None) -> None:
    """Evaluate a checkpoint with its family's evaluator (MoRE: WikiText-2 perplexity, bAbI 2/3,
    arithmetic, generation, routing plots).

    TARGET is an MLflow run id (its checkpoint; results are logged to that run), a checkpoint
    directory of any family, or a pretrained base such as smollm2-135m-instruct (its zero-shot
    scores; both go to a new MLflow run). SETTINGS are key=value pairs of the family's
    `evaluate:` section, e.g. babi_max_questions=null (MoRE) or limit=null (MixLoRA: lm-eval).
    """
    from orchestrator.evaluate import EvaluateError, evaluate_target

    task_list = [t.strip() for item in tasks for t in item.split(",") if t.strip()]
    overrides = settings + ((f"tasks=[{', '.join(task_list)}]",) if task_list else ())
    overrides += (f"limit={limit}",) if limit is not None else ()
    try:
        summary = evaluate_target(target, tracking_uri, overrides, out=out, experiment=experiment,
                                  family_name=family_name, weights=weights, device=device)
    except EvaluateError as exc:
        click.echo("evaluate: " + str(exc).replace("\n", "\n  "), err=True)
        sys.exit(2)
    except Exception as exc:
        _fail("evaluate", exc)
    for key, value in summary["metrics"].items():
        click.echo(f"{key:24s} {value:.4g}")
    click.echo(f"artifacts: {', '.join(summary['artifacts'])}" + (f" (copied to {out})" if out else ""))
    click.echo(f"MLflow run: {summary['run_id']} ({summary['tracking_uri']})")


@main.command("generate")
@click.argument("target")
@click.option("--prompt", required=True, help="The user message (the base's chat template wraps it).")
@click.option("--max-tokens", type=click.IntRange(1, 4096), default=128, show_default=True)
@click.option("--temperature", type=click.FloatRange(0), default=0.0, show_default=True, help="0 = greedy.")
@click.option("--family", "family_name", default=None,
              help="For a base model TARGET: the family that generates (default: the one built on bases).")
@click.option("--tracking-uri", default=None, help=TRACKING_HELP)
@click.option("--weights", type=click.Choice(WEIGHTS), default="fp32", show_default=True, help=WEIGHTS_HELP)
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True, help=DEVICE_HELP)
def generate_cmd(target: str, prompt: str, max_tokens: int, temperature: float, family_name: str | None,
                 tracking_uri: str | None, weights: str, device: str) -> None:
    """Stream a completion of PROMPT from TARGET: an MLflow run id, a checkpoint directory, or a
    pretrained base such as smollm2-135m-instruct (families with a generator: MixLoRA)."""
    from orchestrator.generate import GenerateError, generate_from

    try:
        generate_from(target, prompt, max_tokens, temperature, family_name, tracking_uri,
                      on_text=lambda piece: click.echo(piece, nl=False), weights=weights, device=device)
    except GenerateError as exc:
        click.echo(f"generate: {exc}", err=True)
        sys.exit(2)
    click.echo()


@main.command("report")
@click.argument("sweep_run_id")
@click.option("--metric", "metrics", multiple=True,
              help="A metric to compare (repeatable; default: the sweep's metric). Each trial's final value.")
@click.option("--by", multiple=True,
              help="Group by this param (repeatable; default: the swept keys but seeds, which are averaged over; "
                   "--by train.seed gives one row per seed).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for report.md, report.csv and report.png (default: report-<run id prefix>).")
@click.option("--tracking-uri", default=None, help=TRACKING_HELP)
def report_cmd(sweep_run_id: str, metrics: tuple[str, ...], by: tuple[str, ...], out: str | None,
               tracking_uri: str | None) -> None:
    """Compare a sweep's trials: a table (markdown and CSV) and a bar chart with error bars.

    SWEEP_RUN_ID is the sweep's MLflow parent run (`moe-orch sweep` prints it). Trials are grouped
    by the swept keys and averaged over seeds (mean and sample std); the files are also logged to
    the parent run under report/.
    """
    from orchestrator.report import ReportError, report_sweep

    try:
        report, files = report_sweep(sweep_run_id, tracking_uri, out, list(metrics) or None, list(by) or None)
    except ReportError as exc:
        click.echo(f"report: {exc}", err=True)
        sys.exit(2)
    click.echo(files[0].read_text())
    click.echo(f"wrote {', '.join(str(f) for f in files)}; logged to run {report.parent_id} under report/")


@main.command("compare")
@click.option("--a", "side_a", multiple=True, required=True, metavar="RUN",
              help="Side A: an evaluated run (MLflow run id or folder); repeat for seeds.")
@click.option("--b", "side_b", multiple=True, required=True, metavar="RUN", help="Side B, the same way.")
@click.option("--task", default="arc_easy", show_default=True, help="The task whose items are compared.")
@click.option("--metric", default="acc", show_default=True, help="The per-item metric (e.g. acc, acc_norm).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--tracking-uri", default=None, help=TRACKING_HELP)
def compare_cmd(side_a: tuple[str, ...], side_b: tuple[str, ...], task: str, metric: str, as_json: bool,
                tracking_uri: str | None) -> None:
    """Two models on the same items: mean(A) - mean(B) with a 95 % paired bootstrap interval.

    Each RUN is an MLflow run id or a folder whose evaluation wrote <task>_items.jsonl (the LM
    families' `moe-orch evaluate` does). A side's runs (seeds) are averaged per item; the items that
    every run scored are compared. E.g. MixLoRA against LoRA, two seeds each:

    \b
    moe-orch compare --a <mixlora s0> --a <mixlora s1> --b <lora s0> --b <lora s1>
    """
    from orchestrator.compare import CompareError, compare

    try:
        result = compare(list(side_a), list(side_b), task, metric, tracking_uri)
    except CompareError as exc:
        click.echo(f"compare: {exc}", err=True)
        sys.exit(2)
    click.echo(result.to_json() if as_json else result.text())


# -- predict: a family's offline inference (the Ensemble MoE seed's inference.py) -----------------------


@main.command("predict")
@click.argument("target")
@click.option("--text", "texts", multiple=True, metavar="TEXT", help="A text to classify (repeatable).")
@click.option("--file", "texts_file", type=click.Path(exists=True, dir_okay=False, allow_dash=True), default=None,
              help="A UTF-8 file of texts, one per line (blank lines skipped); - reads standard input.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per text and line: text, label, probabilities, gate_weights.")
@click.option("--tracking-uri", default=None, help=TRACKING_HELP)
def predict_cmd(target: str, texts: tuple[str, ...], texts_file: str | None, as_json: bool,
                tracking_uri: str | None) -> None:
    """Classify texts offline with a trained model and show how its gate weighted the experts.

    TARGET is an MLflow run id (its checkpoint artifact) or a checkpoint directory (a checkpoint, a Ray
    checkpoint, or a train run folder: its newest) of a family with a predictor (the Ensemble MoE).
    The texts come from --text (repeatable) and --file, in that order. Per text it prints the
    predicted label, its probability and the gate weight of each expert (they sum to 1); --json
    prints one JSON object per line instead. Bad input exits with code 2.

    Examples:

    \b
    moe-orch predict <run id> --text "a gorgeous, witty movie" --text "flat and lifeless"
    moe-orch predict ray_results/ensemble/train-<time> --file texts.txt --json
    """
    import dataclasses
    import json

    from orchestrator.predict import PredictError, predict_texts

    given = list(texts)
    if texts_file is not None:
        try:
            with click.open_file(texts_file, encoding="utf-8") as f:
                from_file = [line.rstrip("\r\n") for line in f if line.strip()]
        except UnicodeDecodeError as exc:
            raise click.BadParameter(f"{texts_file} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                                     param_hint="'--file'") from exc
        if not from_file:
            raise click.BadParameter(f"{texts_file} holds no text (one per line expected)", param_hint="'--file'")
        given += from_file
    if not given:
        raise click.UsageError("no texts: give --text TEXT (repeatable) or --file FILE (one text per line)")
    try:
        predictions = predict_texts(target, given, tracking_uri)
    except PredictError as exc:
        click.echo(f"predict: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:
        _fail("predict", exc)
    for i, p in enumerate(predictions, 1):
        if as_json:
            click.echo(json.dumps(dataclasses.asdict(p), ensure_ascii=False))
            continue
        gate = ", ".join(f"{name} {weight:.3f}" for name, weight in p.gate_weights.items())
        click.echo(f"[{i}] {p.text}\n    {p.label} (p={p.probabilities[p.label]:.3f})   gate: {gate}")


# -- end of predict -------------------------------------------------------------------------------------


def _fail(command: str, exc: BaseException) -> NoReturn:
    """One line on stderr naming the error (the traceback is already in Ray's output above), exit 1."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    click.echo(f"{command} failed: {type(exc).__name__}: {first}", err=True)
    sys.exit(1)


if __name__ == "__main__":
    main()
