"""Our CPU int8 matmul (trainables/lm/int8_kernel.py, kernels/int8_matmul.cpp), built by
trainables/lm/cpu_extension.py on this machine: against the dequantized weight's product; a row's result
whatever its batch; Int8Linear with and without it; the build cached per machine, torch's kernel where
ours cannot be built or is turned off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainables.lm.int8_kernel import KERNEL_MAX_ROWS, int8_matmul
from trainables.lm.quantize import Int8Linear

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def op():
    found = int8_matmul()
    assert found is not None, "the int8 kernel did not build here (see the warning logged above)"
    return found


def _int8(n: int, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=generator)
    return w, torch.rand(n, generator=generator) / 127 + 1e-4


@pytest.mark.parametrize("k", [7, 45, 64, 576, 1537])  # below, across and above the 16/32-wide vector loops
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 9, KERNEL_MAX_ROWS])
def test_int8_matmul_is_the_dequantized_weights_product(op, m: int, k: int) -> None:
    generator = torch.Generator().manual_seed(m * 10_000 + k)
    w, scale = _int8(37, k, generator)
    x = torch.randn(m, k, generator=generator)
    expected = x.double() @ (w.double() * scale.double()[:, None]).T  # (m, 37)
    out = op(x, w, scale)
    assert out.shape == (m, 37) and out.dtype == torch.float32
    # float32 summation of k products: a few ulps of the sum of magnitudes
    bound = 1e-6 * (x.abs().double() @ (w.abs().double() * scale.double()[:, None]).T) + 1e-7
    assert ((out.double() - expected).abs() <= bound).all(), (out.double() - expected).abs().max()
    for i in range(m):  # a row's result is the same whatever else is in the batch, to the bit
        assert torch.equal(op(x[i:i + 1], w, scale), out[i:i + 1])
    strided = torch.randn(m, 2 * k + 3, generator=generator)[:, 3:k + 3]  # rows with a stride of their own
    assert torch.equal(op(strided, w, scale), op(strided.contiguous(), w, scale))
    assert torch.equal(op(x.bfloat16(), w, scale), op(x.bfloat16().float(), w, scale))  # any float type in


def test_int8linear_uses_it_up_to_its_row_limit_and_torchs_kernel_above(op) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 40, bias=True)
    q = Int8Linear(linear)
    dequantized = q.weight_int8.double() * q.scale.double()[:, None]  # (out, in)
    x = torch.randn(KERNEL_MAX_ROWS + 4, 96)
    expected = (x.double() @ dequantized.T + linear.bias.double()).float()
    few, many = q(x[:KERNEL_MAX_ROWS]), q(x)
    torch.testing.assert_close(few, expected[:KERNEL_MAX_ROWS], rtol=1e-5, atol=1e-5)  # ours: float32 in
    # torch's kernel takes the activations in bfloat16: further from the float32 product, within its rounding
    assert (many - expected).abs().max() > 10 * (few - expected[:KERNEL_MAX_ROWS]).abs().max()
    torch.testing.assert_close(many, expected, rtol=0.02, atol=0.02)
    kernel = q.row_kernel()
    assert torch.equal(kernel(x[:3]), few[:3]) and torch.equal(kernel(x), many)


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=600)


def _path_without_ninja(folder: Path) -> str:
    """A PATH of one folder that links every program on this PATH but ``ninja`` (and nothing of the venv)."""
    folder.mkdir()
    venv_bin = Path(sys.executable).parent
    for entry in os.environ["PATH"].split(os.pathsep):
        if not entry or Path(entry) == venv_bin or not Path(entry).is_dir():
            continue
        for program in Path(entry).iterdir():
            link = folder / program.name
            if program.name != "ninja" and not link.exists() and not link.is_symlink():
                link.symlink_to(program)
    return str(folder)


_USE = ("import logging, torch; logging.basicConfig(level=logging.INFO)\n"
        "from trainables.lm.int8_kernel import int8_matmul\n"
        "from trainables.lm.quantize import Int8Linear\n"
        "print('kernel', int8_matmul() is not None)\n"
        "q = Int8Linear(torch.nn.Linear(32, 16)); print('out', tuple(q(torch.randn(2, 32)).shape))\n")


@pytest.mark.slow
def test_the_build_is_cached_per_machine_and_torchs_kernel_serves_without_a_compiler(tmp_path: Path) -> None:
    cache = str(tmp_path / "kernels")
    # no compiler: a warning, then torch's kernel; nothing cached
    none = _python(_USE, MOE_ORCH_KERNEL_CACHE=cache, CXX="/bin/false")
    assert none.returncode == 0, none.stderr
    assert "kernel False" in none.stdout and "out (2, 16)" in none.stdout
    assert "our CPU kernel is not available" in none.stderr
    assert not list(tmp_path.glob("kernels/*.so"))
    # with one: built once into the cache, then loaded from it by the next process; the build finds the
    # lock's ninja beside this Python when PATH has none (a venv used without activating it)
    first = _python(_USE, MOE_ORCH_KERNEL_CACHE=cache, PATH=_path_without_ninja(tmp_path / "bin"))
    assert first.returncode == 0, first.stderr
    assert "kernel True" in first.stdout and "building our CPU kernel" in first.stderr
    assert len(list(tmp_path.glob("kernels/*.so"))) == 1 and not list(tmp_path.glob("kernels/*.partial"))
    second = _python(_USE, MOE_ORCH_KERNEL_CACHE=cache)
    assert "kernel True" in second.stdout and "building" not in second.stderr, second.stderr
    # turned off: torch's kernel
    off = _python(_USE, MOE_ORCH_KERNEL_CACHE=cache, MOE_ORCH_KERNELS_OFF="mixlora_one_token, int8_matmul")
    assert "kernel False" in off.stdout and "out (2, 16)" in off.stdout and "not available" not in off.stderr


def test_a_build_that_cannot_be_cached_is_still_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """The copy into the cache, not the compiler (the test above builds for real): a cache folder that
    cannot be made (a file is in its way) leaves the built library loaded and says so; one that can gets
    the file, whole, and no partial one."""
    import torch.utils.cpp_extension

    from trainables.lm.cpu_extension import _build

    def fake_load(name: str, build_directory: str, **kwargs: object) -> None:  # what load() leaves behind
        (Path(build_directory) / f"{name}.so").write_bytes(b"built")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", fake_load)
    (tmp_path / "a-file").write_text("")
    _build(tmp_path / "a-file" / "kernels" / "moe_orch_x_0.so", REPO / "trainables/lm/kernels/int8_matmul.cpp")
    assert "built, but not cached" in caplog.text
    _build(tmp_path / "cache" / "moe_orch_x_0.so", REPO / "trainables/lm/kernels/int8_matmul.cpp")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["moe_orch_x_0.so"]
    assert (tmp_path / "cache" / "moe_orch_x_0.so").read_bytes() == b"built"
