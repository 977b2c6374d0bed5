// Weight-only int8 and bf16-weight linear layers for decoding (issue 25), built on first use by
// paddle_pangu/kernels/__init__.py (load_int8) through paddle.utils.cpp_extension.
//
// bf16 (pangu_bf16_linear): weights stored as bfloat16 bits (rounded to nearest even once at load), decoded
// to fp32 exactly by a 16-bit shift, fp32 activations and accumulation: y = sum_j x_j bf16(w)_j + b. Same
// tiles, dispatch and threads as int8 (a template over the weight type); no AVX512_BF16 instruction, so it
// runs on every x86-64 CPU. vdpbf16ps is not used: it rounds the activations to bf16 as well.
//
// Why: batch-1 decode reads every weight once per token, so its speed is bandwidth / weight bytes.
// int8 weights are a quarter of fp32's bytes. Paddle 3.3.1 has no CPU weight-only kernel
// (weight_quantize / weight_only_linear are GPU / XPU only).
//
// Math (per output channel i, symmetric, quantised once at load by paddle_pangu.inference.quantize):
//   w[i, j] ~ s[i] * q[i, j],  q int8 in [-127, 127],  s[i] = max_j |w[i, j]| / 127
//   y[m, i] = s[i] * (sum_j x[m, j] * q[i, j]) + b[i]
// Activations stay fp32, the sum is accumulated in fp32 (no -ffast-math, no FMA contraction in the
// scalar path), then scaled once. The error against the fp32 weights is at most
// sum_j |x_j| * s_i / 2 (quantisation) plus fp32 accumulation rounding;
// tests/unit/test_int8_kernels.py checks every dispatch level against that bound in float64.
//
// Dispatch (run time, one build for every x86-64 CPU): avx512 (F + BW + VL: 16 lanes, masked tails),
// avx2 (+ FMA: 8 lanes), scalar. PANGU_INT8_ISA=scalar|avx2|avx512 forces a level (tests run every level
// this CPU has); forcing one the CPU lacks is an error, never a silent fallback. AVX-512 VNNI is not used:
// its dot products multiply int8 weights by 8-bit integer activations, and this kernel keeps fp32
// activations (quantising them would add an activation error the bound above does not cover).
//
// Layout: q [N, K] (one row per output channel, contiguous in K), so a row is one streaming read and
// the tied head's word embedding [V, H] quantises without a transpose.
// More than kGemmRows rows of x (prefill): PrefillGemm, blocked over output channels (each weight element
// is read and decoded once per call, then MKL's GEMM on an L2-sized fp32 block).
// Threads: rows are split over `threads` OpenMP threads (0 = the runtime's default) when the weight is
// large enough to amortise a parallel region (>= kParallelBytes of int8); the 40k x H head always is.
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "paddle/extension.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

enum Level { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };
const char* const kLevelNames[] = {"scalar", "avx2", "avx512"};
constexpr int64_t kParallelBytes = 1 << 18;  // 256 KiB of int8 weights (512 x 512): below, one thread
constexpr int64_t kGemmRows = 16;            // more x rows than this: PrefillGemm
constexpr int64_t kRows = 4;                 // output channels per thread-split block (a multiple of R)
// the thread count of the last linear call large enough to split (reported by pangu_int8_isa, so a test can
// see that `pangu serve --threads` reached the kernel)
std::atomic<int> g_last_threads{0};

int CpuLevel() {
  static const int level = [] {
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
      return kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kAvx2;
    return kScalar;
  }();
  return level;
}

// The level to run: PANGU_INT8_ISA if set (read per call, so a test can switch it), else the CPU's best.
int ChosenLevel() {
  const char* env = std::getenv("PANGU_INT8_ISA");
  if (env == nullptr || *env == '\0') return CpuLevel();
  for (int l = kScalar; l <= kAvx512; ++l) {
    if (std::strcmp(env, kLevelNames[l]) == 0) {
      PD_CHECK(l <= CpuLevel(), "PANGU_INT8_ISA=", env, ": this CPU supports at most ", kLevelNames[CpuLevel()]);
      return l;
    }
  }
  PD_THROW("PANGU_INT8_ISA=", env, ": expected scalar, avx2 or avx512");
}

// ------------------------------------------------------------------------------------------------
// Weight element types. Both decode to fp32 exactly: int8 by conversion (then the per-channel scale is
// applied once to the sum), bf16 by a 16-bit left shift of its bits (bf16 is the top half of an fp32, so
// the shift is the value; no AVX512_BF16 instruction is needed). Wt::kScaled says whether y = s * acc + b
// (int8) or y = acc + b (bf16, s unused).
struct I8 {
  using T = int8_t;
  static constexpr bool kScaled = true;
  static float Scalar(T v) { return static_cast<float>(v); }
  __attribute__((target("avx2,fma"))) static __m256 Load8(const T* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  __attribute__((target("avx512f,avx512bw,avx512vl"))) static __m512 Load16(const T* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  __attribute__((target("avx512f,avx512bw,avx512vl"))) static __m512 Load16(const T* p, __mmask16 mask) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, p)));
  }
};

