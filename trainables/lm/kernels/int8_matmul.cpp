// moe-orch's CPU matmul for int8 weights at decode: y (M, N) = x (M, K) @ (w (N, K) * scale (N,))^T.
//
// Weight-only: x stays float32 and each int8 weight is widened to float32 in registers, so the result is
// the dequantized weight's matmul up to float32 summation order. Decoding reads every weight once a
// step for a handful of rows: the kernel streams each weight row once for up to four rows of x, and
// the threads of torch's pool (at::parallel_for) split the weight's rows between them. A row of y is
// computed the same way whatever else is in the batch. Built once per machine by
// trainables/lm/int8_kernel.py, with -march=native: AVX-512, else AVX2 + FMA, else plain C++.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

// y[m * ldy] = scale * dot(w[0:K], x[m * ldx : m * ldx + K]) for the MB rows of x, reading w once.
template <int MB>
inline void weight_row_times_rows(const int8_t* w, const float* x, int64_t ldx, int64_t K, float scale,
                                  float* y, int64_t ldy) {
  float sums[MB];
  int64_t k = 0;
#if defined(__AVX512F__)
  __m512 acc[MB][2];  // two accumulators a row: two independent FMA chains
  for (int m = 0; m < MB; ++m) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
  for (; k + 32 <= K; k += 32) {
    const __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(w + k))));
    const __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(w + k + 16))));
    for (int m = 0; m < MB; ++m) {
      acc[m][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + m * ldx + k), acc[m][0]);
      acc[m][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + m * ldx + k + 16), acc[m][1]);
    }
  }
  for (int m = 0; m < MB; ++m) sums[m] = _mm512_reduce_add_ps(_mm512_add_ps(acc[m][0], acc[m][1]));
#elif defined(__AVX2__) && defined(__FMA__)
  __m256 acc[MB][2];
  for (int m = 0; m < MB; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
  for (; k + 16 <= K; k += 16) {
    const __m256 w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(w + k))));
    const __m256 w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(w + k + 8))));
    for (int m = 0; m < MB; ++m) {
      acc[m][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + m * ldx + k), acc[m][0]);
      acc[m][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + m * ldx + k + 8), acc[m][1]);
    }
  }
  for (int m = 0; m < MB; ++m) {
    const __m256 a = _mm256_add_ps(acc[m][0], acc[m][1]);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    sums[m] = _mm_cvtss_f32(s);
  }
#else
  for (int m = 0; m < MB; ++m) sums[m] = 0.f;
#endif
  for (; k < K; ++k)  // the tail (all of it without AVX); fmaf: the same rounding whatever MB is
    for (int m = 0; m < MB; ++m) sums[m] = std::fmaf(float(w[k]), x[m * ldx + k], sums[m]);
  for (int m = 0; m < MB; ++m) y[m * ldy] = sums[m] * scale;
}

at::Tensor int8_matmul(const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& scale_in) {
  TORCH_CHECK(x_in.dim() == 2 && w_in.dim() == 2 && scale_in.dim() == 1, "int8_matmul: x (M, K), w (N, K), scale (N,)");
  TORCH_CHECK(w_in.scalar_type() == at::kChar, "int8_matmul: w must be int8");
  TORCH_CHECK(x_in.size(1) == w_in.size(1) && scale_in.size(0) == w_in.size(0), "int8_matmul: shapes do not match");
  at::Tensor x = x_in.to(at::kFloat);
  if (x.size(1) > 1 && x.stride(1) != 1) x = x.contiguous();
  const at::Tensor w = w_in.contiguous(), scale = scale_in.to(at::kFloat).contiguous();
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0), ldx = M > 1 ? x.stride(0) : K;
  at::Tensor y = at::empty({M, N}, x.options().memory_format(at::MemoryFormat::Contiguous));
  const float* xp = x.data_ptr<float>();
  const int8_t* wp = w.data_ptr<int8_t>();
  const float* sp = scale.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  // a task is at least 32 KB of weights, so small layers are not split into tasks that cost more than they do
  const int64_t grain = std::max<int64_t>(1, (32 * 1024) / std::max<int64_t>(K, 1));
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const int8_t* w_row = wp + n * K;
      for (int64_t m = 0; m < M; m += 4) {
        const float* x_rows = xp + m * ldx;
        float* y_col = yp + m * N + n;
        switch (std::min<int64_t>(4, M - m)) {
          case 4: weight_row_times_rows<4>(w_row, x_rows, ldx, K, sp[n], y_col, N); break;
          case 3: weight_row_times_rows<3>(w_row, x_rows, ldx, K, sp[n], y_col, N); break;
          case 2: weight_row_times_rows<2>(w_row, x_rows, ldx, K, sp[n], y_col, N); break;
          default: weight_row_times_rows<1>(w_row, x_rows, ldx, K, sp[n], y_col, N); break;
        }
      }
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY(moe_orch_lm, m) { m.def("int8_matmul(Tensor x, Tensor w, Tensor scale) -> Tensor"); }
TORCH_LIBRARY_IMPL(moe_orch_lm, CPU, m) { m.impl("int8_matmul", &int8_matmul); }
