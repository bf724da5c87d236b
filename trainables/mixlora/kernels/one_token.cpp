// MixLoRA's routed experts for one token on the CPU, in one call: the router's choice and the LoRA half
// of the served FFN (trainables/mixlora/block.py, MixLoRAFFN._serve; trainables/mixlora/one_token_kernel.py).
//
// Routing, as trainables/moe/router.py's TopKRouter.choose: logits = router_weight x (E), the top k of
// them (ties: the lower id first), weighted by their softmax over the k (renormalize, k > 1) or by their
// full-softmax value. Then, for the k chosen experts j, with z_j = x [A_gate_j | A_up_j] (2r):
//   a_j   = w_j * silu(gate + z_j[:r] B_gate_j) * (up + z_j[r:] B_up_j)     (H)
//   mixed = sum_j a_j                                                        (H): the frozen down's input
//   lora  = sum_j (a_j A_down_j) B_down_j                                    (D)
// so the FFN's output is down(mixed) + lora. The B factors come scaled by alpha / r. Each expert's
// factors are one row of `rows` (E, W), in the order [A_gate | A_up] (D, 2r), B_gate (r, H), B_up (r, H),
// A_down (H, r), B_down (r, D), all row-major (MixLoRAFFN._expert_rows). A token reads only its k
// experts' rows, once, on one thread: at SmolLM2's sizes 0.4 MB a layer, where the dozen small torch
// ops it replaces cost more than the reading.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

namespace {

using Routed = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// logits (E), weights (k), indices (k) of x (D) under the router's weight (E, D)
void route(const float* x, const float* router, int64_t E, int64_t D, int64_t k, bool renormalize, float* logits,
           float* weights, int64_t* indices) {
  for (int64_t e = 0; e < E; ++e) {
    float s = 0.f;
    for (int64_t d = 0; d < D; ++d) s += router[e * D + d] * x[d];
    logits[e] = s;
  }
  std::vector<bool> taken(E, false);
  for (int64_t j = 0; j < k; ++j) {  // E is a handful: k passes of a linear scan
    int64_t best = -1;
    for (int64_t e = 0; e < E; ++e)
      if (!taken[e] && (best < 0 || logits[e] > logits[best])) best = e;
    taken[best] = true;
    indices[j] = best;
  }
  const float top = logits[indices[0]];
  if (renormalize && k > 1) {
    float total = 0.f;
    for (int64_t j = 0; j < k; ++j) total += (weights[j] = std::exp(logits[indices[j]] - top));
    for (int64_t j = 0; j < k; ++j) weights[j] /= total;
  } else {
    float total = 0.f;
    for (int64_t e = 0; e < E; ++e) total += std::exp(logits[e] - top);
    for (int64_t j = 0; j < k; ++j) weights[j] = std::exp(logits[indices[j]] - top) / total;
  }
}

// the weighted activations a_j of one expert into `a` (H), from its row of factors; returns nothing else
void expert_activation(const float* x, const float* gate, const float* up, const float* row, int64_t D, int64_t H,
                       int64_t r, float w, float* a, float* u, float* z) {
  const float* a_gate_up = row;              // (D, 2r)
  const float* b_gate = row + D * 2 * r;     // (r, H)
  const float* b_up = b_gate + r * H;        // (r, H)
  std::fill(z, z + 2 * r, 0.f);
  for (int64_t d = 0; d < D; ++d)
    for (int64_t c = 0; c < 2 * r; ++c) z[c] += x[d] * a_gate_up[d * 2 * r + c];
  std::copy(gate, gate + H, a);
  std::copy(up, up + H, u);
  for (int64_t i = 0; i < r; ++i) {
    const float zg = z[i], zu = z[r + i];
    const float *bg = b_gate + i * H, *bu = b_up + i * H;
    for (int64_t h = 0; h < H; ++h) {
      a[h] += zg * bg[h];
      u[h] += zu * bu[h];
    }
  }
  for (int64_t h = 0; h < H; ++h) a[h] = w * (a[h] / (1.f + std::exp(-a[h]))) * u[h];
}

Routed one_token(const at::Tensor& x_in, const at::Tensor& gate_up_in, const at::Tensor& router_in,
                 const at::Tensor& rows_in, int64_t top_k, bool renormalize, int64_t rank) {
  const at::Tensor x = x_in.to(at::kFloat).contiguous().view(-1);
  const at::Tensor gate_up = gate_up_in.to(at::kFloat).contiguous().view(-1);
  const at::Tensor router = router_in.to(at::kFloat).contiguous();
  const at::Tensor rows = rows_in.contiguous();
  const int64_t D = x.numel(), H = gate_up.numel() / 2, r = rank, E = rows.size(0), W = rows.size(1), k = top_k;
  TORCH_CHECK(rows.scalar_type() == at::kFloat && rows.dim() == 2, "mixlora one_token: rows must be (E, W) float32");
  TORCH_CHECK(W == D * 2 * r + 2 * r * H + H * r + r * D, "mixlora one_token: rows of ", W, " do not fit D ", D,
              ", H ", H, ", r ", r);
  TORCH_CHECK(router.dim() == 2 && router.size(0) == E && router.size(1) == D, "mixlora one_token: router (E, D)");
  TORCH_CHECK(k >= 1 && k <= E, "mixlora one_token: top_k ", k, " of ", E, " experts");
  const auto f32 = x.options();
  at::Tensor mixed = at::zeros({1, H}, f32), lora = at::zeros({1, D}, f32);
  at::Tensor logits = at::empty({1, E}, f32), weights = at::empty({1, k}, f32);
  at::Tensor indices = at::empty({1, k}, f32.dtype(at::kLong));
  const float *xp = x.data_ptr<float>(), *gate = gate_up.data_ptr<float>();
  float *mp = mixed.data_ptr<float>(), *lp = lora.data_ptr<float>(), *wp = weights.data_ptr<float>();
  int64_t* ip = indices.data_ptr<int64_t>();
  route(xp, router.data_ptr<float>(), E, D, k, renormalize, logits.data_ptr<float>(), wp, ip);
  std::vector<float> a(H), u(H), z(2 * r), zd(r);
  for (int64_t j = 0; j < k; ++j) {
    const float* row = rows.data_ptr<float>() + ip[j] * W;
    expert_activation(xp, gate, gate + H, row, D, H, r, wp[j], a.data(), u.data(), z.data());
    const float* a_down = row + D * 2 * r + 2 * r * H;  // (H, r)
    const float* b_down = a_down + H * r;               // (r, D)
    std::fill(zd.begin(), zd.end(), 0.f);
    for (int64_t h = 0; h < H; ++h) {
      mp[h] += a[h];
      for (int64_t c = 0; c < r; ++c) zd[c] += a[h] * a_down[h * r + c];
    }
    for (int64_t i = 0; i < r; ++i)
      for (int64_t d = 0; d < D; ++d) lp[d] += zd[i] * b_down[i * D + d];
  }
  return {mixed, lora, logits, weights, indices};
}

}  // namespace

TORCH_LIBRARY(moe_orch_mixlora, m) {
  m.def("one_token(Tensor x, Tensor gate_up, Tensor router_weight, Tensor rows, int top_k, bool renormalize, "
        "int rank) -> (Tensor mixed, Tensor lora, Tensor logits, Tensor weights, Tensor indices)");
}
TORCH_LIBRARY_IMPL(moe_orch_mixlora, CPU, m) { m.impl("one_token", &one_token); }