struct BF16 {
  using T = uint16_t;  // the bits of a bfloat16: sign, 8 exponent bits, 7 mantissa bits
  static constexpr bool kScaled = false;
  static float Scalar(T v) {
    const uint32_t bits = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
  __attribute__((target("avx2,fma"))) static __m256 Load8(const T* p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  __attribute__((target("avx512f,avx512bw,avx512vl"))) static __m512 Load16(const T* p) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
  __attribute__((target("avx512f,avx512bw,avx512vl"))) static __m512 Load16(const T* p, __mmask16 mask) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
};

template <class W>
inline float Finish(const float* s, int64_t i, float acc, const float* b) {
  if constexpr (W::kScaled) return s[i] * acc + b[i];
  else return acc + b[i];
}

// Each kernel computes rows [n0, n1) of y [M, N] for all M rows of x [M, K].

template <class W>
void RowsScalar(const float* x, int64_t m_rows, int64_t k, const typename W::T* q, const float* s, const float* b,
                float* y, int64_t n, int64_t n0, int64_t n1) {
  for (int64_t i = n0; i < n1; ++i) {
    const typename W::T* qi = q + i * k;
    for (int64_t m = 0; m < m_rows; ++m) {
      const float* xm = x + m * k;
      float acc = 0.0f;
      for (int64_t j = 0; j < k; ++j) acc += xm[j] * W::Scalar(qi[j]);
      y[m * n + i] = Finish<W>(s, i, acc, b);
    }
  }
}

__attribute__((target("avx2,fma"))) inline float Hsum8(__m256 v) {
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

// Micro-kernels: rows [i, i + R) of the weight for x rows [m0, m0 + MT). R and MT are compile-time, so the
// MT x R accumulators live in registers; each weight vector is loaded and converted once and used by the
// MT x rows (batch > 1 reads the weights once per step, not once per row of x). The next block's rows
// (R rows further on) are prefetched: with 4 interleaved row streams the hardware prefetcher alone left
// the 40000 x 512 head at 3 GB/s; with the prefetch and unmasked full-width loads, 20 GB/s on one thread
// (same process, one after the other, load 4-6: 6.8 ms -> 1.0 ms per call; tools/int8_gemv_micro.py).
template <class W, int R, int MT>
__attribute__((target("avx2,fma"))) void Micro256(const float* x, int64_t k, const typename W::T* q, const float* s,
                                                  const float* b, float* y, int64_t n, int64_t i, int64_t m0) {
  __m256 acc[MT][R];
  for (int m = 0; m < MT; ++m)
    for (int t = 0; t < R; ++t) acc[m][t] = _mm256_setzero_ps();
  const int64_t kv = k / 8 * 8;
  for (int64_t j = 0; j < kv; j += 8) {
    __m256 wv[R];
    for (int t = 0; t < R; ++t) {
      if (((j * static_cast<int64_t>(sizeof(typename W::T))) & 63) == 0)
        _mm_prefetch(reinterpret_cast<const char*>(q + (i + t + R) * k + j), _MM_HINT_T0);
      wv[t] = W::Load8(q + (i + t) * k + j);
    }
    for (int m = 0; m < MT; ++m) {
      const __m256 xv = _mm256_loadu_ps(x + (m0 + m) * k + j);
      for (int t = 0; t < R; ++t) acc[m][t] = _mm256_fmadd_ps(xv, wv[t], acc[m][t]);
    }
  }
  for (int m = 0; m < MT; ++m) {
    const float* xm = x + (m0 + m) * k;
    for (int t = 0; t < R; ++t) {
      const typename W::T* qi = q + (i + t) * k;
      float tail = 0.0f;
      for (int64_t j = kv; j < k; ++j) tail += xm[j] * W::Scalar(qi[j]);
      y[(m0 + m) * n + i + t] = Finish<W>(s, i + t, Hsum8(acc[m][t]) + tail, b);
    }
  }
}

template <class W, int R>
__attribute__((target("avx2,fma"))) void Block256(const float* x, int64_t m_rows, int64_t k, const typename W::T* q,
                                                  const float* s, const float* b, float* y, int64_t n, int64_t i) {
  int64_t m0 = 0;
  for (; m0 + 4 <= m_rows; m0 += 4) Micro256<W, R, 4>(x, k, q, s, b, y, n, i, m0);
  switch (m_rows - m0) {
    case 3: Micro256<W, R, 3>(x, k, q, s, b, y, n, i, m0); break;
    case 2: Micro256<W, R, 2>(x, k, q, s, b, y, n, i, m0); break;
    case 1: Micro256<W, R, 1>(x, k, q, s, b, y, n, i, m0); break;
    default: break;
  }
}

template <class W>
__attribute__((target("avx2,fma"))) void RowsAvx2(const float* x, int64_t m_rows, int64_t k, const typename W::T* q,
                                                  const float* s, const float* b, float* y, int64_t n, int64_t n0,
                                                  int64_t n1) {
  int64_t i = n0;
  if (m_rows == 1) {
    for (; i + 4 <= n1; i += 4) Block256<W, 4>(x, m_rows, k, q, s, b, y, n, i);
  } else {
    for (; i + 2 <= n1; i += 2) Block256<W, 2>(x, m_rows, k, q, s, b, y, n, i);
  }
  for (; i < n1; ++i) Block256<W, 1>(x, m_rows, k, q, s, b, y, n, i);
}

template <class W, int R, int MT>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void Micro512(const float* x, int64_t k, const typename W::T* q,
                                                                  const float* s, const float* b, float* y,
                                                                  int64_t n, int64_t i, int64_t m0) {
  __m512 acc[MT][R];
  for (int m = 0; m < MT; ++m)
    for (int t = 0; t < R; ++t) acc[m][t] = _mm512_setzero_ps();
  const int64_t kv = k / 16 * 16;
  for (int64_t j = 0; j < kv; j += 16) {  // plain loads; the weight rows of the next block are prefetched
    __m512 wv[R];
    for (int t = 0; t < R; ++t) {
      const typename W::T* p = q + (i + t) * k + j;
      _mm_prefetch(reinterpret_cast<const char*>(p + R * k), _MM_HINT_T0);
      wv[t] = W::Load16(p);
    }
    for (int m = 0; m < MT; ++m) {
      const __m512 xv = _mm512_loadu_ps(x + (m0 + m) * k + j);
      for (int t = 0; t < R; ++t) acc[m][t] = _mm512_fmadd_ps(xv, wv[t], acc[m][t]);
    }
  }
  if (kv < k) {  // the K tail: masked lanes load 0
    const __mmask16 mask = static_cast<__mmask16>((1u << (k - kv)) - 1);
    __m512 wv[R];
    for (int t = 0; t < R; ++t) wv[t] = W::Load16(q + (i + t) * k + kv, mask);
    for (int m = 0; m < MT; ++m) {
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x + (m0 + m) * k + kv);
      for (int t = 0; t < R; ++t) acc[m][t] = _mm512_fmadd_ps(xv, wv[t], acc[m][t]);
    }
  }
  for (int m = 0; m < MT; ++m)
    for (int t = 0; t < R; ++t)
      y[(m0 + m) * n + i + t] = Finish<W>(s, i + t, _mm512_reduce_add_ps(acc[m][t]), b);
}

template <class W, int R>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void Block512(const float* x, int64_t m_rows, int64_t k,
                                                                  const typename W::T* q, const float* s,
                                                                  const float* b, float* y, int64_t n, int64_t i) {
  int64_t m0 = 0;
  for (; m0 + 8 <= m_rows; m0 += 8) Micro512<W, R, 8>(x, k, q, s, b, y, n, i, m0);
  switch (m_rows - m0) {
    case 7: Micro512<W, R, 7>(x, k, q, s, b, y, n, i, m0); break;
    case 6: Micro512<W, R, 6>(x, k, q, s, b, y, n, i, m0); break;
    case 5: Micro512<W, R, 5>(x, k, q, s, b, y, n, i, m0); break;
    case 4: Micro512<W, R, 4>(x, k, q, s, b, y, n, i, m0); break;
    case 3: Micro512<W, R, 3>(x, k, q, s, b, y, n, i, m0); break;
    case 2: Micro512<W, R, 2>(x, k, q, s, b, y, n, i, m0); break;
    case 1: Micro512<W, R, 1>(x, k, q, s, b, y, n, i, m0); break;
    default: break;
  }
}

template <class W>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void RowsAvx512(const float* x, int64_t m_rows, int64_t k,
                                                                    const typename W::T* q, const float* s,
                                                                    const float* b, float* y, int64_t n, int64_t n0,
                                                                    int64_t n1) {
  int64_t i = n0;
  if (m_rows == 1) {  // GEMV: 4 rows share each x load
    for (; i + 4 <= n1; i += 4) Block512<W, 4>(x, m_rows, k, q, s, b, y, n, i);
  } else {  // 8 x rows by 2 weight rows: 16 accumulators + 2 weight vectors of the 32 registers
    for (; i + 2 <= n1; i += 2) Block512<W, 2>(x, m_rows, k, q, s, b, y, n, i);
  }
  for (; i < n1; ++i) Block512<W, 1>(x, m_rows, k, q, s, b, y, n, i);
}

paddle::Tensor Dense(const paddle::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }

int Threads(int threads) {
#ifdef _OPENMP
  return threads > 0 ? threads : omp_get_max_threads();
#else
  (void)threads;
  return 1;
#endif
}

// f(u0, u1) over contiguous slices of [0, units) of row blocks: one thread when the weight has fewer than
// kParallelBytes, else `threads` (at most one per unit) in one parallel region, each streaming its own slice.
template <class F>
void SplitRowBlocks(int64_t units, int64_t weight_bytes, int threads, F&& f) {
  int nt = 1;
  if (weight_bytes >= kParallelBytes) {
    nt = Threads(threads);
    g_last_threads = nt;
  }
  nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nt, units)));
  if (nt == 1) {
    f(int64_t{0}, units);
    return;
  }
