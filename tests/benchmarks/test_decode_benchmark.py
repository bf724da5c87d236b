"""``benchmarks/decode.py`` as a user runs it: a quick run on tiny-llama writes one record per (model, weights,
batch), each measured or skipped with its reason, and ``--device cuda`` is refused where torch sees no GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "decode.py"


def _decode(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def test_a_quick_run_writes_a_record_for_every_model_weights_and_batch(tmp_path: Path) -> None:
    out = tmp_path / "decode.json"
    done = _decode("--json", str(out), "--base", "tiny-llama", "--quick", "--threads", "1", "--batch", "1,2",
                   "--models", "base,lora,mixlora,llama_cpp", "--weights", "fp32,int8")
    assert done.returncode == 0, done.stderr
    records = json.loads(out.read_text())
    assert {(r["model"], r["weights"], r["batch"]) for r in records} == {
        (m, w, b) for m in ("base", "lora", "mixlora", "llama_cpp") for w in ("fp32", "int8") for b in (1, 2)}
    measured = [r for r in records if "skipped" not in r]
    assert {r["model"] for r in measured} - {"llama_cpp"} == {"base", "lora", "mixlora"}
    llama_cpp = [r for r in records if r["model"] == "llama_cpp" and (r["weights"], r["batch"]) != ("fp32", 1)]
    assert all("skipped" in r for r in llama_cpp)  # its own GGUF weights, one sequence
    assert all(r["tokens_per_s"] > 0 and r["device"] == "cpu" and r["dtype"] == "float32" and not r["compiled"]
               for r in measured)
    assert all(r["merged"] == (r["model"] != "base") for r in measured)
    assert all(r["openmp"] == {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "300000"} for r in measured)
    assert "mixlora" in done.stdout and "x base" in done.stdout  # the table


def test_ratios_are_taken_within_rounds(tmp_path: Path) -> None:
    out = tmp_path / "decode.json"
    done = _decode("--json", str(out), "--base", "tiny-llama", "--tokens", "4", "--repeats", "3", "--threads", "1",
                   "--batch", "1", "--models", "base,mixlora", "--weights", "fp32,int8")
    assert done.returncode == 0, done.stderr
    records = {(r["model"], r["weights"]): r for r in json.loads(out.read_text())}
    for key in ("x_base", "x_fp32_tokens_per_s"):
        holders = [r for r in records.values() if key in r]
        assert holders, key
        for r in holders:
            low, high = r[key + "_range"]
            assert 0 < low <= r[key] <= high
    assert {m for m, r in records.items() if "x_base" in r} == {("mixlora", "fp32"), ("mixlora", "int8")}
    assert "x_fp32_tokens_per_s" in records["base", "int8"] and "x_base" not in records["base", "fp32"]
    assert done.stderr.count("round ") == 3  # progress, one line a round


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_is_refused_without_a_gpu(tmp_path: Path) -> None:
    done = _decode("--json", str(tmp_path / "d.json"), "--device", "cuda", "--quick")
    assert done.returncode == 2 and "torch sees no CUDA device" in done.stderr
    assert not (tmp_path / "d.json").exists()
