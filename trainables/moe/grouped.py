"""A grouped expert FFN with a hand-written backward.

Rows of ``x`` arrive grouped by expert (``counts[e]`` rows for expert e, in order). For
each expert the forward runs the input matmul(s), the activation and the output matmul
on that expert's contiguous slice of rows while it is still in cache, writing into
preallocated (N, ...) buffers. The backward mirrors it, expert by expert, and writes
each expert's weight gradient straight into its slice of one (E, ...) buffer, which is
never zero-filled first (only the slices of experts that got no rows are zeroed).

Layout choices that the CPU timings (``benchmarks/moe_layer.py``) rest on:

- SwiGLU's gate and up projections are one (E, D, 2H) parameter, but the forward
  computes them into two separate contiguous (N, H) buffers (two matmuls against the
  two column halves of ``w_in[e]``). Elementwise kernels on the halves of one (N, 2H)
  buffer are strided and ran about 2x slower than on contiguous rows.
- The forward keeps the activation's inputs and outputs (gate, up, silu(gate), and the
  activation), as autograd over a dense SwiGLU does, so the backward recomputes
  nothing.

Autograd over a python loop of ``x_e @ w[e]`` would get the same numbers, but it pays
for a ``cat`` of the per-expert outputs and a ``stack`` of the E weight gradients.
"""

from __future__ import annotations

import torch


def _row_slices(counts: list[int]) -> list[tuple[int, slice]]:
    """``(expert, rows)`` for every expert that received at least one row."""
    out, start = [], 0
    for e, n in enumerate(counts):
        if n:
            out.append((e, slice(start, start + n)))
        start += n
    return out


class GroupedFFN(torch.autograd.Function):
    """``y[rows of e] = act(x[rows of e] @ w_in[e]) @ w_out[e]`` for every expert e.

    ``swiglu``: ``act(h) = silu(h[:, :H]) * h[:, H:]`` with ``w_in`` (E, D, 2H).
    ``gelu``: ``act(h) = gelu(h)`` with ``w_in`` (E, D, H).
    """

    @staticmethod
    def forward(ctx, x, w_in, w_out, counts: list[int], activation: str):  # type: ignore[override]
        # x: (N, D); w_in: (E, D, 2H | H); w_out: (E, H, D)
        num_rows, hidden = x.shape[0], w_out.shape[1]
        y = x.new_empty(num_rows, w_out.shape[-1])  # (N, D)
        a = x.new_empty(num_rows, hidden)  # (N, H) activation, input of w_out
        if activation == "swiglu":
            gate, up, silu_gate = (x.new_empty(num_rows, hidden) for _ in range(3))  # (N, H) each
            for e, rows in _row_slices(counts):
                torch.mm(x[rows], w_in[e, :, :hidden], out=gate[rows])
                torch.mm(x[rows], w_in[e, :, hidden:], out=up[rows])
                torch.ops.aten.silu.out(gate[rows], out=silu_gate[rows])
                torch.mul(silu_gate[rows], up[rows], out=a[rows])
                torch.mm(a[rows], w_out[e], out=y[rows])
            ctx.save_for_backward(x, w_in, w_out, a, gate, up, silu_gate)
        else:
            h = x.new_empty(num_rows, hidden)  # (N, H)
            for e, rows in _row_slices(counts):
                torch.mm(x[rows], w_in[e], out=h[rows])
                torch.ops.aten.gelu.out(h[rows], out=a[rows])
                torch.mm(a[rows], w_out[e], out=y[rows])
            ctx.save_for_backward(x, w_in, w_out, a, h)
        ctx.counts, ctx.activation = counts, activation
        return y

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        x, w_in, w_out, a, *pre = ctx.saved_tensors
        hidden = w_out.shape[1]
        want_x, want_w_in, want_w_out = ctx.needs_input_grad[:3]
        grad_y = grad_y.contiguous()
        grad_x = torch.empty_like(x) if want_x else None
        # every expert with rows overwrites its slice; only idle experts need zeros
        grad_w_in = torch.empty_like(w_in) if want_w_in else None
        grad_w_out = torch.empty_like(w_out) if want_w_out else None
        for e, n in enumerate(ctx.counts):
            if n == 0:
                for grad in (grad_w_in, grad_w_out):
                    if grad is not None:
                        grad[e].zero_()
        for e, rows in _row_slices(ctx.counts):
            grad_a = grad_y[rows] @ w_out[e].t()  # (n, H)
            if grad_w_out is not None:
                torch.mm(a[rows].t(), grad_y[rows], out=grad_w_out[e])
            if ctx.activation == "swiglu":
                gate, up, silu_gate = (t[rows] for t in pre)
                grad_up = grad_a * silu_gate  # (n, H)
                grad_gate = torch.ops.aten.silu_backward(grad_a.mul_(up), gate)  # (n, H)
                if grad_x is not None:
                    torch.mm(grad_gate, w_in[e, :, :hidden].t(), out=grad_x[rows])
                    grad_x[rows].addmm_(grad_up, w_in[e, :, hidden:].t())
                if grad_w_in is not None:
                    torch.mm(x[rows].t(), grad_gate, out=grad_w_in[e, :, :hidden])
                    torch.mm(x[rows].t(), grad_up, out=grad_w_in[e, :, hidden:])
            else:
                grad_h = torch.ops.aten.gelu_backward(grad_a, pre[0][rows])  # (n, H)
                if grad_x is not None:
                    torch.mm(grad_h, w_in[e].t(), out=grad_x[rows])
                if grad_w_in is not None:
                    torch.mm(x[rows].t(), grad_h, out=grad_w_in[e])
        return grad_x, grad_w_in, grad_w_out, None, None