#pragma omp parallel num_threads(nt)
  {
#ifdef _OPENMP
    const int tid = omp_get_thread_num(), cnt = omp_get_num_threads();
#else
    const int tid = 0, cnt = 1;
#endif
    f(units * tid / cnt, units * (tid + 1) / cnt);
  }
}

// y [M, N] = x [M, K] . dec(w)^T (+ scale) + bias for M <= kGemmRows rows (decode), raw pointers: output
// channels split in contiguous row blocks over `threads` threads when the weight has >= kParallelBytes, else
// one thread. Shared by the linear op and the fused decode layer (the same row kernels: the same sums).
template <class W>
void RunRows(int level, const float* xp, int64_t m_rows, int64_t k, const typename W::T* wp, const float* sp,
             const float* bp, float* yp, int64_t n, int threads) {
  auto rows = [&](int64_t n0, int64_t n1) {
    if (level == kAvx512) RowsAvx512<W>(xp, m_rows, k, wp, sp, bp, yp, n, n0, n1);
    else if (level == kAvx2) RowsAvx2<W>(xp, m_rows, k, wp, sp, bp, yp, n, n0, n1);
    else RowsScalar<W>(xp, m_rows, k, wp, sp, bp, yp, n, n0, n1);
  };
  const int64_t blocks = (n + kRows - 1) / kRows;
  SplitRowBlocks(blocks, n * k * static_cast<int64_t>(sizeof(typename W::T)), threads,
                 [&](int64_t b0, int64_t b1) { rows(std::min(n, b0 * kRows), std::min(n, b1 * kRows)); });
}

// Many rows (prefill: batch x prompt tokens), blocked: the weight is taken kPrefillBlockBytes of fp32 at a
// time (nb output channels): those nb rows are decoded to fp32 once (each weight element is read once per
// call, whatever M is) into an L2-sized buffer, MKL's blocked GEMM computes acc [M, nb] = x [M, K] . buf^T
// (exact decoded weights in fp32: any summation order is within the same gamma bound), then
// y[:, block] = s * acc + b. The memory of the call is one block (not an fp32 copy of the whole weight, 4x
// the int8 bytes: 80 MB for a 40000 x 512 head). The register-tiled decode kernel re-reads x from cache
// per pair of weight rows, which at hundreds of rows was slower than the fp32 GEMM (first token 585 vs 363 ms
// at batch 8), hence MKL for the arithmetic.
constexpr int64_t kPrefillBlockBytes = 1 << 20;

template <class W>
paddle::Tensor PrefillGemm(const paddle::Tensor& x, const typename W::T* qp, const float* sp, const float* bp,
                           int64_t n, int64_t k, int64_t m_rows, int threads, const std::vector<int64_t>& out_shape) {
  const int nt = Threads(threads);
  g_last_threads = nt;
  const int64_t nb = std::min<int64_t>(n, std::max<int64_t>(16, kPrefillBlockBytes / (4 * k) / 16 * 16));
  const auto x2 = paddle::experimental::reshape(x, {m_rows, k});  // [M, K]
  auto y = paddle::empty(out_shape, paddle::DataType::FLOAT32, paddle::CPUPlace());
  float* yp = y.data<float>();
  auto buf = paddle::empty({nb, k}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  for (int64_t r0 = 0; r0 < n; r0 += nb) {
    const int64_t rows = std::min(nb, n - r0);
    if (rows != nb) buf = paddle::empty({rows, k}, paddle::DataType::FLOAT32, paddle::CPUPlace());
    float* fp = buf.data<float>();
    const typename W::T* src = qp + r0 * k;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < k; ++j) fp[r * k + j] = W::Scalar(src[r * k + j]);
    const auto acc = paddle::experimental::matmul(x2, buf, false, true);  // [M, rows]
    const float* a = acc.data<float>();
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t m = 0; m < m_rows; ++m)
      for (int64_t c = 0; c < rows; ++c) yp[m * n + r0 + c] = Finish<W>(sp, r0 + c, a[m * rows + c], bp);
  }
  return y;
}

// y [M, N] = x [M, K] . dec(w)^T (+ scale) + bias: the shared body of the int8 and bf16 ops.
template <class W>
std::vector<paddle::Tensor> LinearForward(const paddle::Tensor& x, const typename W::T* wp, const float* sp,
                                          const float* bp, int64_t n, int64_t k, int threads) {
  auto out_shape = x.shape();
  out_shape.back() = n;
  const int64_t m_rows = k ? x.numel() / k : 0;
  if (m_rows == 0 || n == 0) return {paddle::empty(out_shape, paddle::DataType::FLOAT32, paddle::CPUPlace())};
  const int level = ChosenLevel();
  if (m_rows > kGemmRows) return {PrefillGemm<W>(x, wp, sp, bp, n, k, m_rows, threads, out_shape)};
  auto y = paddle::empty(out_shape, paddle::DataType::FLOAT32, paddle::CPUPlace());
  RunRows<W>(level, x.data<float>(), m_rows, k, wp, sp, bp, y.data<float>(), n, threads);
  return {y};
}

// The row blocks of G layers of one input x [M, K] (M <= kGemmRows) over one parallel region; y [M, sum N_g],
// each layer's output channels at its column offset (LinearCatForward and the fused decode layer).
template <class W>
void CatRows(int level, const float* xp, int64_t m_rows, int64_t k, const std::vector<const typename W::T*>& wp,
             const std::vector<const float*>& sp, const std::vector<const float*>& bp, const std::vector<int64_t>& ns,
             float* yp, int threads) {
  int64_t n_total = 0, blocks = 0;
  std::vector<int64_t> col0, block0;  // first output column and first row block of each layer
  for (int64_t n : ns) {
    col0.push_back(n_total);
    block0.push_back(blocks);
    n_total += n;
    blocks += (n + kRows - 1) / kRows;
  }
  block0.push_back(blocks);
  // row blocks [b0, b1) of the concatenated layers: each layer's share written at its column offset (the
  // row kernels index y as y[m * ldy + i], so y + col0 with ldy = n_total is that layer's column slice)
  auto run = [&](int64_t b0, int64_t b1) {
    for (size_t g = 0; g < ns.size(); ++g) {
      const int64_t lo = std::max(b0, block0[g]) - block0[g], hi = std::min(b1, block0[g + 1]) - block0[g];
      if (lo >= hi) continue;
      const int64_t n0 = lo * kRows, n1 = std::min(ns[g], hi * kRows);
      float* yg = yp + col0[g];
      if (level == kAvx512) RowsAvx512<W>(xp, m_rows, k, wp[g], sp[g], bp[g], yg, n_total, n0, n1);
      else if (level == kAvx2) RowsAvx2<W>(xp, m_rows, k, wp[g], sp[g], bp[g], yg, n_total, n0, n1);
      else RowsScalar<W>(xp, m_rows, k, wp[g], sp[g], bp[g], yg, n_total, n0, n1);
    }
  };
  SplitRowBlocks(blocks, n_total * k * static_cast<int64_t>(sizeof(typename W::T)), threads, run);
}

// Several linear layers of one input in one call (a decode step's q / k / v, or the query layer's k / v):
// y [M, sum N_g] = the layers' outputs side by side. Each output channel is computed by the same row kernel
// as LinearForward's (the same products in the same order: equal bit for bit), the rows of all layers split
// over one parallel region instead of one per layer; one op dispatch instead of one per layer (issue 25's
// profile, docs/INT8.md). Decode rows only (M <= kGemmRows): prefill calls the layers one by one.
template <class W>
paddle::Tensor LinearCatForward(const paddle::Tensor& x, const std::vector<const typename W::T*>& wp,
                                const std::vector<const float*>& sp, const std::vector<const float*>& bp,
                                const std::vector<int64_t>& ns, int64_t k, int threads) {
  auto out_shape = x.shape();
  int64_t n_total = 0;
  for (int64_t n : ns) n_total += n;
  out_shape.back() = n_total;
  auto y = paddle::empty(out_shape, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const int64_t m_rows = k ? x.numel() / k : 0;
  if (m_rows == 0 || n_total == 0) return y;
  PD_CHECK(m_rows <= kGemmRows, "linear cat: at most ", kGemmRows, " rows of x (decode), got ", m_rows);
  CatRows<W>(ChosenLevel(), x.data<float>(), m_rows, k, wp, sp, bp, ns, y.data<float>(), threads);
  return y;
}

void CheckCommon(const paddle::Tensor& x, const paddle::Tensor& w, const paddle::Tensor& bias, const char* what) {
  PD_CHECK(x.is_cpu() && w.is_cpu() && bias.is_cpu(), what, ": CPU tensors only");
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32, what, ": x must be float32");
  PD_CHECK(bias.dtype() == paddle::DataType::FLOAT32, what, ": bias must be float32");
  PD_CHECK(w.shape().size() == 2, what, ": the weight must be [N, K]");
  const auto xs = x.shape();
  const int64_t n = w.shape()[0], k = w.shape()[1];
  PD_CHECK(!xs.empty() && xs.back() == k, what, ": x [..., K] with K = ", k, " expected, got last dim ",
           xs.empty() ? -1 : xs.back());
  PD_CHECK(bias.numel() == n, what, ": bias must have N = ", n, " entries");
}

// ------------------------------------------------------------------------------------------------
// A whole decoder layer for decode rows in one call (issue 25: the framework's per-op dispatch was about half
// of a batch-1 int8 step, docs/INT8.md). For B <= kGemmRows rows of one new token each, in place:
//   a = LN1(x);  q, k, v = Wq a (or Wq query: the query layer, REF "query layer"), Wk a, Wv a
//   k, v -> column t of the preallocated caches [B, nh, cap, hd] (no concat per step)
//   ctx = softmax(q / sqrt(hd) . K^T + mask) V over the t + 1 columns, mask additive -10000 where the padding
//         mask is 0 (REF "attention")
//   x += Wo ctx;  x += W_out act(W_in LN2(x))  (REF "block": pre-LN, both residuals; REF "activation")
// The GEMVs are the linear ops' own row kernels (RunRows / CatRows: the same sums bit for bit); the layer
// norms accumulate in double, the attention and the activation in fp32 in their own order: the fused layer
// equals the general ops within an fp32 rounding bound (tests/unit/test_fused_decode.py derives it), not
// bit for bit.
struct DecodeShape {
  int64_t b, h, nh, hd, f, cap, t;  // t: cache columns filled before this step (the new k / v go to column t)
  float eps;
  int act, threads;
  bool query_layer;
};

// LayerNorm of one row of h values: mean and variance accumulated in double, the result rounded once to fp32
void LayerNormRow(const float* x, int64_t h, const float* w, const float* b, float eps, float* y) {
  double sum = 0.0;
  for (int64_t j = 0; j < h; ++j) sum += x[j];
  const double mean = sum / static_cast<double>(h);
  double sq = 0.0;
  for (int64_t j = 0; j < h; ++j) sq += (x[j] - mean) * (x[j] - mean);
  const double inv = 1.0 / std::sqrt(sq / static_cast<double>(h) + static_cast<double>(eps));
  for (int64_t j = 0; j < h; ++j) y[j] = static_cast<float>((x[j] - mean) * inv * w[j] + b[j]);
}

// The model's activation (model/layers.activation, REF "activation"): 0 gelu_tanh, 1 gelu (erf), 2 fast_gelu
inline float Activation(float v, int act) {
  if (act == 0) {  // tanh(z) = 1 - 2 / (exp(2z) + 1): glibc's expf is ~4x faster than its tanhf, within 7 u absolute
    const float z = 0.7978845608028654f * (v + 0.044715f * v * v * v);
    return 0.5f * v * (1.0f + (1.0f - 2.0f / (std::exp(2.0f * z) + 1.0f)));
  }
  if (act == 1) return 0.5f * v * (1.0f + std::erf(v * 0.7071067811865476f));
  return v / (1.0f + std::exp(-1.702f * v));
}

// gelu_tanh over n values at the AVX-512 level (the scalar Activation's formula, 16 lanes): exp(2z) by Cephes'
// expf (2z = n ln2 + r, |r| <= ln2 / 2, a degree-7 polynomial; relative error <= 4u over the clamped range
// [-87.3, 88.3], beyond which tanh is +-1 to within u), then tanh = 1 - 2 / (e + 1): |error| <= 13u absolute
// (e: 4u relative; + 1 and / one rounding each, so 2 / d in (0, 2) within 12u; the subtraction u). The scalar
// loop cost ~0.4 ms of a batch-8 layer (16k expf + divisions); tests/unit/test_fused_decode.py checks the
// bound against float64 over [-12, 12].
__attribute__((target("avx512f,avx512bw,avx512vl"))) void GeluTanh512(float* v, int64_t n) {
  const __m512 c = _mm512_set1_ps(0.7978845608028654f), a = _mm512_set1_ps(0.044715f), one = _mm512_set1_ps(1.0f),
               two = _mm512_set1_ps(2.0f), half = _mm512_set1_ps(0.5f);
  const __m512 lo = _mm512_set1_ps(-87.3f), hi = _mm512_set1_ps(88.3f), log2e = _mm512_set1_ps(1.44269504088896341f);
  const __m512 c1 = _mm512_set1_ps(0.693359375f), c2 = _mm512_set1_ps(-2.12194440e-4f);
  const float p[6] = {1.9875691500E-4f, 1.3981999507E-3f, 8.3334519073E-3f, 4.1665795894E-2f, 1.6666665459E-1f,
                      5.0000001201E-1f};
  int64_t i = 0;
  for (; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 f = _mm512_maskz_loadu_ps(m, v + i);
    const __m512 f3 = _mm512_mul_ps(_mm512_mul_ps(f, f), f);
    const __m512 z = _mm512_mul_ps(c, _mm512_add_ps(f, _mm512_mul_ps(a, f3)));
    __m512 x = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(two, z), lo), hi);  // 2z, clamped
    const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm512_sub_ps(_mm512_sub_ps(x, _mm512_mul_ps(k, c1)), _mm512_mul_ps(k, c2));  // r (k * c1 exact)
    __m512 poly = _mm512_set1_ps(p[0]);
    for (int j = 1; j < 6; ++j) poly = _mm512_add_ps(_mm512_mul_ps(poly, x), _mm512_set1_ps(p[j]));
    poly = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(poly, _mm512_mul_ps(x, x)), x), one);
    const __m512 e = _mm512_scalef_ps(poly, k);  // * 2^k, exact
    const __m512 t = _mm512_sub_ps(one, _mm512_div_ps(two, _mm512_add_ps(e, one)));
    _mm512_mask_storeu_ps(v + i, m, _mm512_mul_ps(_mm512_mul_ps(half, f), _mm512_add_ps(one, t)));
  }
}

// The model's activation over n values in place: gelu_tanh vectorised at the AVX-512 level, else the scalar
// Activation.
void ActivationRow(int level, float* v, int64_t n, int act) {
  if (act == 0 && level == kAvx512) return GeluTanh512(v, n);
  for (int64_t i = 0; i < n; ++i) v[i] = Activation(v[i], act);
}

inline float Dot(const float* a, const float* b, int64_t n) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

inline void Axpy(float p, const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += p * x[i];
}

// The attention's dot products and row updates at the run-time level (the build has no -march: the plain
// loops above vectorise to SSE2 only). Any summation order is within the test's gamma(hd) bound.
__attribute__((target("avx2,fma"))) float Dot256(const float* a, const float* b, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  float tail = 0.0f;
  for (; i < n; ++i) tail += a[i] * b[i];
  return Hsum8(acc) + tail;
}

__attribute__((target("avx2,fma"))) void Axpy256(float p, const float* x, float* y, int64_t n) {
  const __m256 pv = _mm256_set1_ps(p);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(pv, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += p * x[i];
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) float Dot512(const float* a, const float* b, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) void Axpy512(float p, const float* x, float* y, int64_t n) {
  const __m512 pv = _mm512_set1_ps(p);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(y + i, _mm512_fmadd_ps(pv, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 sum = _mm512_fmadd_ps(pv, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i));
    _mm512_mask_storeu_ps(y + i, m, sum);
  }
}

inline float DotAt(int level, const float* a, const float* b, int64_t n) {
  return level == kAvx512 ? Dot512(a, b, n) : level == kAvx2 ? Dot256(a, b, n) : Dot(a, b, n);
}

inline void AxpyAt(int level, float p, const float* x, float* y, int64_t n) {
  if (level == kAvx512) Axpy512(p, x, y, n);
  else if (level == kAvx2) Axpy256(p, x, y, n);
  else Axpy(p, x, y, n);
}

// One row m, one head hh: append k / v at column t, then the masked softmax attention over columns [0, t]
void AttendHead(int level, const DecodeShape& d, const float* q, int64_t ldq, const float* k, const float* v,
                int64_t ldkv, float* kc, float* vc, const int64_t* mask, int64_t m, int64_t hh, float* ctx,
                float* scores) {
  const int64_t T = d.t + 1, hd = d.hd;
  float* kcol = kc + ((m * d.nh + hh) * d.cap) * hd;  // [cap, hd] of this row and head
  float* vcol = vc + ((m * d.nh + hh) * d.cap) * hd;
  std::memcpy(kcol + d.t * hd, k + m * ldkv + hh * hd, hd * sizeof(float));
  std::memcpy(vcol + d.t * hd, v + m * ldkv + hh * hd, hd * sizeof(float));
  const float* qh = q + m * ldq + hh * hd;  // already times 1 / sqrt(hd)
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < T; ++j) {
    // REF "attention": the additive mask, -10000 where the padding mask is 0
    const float sj = DotAt(level, qh, kcol + j * hd, hd) + (mask[m * T + j] ? 0.0f : -10000.0f);
    scores[j] = sj;
    mx = std::max(mx, sj);
  }
  float sum = 0.0f;
  for (int64_t j = 0; j < T; ++j) {
    scores[j] = std::exp(scores[j] - mx);
    sum += scores[j];
  }
  float* out = ctx + m * d.h + hh * hd;
  for (int64_t i = 0; i < hd; ++i) out[i] = 0.0f;
  for (int64_t j = 0; j < T; ++j) {
    const float p = scores[j] / sum;
    AxpyAt(level, p, vcol + j * hd, out, hd);
  }
}

// A float buffer on a 64-byte (cache line) boundary, freed with its scope.
struct AlignedBuffer {
  explicit AlignedBuffer(int64_t n)
      : p(static_cast<float*>(std::aligned_alloc(64, static_cast<size_t>((n * 4 + 63) / 64 * 64)))) {
    PD_CHECK(p != nullptr, "decode layer: out of memory for ", n, " floats of scratch");
  }
  ~AlignedBuffer() { std::free(p); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  float* data() { return p; }
  float& operator[](int64_t i) { return p[i]; }
  float* p;
};

// w / s / bias: q, k, v, out, fc_in, fc_out (s null for bf16); ln: ln1 w, ln1 b, ln2 w, ln2 b
template <class W>
void DecodeLayer(const DecodeShape& d, float* x, const float* query, const float* const* ln,
                 const typename W::T* const* w, const float* const* s, const float* const* bias, float* kc, float* vc,
                 const int64_t* mask) {
  const int level = ChosenLevel();
  const int64_t B = d.b, H = d.h, F = d.f;
  // scratch on 64-byte boundaries: the row kernels load x rows with full-width unaligned loads, which split
  // across two cache lines from a 16-byte-aligned std::vector (8 x loads per weight pair at batch 8)
  AlignedBuffer a(B * H), qkv(B * 3 * H), ctx(B * H), proj(B * H), ffn(B * F);
  for (int64_t m = 0; m < B; ++m) LayerNormRow(x + m * H, H, ln[0], ln[1], d.eps, a.data() + m * H);
  float *q, *k, *v;
  int64_t ldq, ldkv;
  if (!d.query_layer) {  // [B, 3H]: q | k | v in one parallel region
    CatRows<W>(level, a.data(), B, H, {w[0], w[1], w[2]}, {s[0], s[1], s[2]}, {bias[0], bias[1], bias[2]},
               {H, H, H}, qkv.data(), d.threads);
    q = qkv.data(), k = q + H, v = q + 2 * H, ldq = ldkv = 3 * H;
  } else {  // q [B, H] from the top query embedding, k | v [B, 2H] from LN1(x)
    RunRows<W>(level, query, B, H, w[0], s[0], bias[0], qkv.data(), H, d.threads);
    CatRows<W>(level, a.data(), B, H, {w[1], w[2]}, {s[1], s[2]}, {bias[1], bias[2]}, {H, H},
               qkv.data() + B * H, d.threads);
    q = qkv.data(), k = q + B * H, v = k + H, ldq = H, ldkv = 2 * H;
  }
  const float qscale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d.hd)));  // as ops.prescale_query
  for (int64_t m = 0; m < B; ++m)
    for (int64_t i = 0; i < H; ++i) q[m * ldq + i] *= qscale;
  const int64_t pairs = B * d.nh, T = d.t + 1;
  // one (row, head) per iteration; split over threads only when the cache reads are worth a parallel region
  const int nt = (pairs > 1 && pairs * T * d.hd * 8 >= kParallelBytes) ? Threads(d.threads) : 1;
#pragma omp parallel num_threads(nt)
  {
    std::vector<float> scores(T);
#pragma omp for schedule(static)
    for (int64_t p = 0; p < pairs; ++p)
      AttendHead(level, d, q, ldq, k, v, ldkv, kc, vc, mask, p / d.nh, p % d.nh, ctx.data(), scores.data());
  }
  RunRows<W>(level, ctx.data(), B, H, w[3], s[3], bias[3], proj.data(), H, d.threads);
  for (int64_t i = 0; i < B * H; ++i) x[i] = x[i] + proj[i];  // the attention residual
  for (int64_t m = 0; m < B; ++m) LayerNormRow(x + m * H, H, ln[2], ln[3], d.eps, a.data() + m * H);
  RunRows<W>(level, a.data(), B, H, w[4], s[4], bias[4], ffn.data(), F, d.threads);
  ActivationRow(level, ffn.data(), B * F, d.act);
  RunRows<W>(level, ffn.data(), B, F, w[5], s[5], bias[5], proj.data(), H, d.threads);
  for (int64_t i = 0; i < B * H; ++i) x[i] = x[i] + proj[i];  // the FFN residual
}

// Shapes and dtypes of the fused layer's operands; fills DecodeShape (b, h, nh, hd, f, cap) from them.
void CheckDecodeLayer(DecodeShape& d, const paddle::Tensor& x, const paddle::Tensor& query,
                      const std::vector<paddle::Tensor>& norms, const std::vector<paddle::Tensor>& weights,
                      const std::vector<paddle::Tensor>& biases, const paddle::Tensor& kc, const paddle::Tensor& vc,
                      const paddle::Tensor& mask, paddle::DataType wtype) {
  const char* what = "decode layer";
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32 && x.is_contiguous(), what,
           ": x must be a contiguous float32 CPU tensor");
  const auto xs = x.shape();
  PD_CHECK(xs.size() == 3 && xs[1] == 1, what, ": x must be [B, 1, H] (one new token per row)");
  d.b = xs[0], d.h = xs[2];
  PD_CHECK(d.b >= 1 && d.b <= kGemmRows, what, ": 1 to ", kGemmRows, " rows, got ", d.b);
  PD_CHECK(kc.shape().size() == 4 && kc.shape() == vc.shape(), what, ": caches must be [B, nh, cap, hd], equal");
  PD_CHECK(kc.dtype() == paddle::DataType::FLOAT32 && vc.dtype() == paddle::DataType::FLOAT32 && kc.is_contiguous() &&
               vc.is_contiguous(), what, ": caches must be contiguous float32");
  d.nh = kc.shape()[1], d.cap = kc.shape()[2], d.hd = kc.shape()[3];
  PD_CHECK(kc.shape()[0] == d.b && d.nh * d.hd == d.h, what, ": cache [", d.b, ", nh, cap, hd] with nh * hd = ", d.h);
  PD_CHECK(d.t >= 0 && d.t < d.cap, what, ": cache column ", d.t, " outside its capacity ", d.cap);
  PD_CHECK(mask.dtype() == paddle::DataType::INT64 && mask.shape().size() == 2 && mask.shape()[0] == d.b &&
               mask.shape()[1] == d.t + 1 && mask.is_contiguous(), what, ": mask must be int64 [B, t + 1] = [", d.b,
           ", ", d.t + 1, "]");
  if (d.query_layer)
    PD_CHECK(query.dtype() == paddle::DataType::FLOAT32 && query.numel() == d.b * d.h && query.is_contiguous(), what,
             ": query must be float32 [B, 1, H]");
  PD_CHECK(norms.size() == 4 && weights.size() == 6 && biases.size() == 6, what,
           ": 4 layer-norm tensors, 6 weights and 6 biases expected");
  for (const auto& n : norms)
    PD_CHECK(n.dtype() == paddle::DataType::FLOAT32 && n.numel() == d.h, what, ": layer norms must be float32 [H]");
  d.f = weights[4].shape()[0];
  const int64_t want[6][2] = {{d.h, d.h}, {d.h, d.h}, {d.h, d.h}, {d.h, d.h}, {d.f, d.h}, {d.h, d.f}};
  for (int g = 0; g < 6; ++g) {
    PD_CHECK(weights[g].dtype() == wtype && weights[g].is_contiguous() && weights[g].shape().size() == 2 &&
                 weights[g].shape()[0] == want[g][0] && weights[g].shape()[1] == want[g][1],
             what, ": weight ", g, " must be contiguous [", want[g][0], ", ", want[g][1], "] of the layer's type");
    PD_CHECK(biases[g].dtype() == paddle::DataType::FLOAT32 && biases[g].numel() == want[g][0], what, ": bias ", g,
             " must be float32 [", want[g][0], "]");
  }
}

}  // namespace

// x [..., K] fp32, qweight [N, K] int8, scale [N] fp32, bias [N] fp32 -> [..., N] fp32
std::vector<paddle::Tensor> Int8LinearForward(const paddle::Tensor& x_in, const paddle::Tensor& qweight_in,
                                              const paddle::Tensor& scale, const paddle::Tensor& bias, int threads) {
  const auto x = Dense(x_in), qweight = Dense(qweight_in);
  CheckCommon(x, qweight, bias, "int8 linear");
  PD_CHECK(qweight.dtype() == paddle::DataType::INT8, "int8 linear: qweight must be int8");
  PD_CHECK(scale.is_cpu() && scale.dtype() == paddle::DataType::FLOAT32, "int8 linear: scale must be float32");
  const int64_t n = qweight.shape()[0], k = qweight.shape()[1];
  PD_CHECK(scale.numel() == n, "int8 linear: scale must have N = ", n, " entries");
  return LinearForward<I8>(x, qweight.data<int8_t>(), scale.data<float>(), bias.data<float>(), n, k, threads);
}

std::vector<std::vector<int64_t>> Int8LinearShape(const std::vector<int64_t>& x, const std::vector<int64_t>& q,
                                                  const std::vector<int64_t>&, const std::vector<int64_t>&) {
  auto s = x;
  s.back() = q[0];
  return {s};
}

std::vector<paddle::DataType> Int8LinearDtype(const paddle::DataType& x, const paddle::DataType&,
                                              const paddle::DataType&, const paddle::DataType&) {
  return {x};
}

PD_BUILD_OP(pangu_int8_linear)
    .Inputs({"X", "QWeight", "Scale", "Bias"})
    .Outputs({"Out"})
    .Attrs({"threads: int"})
    .SetKernelFn(PD_KERNEL(Int8LinearForward))
    .SetInferShapeFn(PD_INFER_SHAPE(Int8LinearShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(Int8LinearDtype));

// x [..., K] fp32, weight [N, K] bfloat16 (bits, round-to-nearest-even from fp32 at load), bias [N] fp32
// -> [..., N] fp32: fp32 activations, exact bf16 -> fp32 decode, fp32 accumulation (no vdpbf16ps: it would
// round the activations to bf16 too).
std::vector<paddle::Tensor> Bf16LinearForward(const paddle::Tensor& x_in, const paddle::Tensor& weight_in,
                                              const paddle::Tensor& bias, int threads) {
  const auto x = Dense(x_in), weight = Dense(weight_in);
  CheckCommon(x, weight, bias, "bf16 linear");
  PD_CHECK(weight.dtype() == paddle::DataType::BFLOAT16, "bf16 linear: the weight must be bfloat16");
  const int64_t n = weight.shape()[0], k = weight.shape()[1];
  return LinearForward<BF16>(x, static_cast<const uint16_t*>(weight.data()), nullptr, bias.data<float>(), n, k,
                             threads);
}

std::vector<std::vector<int64_t>> Bf16LinearShape(const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                                                  const std::vector<int64_t>&) {
  auto s = x;
  s.back() = w[0];
  return {s};
}

std::vector<paddle::DataType> Bf16LinearDtype(const paddle::DataType& x, const paddle::DataType&,
                                              const paddle::DataType&) {
  return {x};
}

PD_BUILD_OP(pangu_bf16_linear)
    .Inputs({"X", "Weight", "Bias"})
    .Outputs({"Out"})
    .Attrs({"threads: int"})
    .SetKernelFn(PD_KERNEL(Bf16LinearForward))
    .SetInferShapeFn(PD_INFER_SHAPE(Bf16LinearShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(Bf16LinearDtype));

// x [..., K] fp32 and G int8 layers (qweight [N_g, K], scale [N_g], bias [N_g]) -> [..., sum N_g] fp32: each
// layer's pangu_int8_linear output, side by side (LinearCatForward).
std::vector<paddle::Tensor> Int8LinearCatForward(const paddle::Tensor& x_in, const std::vector<paddle::Tensor>& qw,
                                                 const std::vector<paddle::Tensor>& sc,
                                                 const std::vector<paddle::Tensor>& bi, int threads) {
  const auto x = Dense(x_in);
  PD_CHECK(!qw.empty() && qw.size() == sc.size() && qw.size() == bi.size(),
           "int8 linear cat: as many weights, scales and biases, at least one");
  std::vector<paddle::Tensor> dense;
  std::vector<const int8_t*> wp;
  std::vector<const float*> sp, bp;
  std::vector<int64_t> ns;
  for (size_t g = 0; g < qw.size(); ++g) {
    dense.push_back(Dense(qw[g]));
    CheckCommon(x, dense.back(), bi[g], "int8 linear cat");
    PD_CHECK(dense.back().dtype() == paddle::DataType::INT8, "int8 linear cat: qweight must be int8");
    const int64_t n = dense.back().shape()[0];
    PD_CHECK(sc[g].is_cpu() && sc[g].dtype() == paddle::DataType::FLOAT32 && sc[g].numel() == n,
             "int8 linear cat: scale must be float32 with N = ", n, " entries");
    wp.push_back(dense.back().data<int8_t>());
    sp.push_back(sc[g].data<float>());
    bp.push_back(bi[g].data<float>());
    ns.push_back(n);
  }
  return {LinearCatForward<I8>(x, wp, sp, bp, ns, x.shape().back(), threads)};
}

std::vector<std::vector<int64_t>> LinearCatShape(const std::vector<int64_t>& x,
                                                 const std::vector<std::vector<int64_t>>& w) {
  auto s = x;
  s.back() = 0;
  for (const auto& shape : w) s.back() += shape[0];
  return {s};
}

std::vector<std::vector<int64_t>> Int8LinearCatShape(const std::vector<int64_t>& x,
                                                     const std::vector<std::vector<int64_t>>& w,
                                                     const std::vector<std::vector<int64_t>>&,
                                                     const std::vector<std::vector<int64_t>>&) {
  return LinearCatShape(x, w);
}

std::vector<paddle::DataType> Int8LinearCatDtype(const paddle::DataType& x, const std::vector<paddle::DataType>&,
                                                 const std::vector<paddle::DataType>&,
                                                 const std::vector<paddle::DataType>&) {
  return {x};
}

PD_BUILD_OP(pangu_int8_linear_cat)
    .Inputs({"X", paddle::Vec("QWeights"), paddle::Vec("Scales"), paddle::Vec("Biases")})
    .Outputs({"Out"})
    .Attrs({"threads: int"})
    .SetKernelFn(PD_KERNEL(Int8LinearCatForward))
    .SetInferShapeFn(PD_INFER_SHAPE(Int8LinearCatShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(Int8LinearCatDtype));

// The same for bf16 layers (weight [N_g, K] bfloat16, bias [N_g]).
std::vector<paddle::Tensor> Bf16LinearCatForward(const paddle::Tensor& x_in, const std::vector<paddle::Tensor>& ws,
                                                 const std::vector<paddle::Tensor>& bi, int threads) {
  const auto x = Dense(x_in);
  PD_CHECK(!ws.empty() && ws.size() == bi.size(), "bf16 linear cat: as many weights as biases, at least one");
  std::vector<paddle::Tensor> dense;
  std::vector<const uint16_t*> wp;
  std::vector<const float*> sp, bp;
  std::vector<int64_t> ns;
  for (size_t g = 0; g < ws.size(); ++g) {
    dense.push_back(Dense(ws[g]));
    CheckCommon(x, dense.back(), bi[g], "bf16 linear cat");
    PD_CHECK(dense.back().dtype() == paddle::DataType::BFLOAT16, "bf16 linear cat: the weight must be bfloat16");
    wp.push_back(static_cast<const uint16_t*>(dense.back().data()));
    sp.push_back(nullptr);
    bp.push_back(bi[g].data<float>());
    ns.push_back(dense.back().shape()[0]);
  }
  return {LinearCatForward<BF16>(x, wp, sp, bp, ns, x.shape().back(), threads)};
}

std::vector<std::vector<int64_t>> Bf16LinearCatShape(const std::vector<int64_t>& x,
                                                     const std::vector<std::vector<int64_t>>& w,
                                                     const std::vector<std::vector<int64_t>>&) {
  return LinearCatShape(x, w);
}

std::vector<paddle::DataType> Bf16LinearCatDtype(const paddle::DataType& x, const std::vector<paddle::DataType>&,
                                                 const std::vector<paddle::DataType>&) {
  return {x};
}

PD_BUILD_OP(pangu_bf16_linear_cat)
    .Inputs({"X", paddle::Vec("Weights"), paddle::Vec("Biases")})
    .Outputs({"Out"})
    .Attrs({"threads: int"})
    .SetKernelFn(PD_KERNEL(Bf16LinearCatForward))
    .SetInferShapeFn(PD_INFER_SHAPE(Bf16LinearCatShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(Bf16LinearCatDtype));

// The fused decode layer (DecodeLayer above), int8 weights: x [B, 1, H] (updated in place to the layer's
// output), query [B, 1, H] (the query layer's top query embedding; ignored for a block), norms (ln1 w, ln1 b,
// ln2 w, ln2 b), weights / scales / biases of q, k, v, out, fc_in, fc_out, caches [B, nh, cap, hd] (column t
// written in place), mask int64 [B, t + 1] (1 = a real token). Dygraph decode steps only.
void Int8DecodeLayer(paddle::Tensor& x, const paddle::Tensor& query, const std::vector<paddle::Tensor>& norms,
                     const std::vector<paddle::Tensor>& weights, const std::vector<paddle::Tensor>& scales,
                     const std::vector<paddle::Tensor>& biases, paddle::Tensor& kc, paddle::Tensor& vc,
                     const paddle::Tensor& mask, int t, float eps, int act, bool query_layer, int threads) {
  DecodeShape d{0, 0, 0, 0, 0, 0, t, eps, act, threads, query_layer};
  CheckDecodeLayer(d, x, query, norms, weights, biases, kc, vc, mask, paddle::DataType::INT8);
  PD_CHECK(scales.size() == 6, "decode layer: 6 scales expected");
  const float* ln[4];
  const int8_t* w[6];
  const float *s[6], *b[6];
  for (int i = 0; i < 4; ++i) ln[i] = norms[i].data<float>();
  for (int g = 0; g < 6; ++g) {
    PD_CHECK(scales[g].dtype() == paddle::DataType::FLOAT32 && scales[g].numel() == weights[g].shape()[0],
             "decode layer: scale ", g, " must be float32 [N]");
    w[g] = weights[g].data<int8_t>(), s[g] = scales[g].data<float>(), b[g] = biases[g].data<float>();
  }
  DecodeLayer<I8>(d, x.data<float>(), query_layer ? query.data<float>() : nullptr, ln, w, s, b, kc.data<float>(),
                  vc.data<float>(), mask.data<int64_t>());
}

PD_BUILD_OP(pangu_int8_decode_layer_)
    .Inputs({"X", "Query", paddle::Vec("Norms"), paddle::Vec("Weights"), paddle::Vec("Scales"),
             paddle::Vec("Biases"), "KCache", "VCache", "Mask"})
    .Outputs({"XOut", "KCacheOut", "VCacheOut"})
    .Attrs({"t: int", "eps: float", "act: int", "query_layer: bool", "threads: int"})
    .SetInplaceMap({{"X", "XOut"}, {"KCache", "KCacheOut"}, {"VCache", "VCacheOut"}})
    .SetKernelFn(PD_KERNEL(Int8DecodeLayer));

// The same for bf16 weights (no scales).
void Bf16DecodeLayer(paddle::Tensor& x, const paddle::Tensor& query, const std::vector<paddle::Tensor>& norms,
                     const std::vector<paddle::Tensor>& weights, const std::vector<paddle::Tensor>& biases,
                     paddle::Tensor& kc, paddle::Tensor& vc, const paddle::Tensor& mask, int t, float eps, int act,
                     bool query_layer, int threads) {
  DecodeShape d{0, 0, 0, 0, 0, 0, t, eps, act, threads, query_layer};
  CheckDecodeLayer(d, x, query, norms, weights, biases, kc, vc, mask, paddle::DataType::BFLOAT16);
  const float* ln[4];
  const uint16_t* w[6];
  const float *s[6], *b[6];
  for (int i = 0; i < 4; ++i) ln[i] = norms[i].data<float>();
  for (int g = 0; g < 6; ++g)
    w[g] = static_cast<const uint16_t*>(weights[g].data()), s[g] = nullptr, b[g] = biases[g].data<float>();
  DecodeLayer<BF16>(d, x.data<float>(), query_layer ? query.data<float>() : nullptr, ln, w, s, b, kc.data<float>(),
                    vc.data<float>(), mask.data<int64_t>());
}

PD_BUILD_OP(pangu_bf16_decode_layer_)
    .Inputs({"X", "Query", paddle::Vec("Norms"), paddle::Vec("Weights"), paddle::Vec("Biases"), "KCache", "VCache",
             "Mask"})
    .Outputs({"XOut", "KCacheOut", "VCacheOut"})
    .Attrs({"t: int", "eps: float", "act: int", "query_layer: bool", "threads: int"})
    .SetInplaceMap({{"X", "XOut"}, {"KCache", "KCacheOut"}, {"VCache", "VCacheOut"}})
    .SetKernelFn(PD_KERNEL(Bf16DecodeLayer));

// The fused layer's activation of x (float32, any shape) at the chosen level, as a new tensor: for the
// accuracy test of the vectorised gelu_tanh (tests/unit/test_fused_decode.py).
std::vector<paddle::Tensor> DecodeActivation(const paddle::Tensor& x_in, int act) {
  const auto x = Dense(x_in);
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32, "decode activation: a float32 CPU tensor");
  auto y = paddle::empty(x.shape(), paddle::DataType::FLOAT32, paddle::CPUPlace());
  std::memcpy(y.data<float>(), x.data<float>(), x.numel() * sizeof(float));
  ActivationRow(ChosenLevel(), y.data<float>(), x.numel(), act);
  return {y};
}

PD_BUILD_OP(pangu_decode_activation)
    .Inputs({"X"})
    .Outputs({"Out"})
    .Attrs({"act: int"})
    .SetKernelFn(PD_KERNEL(DecodeActivation));

// The level pangu_int8_linear would run now (0 scalar, 1 avx2, 2 avx512) as an int32 [3] tensor together
// with the CPU's best level (lets the tests confirm that forcing PANGU_INT8_ISA really switched the path)
// and the thread count of the last split linear call (0: none yet).
std::vector<paddle::Tensor> Int8Isa(const paddle::Tensor& any) {
  auto out = paddle::empty({3}, paddle::DataType::INT32, paddle::CPUPlace());
  out.data<int32_t>()[0] = ChosenLevel();
  out.data<int32_t>()[1] = CpuLevel();
  out.data<int32_t>()[2] = g_last_threads;
  return {out};
}

std::vector<std::vector<int64_t>> Int8IsaShape(const std::vector<int64_t>&) { return {{3}}; }
std::vector<paddle::DataType> Int8IsaDtype(const paddle::DataType&) { return {paddle::DataType::INT32}; }

PD_BUILD_OP(pangu_int8_isa)
    .Inputs({"X"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(Int8Isa))
    .SetInferShapeFn(PD_INFER_SHAPE(Int8IsaShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(Int8IsaDtype));

// ------------------------------------------------------------------------------------------------
// The machine's read bandwidth for `pangu bench generate`'s roofline: sum a large fp32 buffer over
// `threads` threads (each reads a contiguous slice once, as decode streams its weights). Returns the
// sum [1] (so the reads cannot be optimised away).
std::vector<paddle::Tensor> StreamRead(const paddle::Tensor& x, int threads) {
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32, "stream read: a float32 CPU tensor");
  const float* p = x.data<float>();
  const int64_t n = x.numel();
  double total = 0.0;
  const int nt = std::max(1, threads);
#pragma omp parallel num_threads(nt) reduction(+ : total)
  {
#ifdef _OPENMP
    const int tid = omp_get_thread_num(), cnt = omp_get_num_threads();
#else
    const int tid = 0, cnt = 1;
#endif
    const int64_t lo = n * tid / cnt, hi = n * (tid + 1) / cnt;
    float acc[16] = {0};
    int64_t i = lo;
    for (; i + 16 <= hi; i += 16)
#pragma omp simd
      for (int j = 0; j < 16; ++j) acc[j] += p[i + j];
    for (; i < hi; ++i) acc[0] += p[i];
    for (float a : acc) total += a;
  }
  auto out = paddle::empty({1}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  out.data<float>()[0] = static_cast<float>(total);
  return {out};
}

PD_BUILD_OP(pangu_stream_read)
    .Inputs({"X"})
    .Outputs({"Out"})
    .Attrs({"threads: int"})
    .SetKernelFn(PD_KERNEL(StreamRead));
