// Fused, multi-threaded fp32 CPU kernels for the training step (issue 14), built on first use by
// paddle_pangu/kernels/__init__.py through paddle.utils.cpp_extension.
//
// Why: on the project's 2-core CPUs two-thirds of a training step is MKL GEMM (both cores); most of
// the rest was Paddle's one-threaded CPU kernels. Profile of the mini-512 step (h512 L4 V40000 b4 s256,
// paddle.profiler, per step): adamw_ 193 ms (119 of them the 20.5M-element embedding),
// cross_entropy_with_softmax 101 + 16 ms (it writes the full [N, V] softmax), layer_norm grad 75 ms
// (8.3 ms per [1024, 512]); the mask add, the strided head copies and the bias gradient, each op below.
//
// The math is the reference math, evaluated in fp32 in the same order where Paddle's kernels define
// one (AdamW: phi jit refer AdamW); no -ffast-math, no contraction into FMA, so NaN / inf propagate.
// The only approximation is exp() in the AVX2 path (Cephes polynomial, relative error < 1e-6; results
// below 2^-126 flush to 0), used by the cross entropy and the attention softmax;
// tests/unit/test_kernels.py bounds every kernel against a float64 reference.
//
// Threads: each op takes `threads` (paddle_pangu.kernels.threads(), the MKL thread count that
// paddle_pangu.runtime sets per process), so a launched worker that gets one core runs its kernels on
// one thread.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "paddle/extension.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

bool HasAvx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

// ----------------------------------------------------------------------------------------------
// exp for x <= 0 (arguments are x - rowmax): Cephes expf, 8 lanes.
__attribute__((target("avx2,fma"))) inline __m256 Exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3365447505531f);  // exp(lo) = 2^-126, the smallest normal
  const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);  // results below it flush to 0
  x = _mm256_max_ps(x, lo);
  __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_sub_ps(x, _mm256_mul_ps(fx, _mm256_set1_ps(0.693359375f)));
  x = _mm256_sub_ps(x, _mm256_mul_ps(fx, _mm256_set1_ps(-2.12194440e-4f)));
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(under, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
}

__attribute__((target("avx2,fma"))) float SumExpAvx2(const float* x, int64_t n, float m) {
  __m256 acc = _mm256_setzero_ps();
  const __m256 vm = _mm256_set1_ps(m);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_add_ps(acc, Exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm)));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  double s = 0;
  for (float v : lanes) s += v;
  for (; i < n; ++i) s += std::exp(x[i] - m);
  return static_cast<float>(s);
}

__attribute__((target("avx2,fma"))) void ScaledExpAvx2(const float* x, float* g, int64_t n, float lse, float scale) {
  const __m256 vl = _mm256_set1_ps(lse), vs = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(g + i, _mm256_mul_ps(Exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vl)), vs));
  for (; i < n; ++i) g[i] = std::exp(x[i] - lse) * scale;
}

float SumExp(const float* x, int64_t n, float m) {
  if (HasAvx2()) return SumExpAvx2(x, n, m);
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(x[i] - m);
  return static_cast<float>(s);
}

void ScaledExp(const float* x, float* g, int64_t n, float lse, float scale) {
  if (HasAvx2()) return ScaledExpAvx2(x, g, n, lse, scale);
  for (int64_t i = 0; i < n; ++i) g[i] = std::exp(x[i] - lse) * scale;
}

// Inputs are read through raw pointers: a strided view (a transposed gradient, say) is made dense first
// (a no-op for the contiguous tensors the model passes).
paddle::Tensor Dense(const paddle::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }

void CheckCpuFloat(const paddle::Tensor& t, const char* what) {
  PD_CHECK(t.is_cpu(), what, " must be a CPU tensor");
  PD_CHECK(t.dtype() == paddle::DataType::FLOAT32, what, " must be float32");
}

}  // namespace

// ----------------------------------------------------------------------------------------------
// AdamW, in place. The order of Paddle's CPU adamw (phi/kernels/cpu/adamw_kernel.cc + jit refer
// AdamW): decay from the un-scaled lr, then the moments, then the bias-corrected step.
void AdamWInplace(paddle::Tensor& param, const paddle::Tensor& grad, const paddle::Tensor& lr,
                  paddle::Tensor& m1, paddle::Tensor& m2, paddle::Tensor& b1p, paddle::Tensor& b2p,
                  float beta1, float beta2, float epsilon, float lr_ratio, float coeff, bool with_decay,
                  int threads) {
  CheckCpuFloat(param, "param");
  CheckCpuFloat(grad, "grad");
  PD_CHECK(grad.numel() == param.numel() && m1.numel() == param.numel() && m2.numel() == param.numel(),
           "adamw: param, grad and moments differ in size");
  const float old_lr = lr.dtype() == paddle::DataType::FLOAT64 ? static_cast<float>(lr.data<double>()[0])
                                                               : lr.data<float>()[0];
  float* b1 = b1p.data<float>();
  float* b2 = b2p.data<float>();
  const float beta1_p = b1[0], beta2_p = b2[0];
  const float step = old_lr * (std::sqrt(1 - beta2_p) / (1 - beta1_p));
  const float neg_step = -step;
  const float eps = epsilon * std::sqrt(1 - beta2_p);
  float* p = param.data<float>();
  const float* g = grad.data<float>();
  float* a = m1.data<float>();
  float* v = m2.data<float>();
  const int64_t n = param.numel();
  const float one_b1 = 1 - beta1, one_b2 = 1 - beta2;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float pt = with_decay ? p[i] - old_lr * lr_ratio * coeff * p[i] : p[i];
    const float mo = beta1 * a[i] + one_b1 * g[i];
    const float vo = beta2 * v[i] + one_b2 * g[i] * g[i];
    a[i] = mo;
    v[i] = vo;
    p[i] = pt + neg_step * (mo / (std::sqrt(vo) + eps));
  }
  b1[0] = beta1 * beta1_p;
  b2[0] = beta2 * beta2_p;
}

PD_BUILD_OP(pangu_adamw_)
    .Inputs({"Param", "Grad", "LearningRate", "Moment1", "Moment2", "Beta1Pow", "Beta2Pow"})
    .Outputs({"ParamOut", "Moment1Out", "Moment2Out", "Beta1PowOut", "Beta2PowOut"})
    .Attrs({"beta1: float", "beta2: float", "epsilon: float", "lr_ratio: float", "coeff: float",
            "with_decay: bool", "threads: int"})
    .SetInplaceMap({{"Param", "ParamOut"}, {"Moment1", "Moment1Out"}, {"Moment2", "Moment2Out"},
                    {"Beta1Pow", "Beta1PowOut"}, {"Beta2Pow", "Beta2PowOut"}})
    .SetKernelFn(PD_KERNEL(AdamWInplace));

// ----------------------------------------------------------------------------------------------
// Softmax cross entropy per row: loss[n] = logsumexp(x[n]) - x[n, label[n]], 0 where label ==
// ignore_index. Saves only lse [N] (not the [N, V] softmax); the gradient recomputes exp.
// A row with a NaN or inf logit gets loss NaN (and a NaN gradient), so divergence is never hidden.
std::vector<paddle::Tensor> SoftmaxCEForward(const paddle::Tensor& logits_in, const paddle::Tensor& label_in,
                                             int64_t ignore_index, int threads) {
  const auto logits = Dense(logits_in), label = Dense(label_in);
  CheckCpuFloat(logits, "logits");
  PD_CHECK(label.dtype() == paddle::DataType::INT64, "label must be int64");
  const int64_t v = logits.shape().back();
  const int64_t rows = logits.numel() / v;
  PD_CHECK(label.numel() == rows, "label must have one entry per logits row");
  auto loss = paddle::empty({rows}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto lse = paddle::empty({rows}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* x = logits.data<float>();
  const int64_t* y = label.data<int64_t>();
  float* out = loss.data<float>();
  float* l = lse.data<float>();
  int64_t bad_label = -1;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * v;
    const int64_t t = y[r];
    if (t == ignore_index) {  // an ignored row scores 0 whatever its logits
      l[r] = out[r] = 0.0f;
      continue;
    }
    float m = -std::numeric_limits<float>::infinity();
    float probe = 0.0f;  // x * 0 is NaN for a NaN or inf x
#pragma omp simd reduction(max : m) reduction(+ : probe)
    for (int64_t i = 0; i < v; ++i) {
      m = std::max(m, xr[i]);
      probe += xr[i] * 0.0f;
    }
    if (probe != 0.0f) {
      l[r] = out[r] = std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    l[r] = m + std::log(SumExp(xr, v, m));
    if (t < 0 || t >= v) {
#pragma omp critical
      bad_label = t;
      out[r] = 0.0f;
    } else {
      out[r] = l[r] - xr[t];
    }
  }
  PD_CHECK(bad_label < 0, "label ", bad_label, " outside [0, ", v, ")");
  return {loss, lse};
}

std::vector<paddle::Tensor> SoftmaxCEBackward(const paddle::Tensor& logits_in, const paddle::Tensor& label_in,
                                              const paddle::Tensor& lse, const paddle::Tensor& dloss_in,
                                              int64_t ignore_index, int threads) {
  const auto logits = Dense(logits_in), label = Dense(label_in), dloss = Dense(dloss_in);
  const int64_t v = logits.shape().back();
  const int64_t rows = logits.numel() / v;
  auto grad = paddle::empty(logits.shape(), paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* x = logits.data<float>();
  const int64_t* y = label.data<int64_t>();
  const float* l = lse.data<float>();
  const float* d = dloss.data<float>();
  float* g = grad.data<float>();
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    float* gr = g + r * v;
    const int64_t t = y[r];
    if (t == ignore_index) {
      std::fill(gr, gr + v, 0.0f);
      continue;
    }
    ScaledExp(x + r * v, gr, v, l[r], d[r]);
    gr[t] -= d[r];
  }
  return {grad};
}

std::vector<std::vector<int64_t>> SoftmaxCEShape(const std::vector<int64_t>& logits, const std::vector<int64_t>&) {
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < logits.size(); ++i) rows *= logits[i];
  return {{rows}, {rows}};
}

std::vector<paddle::DataType> SoftmaxCEDtype(const paddle::DataType&, const paddle::DataType&) {
  return {paddle::DataType::FLOAT32, paddle::DataType::FLOAT32};
}

PD_BUILD_OP(pangu_softmax_ce)
    .Inputs({"Logits", "Label"})
    .Outputs({"Loss", "Lse"})
    .Attrs({"ignore_index: int64_t", "threads: int"})
    .SetKernelFn(PD_KERNEL(SoftmaxCEForward))
    .SetInferShapeFn(PD_INFER_SHAPE(SoftmaxCEShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(SoftmaxCEDtype));

PD_BUILD_GRAD_OP(pangu_softmax_ce)
    .Inputs({"Logits", "Label", "Lse", paddle::Grad("Loss")})
    .Outputs({paddle::Grad("Logits")})
    .Attrs({"ignore_index: int64_t", "threads: int"})
    .SetKernelFn(PD_KERNEL(SoftmaxCEBackward));

// ----------------------------------------------------------------------------------------------
// LayerNorm over the last dimension: y = (x - mean) * rstd * w + b, rstd = 1 / sqrt(var + eps),
// var the biased variance (as Paddle and the paper's MindSpore code). Saves mean and rstd per row.
std::vector<paddle::Tensor> LayerNormForward(const paddle::Tensor& x_in, const paddle::Tensor& w_in,
                                             const paddle::Tensor& b_in, float eps, int threads) {
  const auto x = Dense(x_in), w = Dense(w_in), b = Dense(b_in);
  CheckCpuFloat(x, "x");
  CheckCpuFloat(w, "weight");
  CheckCpuFloat(b, "bias");
  const int64_t h = x.shape().back();
  const int64_t rows = x.numel() / h;
  PD_CHECK(w.numel() == h && b.numel() == h, "layer_norm: weight and bias must have the last dimension's size");
  auto y = paddle::empty(x.shape(), paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto mean = paddle::empty({rows}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto rstd = paddle::empty({rows}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* xp = x.data<float>();
  const float* wp = w.data<float>();
  const float* bp = b.data<float>();
  float* yp = y.data<float>();
  float* mp = mean.data<float>();
  float* rp = rstd.data<float>();
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = xp + r * h;
    float* yr = yp + r * h;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < h; ++i) s += xr[i];
    const float mu = s / h;
    float q = 0.0f;
#pragma omp simd reduction(+ : q)
    for (int64_t i = 0; i < h; ++i) q += (xr[i] - mu) * (xr[i] - mu);
    const float rs = 1.0f / std::sqrt(q / h + eps);
#pragma omp simd
    for (int64_t i = 0; i < h; ++i) yr[i] = (xr[i] - mu) * rs * wp[i] + bp[i];
    mp[r] = mu;
    rp[r] = rs;
  }
  return {y, mean, rstd};
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w; dw = sum_rows dy * xhat; db = sum_rows dy.
std::vector<paddle::Tensor> LayerNormBackward(const paddle::Tensor& x_in, const paddle::Tensor& w_in,
                                              const paddle::Tensor& mean, const paddle::Tensor& rstd,
                                              const paddle::Tensor& dy_in, float eps, int threads) {
  const auto x = Dense(x_in), w = Dense(w_in), dy = Dense(dy_in);
  const int64_t h = x.shape().back();
  const int64_t rows = x.numel() / h;
  auto dx = paddle::empty(x.shape(), paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto dw = paddle::empty(w.shape(), paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto db = paddle::empty(w.shape(), paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* xp = x.data<float>();
  const float* wp = w.data<float>();
  const float* mp = mean.data<float>();
  const float* rp = rstd.data<float>();
  const float* gp = dy.data<float>();
  float* dxp = dx.data<float>();
  const int nt = std::max(1, threads);
  std::vector<float> part(static_cast<size_t>(nt) * 2 * h, 0.0f);  // per thread: dw then db
#pragma omp parallel num_threads(nt)
  {
#ifdef _OPENMP
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif
    float* pdw = part.data() + static_cast<size_t>(tid) * 2 * h;
    float* pdb = pdw + h;
    std::vector<float> xhat(h), g(h);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = xp + r * h;
      const float* dyr = gp + r * h;
      float* dxr = dxp + r * h;
      const float mu = mp[r], rs = rp[r];
      float sg = 0.0f, sgx = 0.0f;
#pragma omp simd reduction(+ : sg, sgx)
      for (int64_t i = 0; i < h; ++i) {
        xhat[i] = (xr[i] - mu) * rs;
        g[i] = dyr[i] * wp[i];
        sg += g[i];
        sgx += g[i] * xhat[i];
        pdw[i] += dyr[i] * xhat[i];
        pdb[i] += dyr[i];
      }
      const float a = sg / h, c = sgx / h;
#pragma omp simd
      for (int64_t i = 0; i < h; ++i) dxr[i] = rs * (g[i] - a - xhat[i] * c);
    }
  }
  float* dwp = dw.data<float>();
  float* dbp = db.data<float>();
  for (int64_t i = 0; i < h; ++i) {
    float sw = 0.0f, sb = 0.0f;
    for (int t = 0; t < nt; ++t) {
      sw += part[static_cast<size_t>(t) * 2 * h + i];
      sb += part[static_cast<size_t>(t) * 2 * h + h + i];
    }
    dwp[i] = sw;
    dbp[i] = sb;
  }
  return {dx, dw, db};
}

std::vector<std::vector<int64_t>> LayerNormShape(const std::vector<int64_t>& x, const std::vector<int64_t>&,
                                                 const std::vector<int64_t>&) {
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < x.size(); ++i) rows *= x[i];
  return {x, {rows}, {rows}};
}

std::vector<paddle::DataType> LayerNormDtype(const paddle::DataType&, const paddle::DataType&,
                                             const paddle::DataType&) {
  return {paddle::DataType::FLOAT32, paddle::DataType::FLOAT32, paddle::DataType::FLOAT32};
}

PD_BUILD_OP(pangu_layer_norm)
    .Inputs({"X", "W", "B"})
    .Outputs({"Y", "Mean", "Rstd"})
    .Attrs({"eps: float", "threads: int"})
    .SetKernelFn(PD_KERNEL(LayerNormForward))
    .SetInferShapeFn(PD_INFER_SHAPE(LayerNormShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(LayerNormDtype));

PD_BUILD_GRAD_OP(pangu_layer_norm)
    .Inputs({"X", "W", "Mean", "Rstd", paddle::Grad("Y")})
    .Outputs({paddle::Grad("X"), paddle::Grad("W"), paddle::Grad("B")})
    .Attrs({"eps: float", "threads: int"})
    .SetKernelFn(PD_KERNEL(LayerNormBackward));

// ----------------------------------------------------------------------------------------------
// Attention probabilities: softmax over the last dimension of x + mask, x [B, nh, S, T] fp32, mask
// additive [1 or B, 1 or nh, 1 or S, T] (broadcast, as `x + mask` broadcasts). Replaces Paddle's
// broadcast add (24.7 ms for [4, 8, 256, 256] + [4, 1, 256, 256], a same-shape add is 0.3 ms) and its
// one-threaded softmax. A row with a NaN gets NaN probabilities (as Paddle's softmax).
namespace {

__attribute__((target("avx2,fma"))) float ExpRowAvx2(const float* x, const float* mk, float* p, int64_t n, float m) {
  const __m256 vm = _mm256_set1_ps(m);
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 z = _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(mk + i));
    __m256 e = Exp8(_mm256_sub_ps(z, vm));
    _mm256_storeu_ps(p + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  float s = 0.0f;
  for (float v : lanes) s += v;
  for (; i < n; ++i) {
    p[i] = std::exp(x[i] + mk[i] - m);
    s += p[i];
  }
  return s;
}

float ExpRow(const float* x, const float* mk, float* p, int64_t n, float m) {
  if (HasAvx2()) return ExpRowAvx2(x, mk, p, n, m);
  float s = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    p[i] = std::exp(x[i] + mk[i] - m);
    s += p[i];
  }
  return s;
}

}  // namespace

std::vector<paddle::Tensor> MaskedSoftmaxForward(const paddle::Tensor& x_in, const paddle::Tensor& mask_in, int threads) {
  const auto x = Dense(x_in), mask = Dense(mask_in);
  CheckCpuFloat(x, "scores");
  CheckCpuFloat(mask, "mask");
  const auto xs = x.shape();
  const auto ms = mask.shape();
  PD_CHECK(xs.size() == 4 && ms.size() == 4, "masked_softmax: scores and mask must be 4-D");
  PD_CHECK(ms[3] == xs[3], "masked_softmax: the mask's last dimension must be the scores'");
  for (int d = 0; d < 3; ++d) PD_CHECK(ms[d] == 1 || ms[d] == xs[d], "masked_softmax: mask does not broadcast");
  const int64_t B = xs[0], H = xs[1], S = xs[2], T = xs[3];
  const int64_t sb = ms[0] == 1 ? 0 : ms[1] * ms[2] * T, sh = ms[1] == 1 ? 0 : ms[2] * T, ss = ms[2] == 1 ? 0 : T;
  auto p = paddle::empty(xs, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* xp = x.data<float>();
  const float* mp = mask.data<float>();
  float* pp = p.data<float>();
  const int64_t rows = B * H * S;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = r / (H * S), h = (r / S) % H, s = r % S;
    const float* xr = xp + r * T;
    const float* mr = mp + b * sb + h * sh + s * ss;
    float* pr = pp + r * T;
    float m = -std::numeric_limits<float>::infinity();
    float probe = 0.0f;
#pragma omp simd reduction(max : m) reduction(+ : probe)
    for (int64_t i = 0; i < T; ++i) {
      const float z = xr[i] + mr[i];
      m = std::max(m, z);
      probe += z * 0.0f;
    }
    if (probe != 0.0f || !std::isfinite(m)) {
      std::fill(pr, pr + T, std::numeric_limits<float>::quiet_NaN());
      continue;
    }
    const float inv = 1.0f / ExpRow(xr, mr, pr, T, m);
#pragma omp simd
    for (int64_t i = 0; i < T; ++i) pr[i] *= inv;
  }
  return {p};
}

// dx = p * (dp - sum(dp * p)) per row
std::vector<paddle::Tensor> MaskedSoftmaxBackward(const paddle::Tensor& p, const paddle::Tensor& dp_in, int threads) {
  const auto dp = Dense(dp_in);
  const int64_t T = p.shape().back();
  const int64_t rows = p.numel() / T;
  auto dx = paddle::empty(p.shape(), paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* pp = p.data<float>();
  const float* gp = dp.data<float>();
  float* dxp = dx.data<float>();
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* pr = pp + r * T;
    const float* gr = gp + r * T;
    float* dr = dxp + r * T;
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int64_t i = 0; i < T; ++i) dot += gr[i] * pr[i];
#pragma omp simd
    for (int64_t i = 0; i < T; ++i) dr[i] = pr[i] * (gr[i] - dot);
  }
  return {dx};
}

std::vector<std::vector<int64_t>> MaskedSoftmaxShape(const std::vector<int64_t>& x, const std::vector<int64_t>&) {
  return {x};
}

std::vector<paddle::DataType> MaskedSoftmaxDtype(const paddle::DataType&, const paddle::DataType&) {
  return {paddle::DataType::FLOAT32};
}

PD_BUILD_OP(pangu_masked_softmax)
    .Inputs({"X", "Mask"})
    .Outputs({"P"})
    .Attrs({"threads: int"})
    .SetKernelFn(PD_KERNEL(MaskedSoftmaxForward))
    .SetInferShapeFn(PD_INFER_SHAPE(MaskedSoftmaxShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(MaskedSoftmaxDtype));

PD_BUILD_GRAD_OP(pangu_masked_softmax)
    .Inputs({"P", paddle::Grad("P")})
    .Outputs({paddle::Grad("X")})
    .Attrs({"threads: int"})
    .SetKernelFn(PD_KERNEL(MaskedSoftmaxBackward));

// ----------------------------------------------------------------------------------------------
// Attention heads: [A, B, C, D] -> [A, C, B, D] as one dense copy of D-element rows (split heads
// [B, S, nh, hd] -> [B, nh, S, hd], and back to merge them). Paddle's transpose is a strided view,
// and every op that then needs dense memory (the reshape's gradient, a scale) walked it element by
// element: 5 ms per [4, 256, 8, 64] copy, 4 per layer forward and backward. Its gradient is the same op.
std::vector<paddle::Tensor> SwapDims12(const paddle::Tensor& x_in, int threads) {
  const auto x = Dense(x_in);
  CheckCpuFloat(x, "x");
  const auto s = x.shape();
  PD_CHECK(s.size() == 4, "swap_dims12: a 4-D tensor is expected");
  const int64_t A = s[0], B = s[1], C = s[2], D = s[3];
  auto out = paddle::empty({A, C, B, D}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* xp = x.data<float>();
  float* op = out.data<float>();
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < A * C * B; ++r) {
    const int64_t a = r / (C * B), c = (r / B) % C, b = r % B;
    std::copy(xp + ((a * B + b) * C + c) * D, xp + ((a * B + b) * C + c + 1) * D, op + r * D);
  }
  return {out};
}

std::vector<std::vector<int64_t>> SwapDims12Shape(const std::vector<int64_t>& x) {
  return {{x[0], x[2], x[1], x[3]}};
}

std::vector<paddle::DataType> SwapDims12Dtype(const paddle::DataType& x) { return {x}; }

PD_BUILD_OP(pangu_swap_dims12)
    .Inputs({"X"})
    .Outputs({"Out"})
    .Attrs({"threads: int"})
    .SetKernelFn(PD_KERNEL(SwapDims12))
    .SetInferShapeFn(PD_INFER_SHAPE(SwapDims12Shape))
    .SetInferDtypeFn(PD_INFER_DTYPE(SwapDims12Dtype));

PD_BUILD_GRAD_OP(pangu_swap_dims12)
    .Inputs({paddle::Grad("Out")})
    .Outputs({paddle::Grad("X")})
    .Attrs({"threads: int"})
    .SetKernelFn(PD_KERNEL(SwapDims12));

// ----------------------------------------------------------------------------------------------
// Dense layer y = x @ w + b (x [..., K], w [K, N], b [N]): the forward and the weight / input gradients
// are Paddle's own addmm and matmul (MKL); the bias gradient, sum over rows of dy, is a column sum here.
// Paddle's addmm gradient reduces it with a strided one-threaded reduction: 14.6 ms for [1024, 2048]
// (the two gradient GEMMs take 28 ms). Each thread owns a range of columns and adds the rows in order,
// the order of a sequential column sum.
namespace {

paddle::Tensor As2D(const paddle::Tensor& t, int64_t cols) { return paddle::experimental::reshape(t, {-1, cols}); }

}  // namespace

std::vector<paddle::Tensor> LinearForward(const paddle::Tensor& x_in, const paddle::Tensor& w, const paddle::Tensor& b,
                                          int threads) {
  const auto x = Dense(x_in);
  CheckCpuFloat(x, "x");
  const auto s = x.shape();
  const int64_t k = s.back(), n = w.shape()[1];
  PD_CHECK(w.shape()[0] == k && b.numel() == n, "linear: x [..., K], weight [K, N] and bias [N] expected");
  auto y = paddle::experimental::addmm(b, As2D(x, k), w, 1.0f, 1.0f);
  auto out_shape = s;
  out_shape.back() = n;
  return {paddle::experimental::reshape(y, out_shape)};
}

std::vector<paddle::Tensor> LinearBackward(const paddle::Tensor& x_in, const paddle::Tensor& w,
                                           const paddle::Tensor& dy_in, int threads) {
  const auto x = Dense(x_in), dy = Dense(dy_in);
  const int64_t k = x.shape().back(), n = w.shape()[1];
  const auto dy2 = As2D(dy, n);
  auto dx = paddle::experimental::reshape(paddle::experimental::matmul(dy2, w, false, true), x.shape());
  auto dw = paddle::experimental::matmul(As2D(x, k), dy2, true, false);
  auto db = paddle::empty({n}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* g = dy2.data<float>();
  float* out = db.data<float>();
  const int64_t rows = dy2.numel() / n;
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, n / 64)));
#pragma omp parallel num_threads(nt)
  {
#ifdef _OPENMP
    const int tid = omp_get_thread_num(), cnt = omp_get_num_threads();
#else
    const int tid = 0, cnt = 1;
#endif
    const int64_t lo = n * tid / cnt, hi = n * (tid + 1) / cnt;
    std::fill(out + lo, out + hi, 0.0f);
    for (int64_t r = 0; r < rows; ++r) {
      const float* gr = g + r * n;
#pragma omp simd
      for (int64_t j = lo; j < hi; ++j) out[j] += gr[j];
    }
  }
  return {dx, dw, db};
}

std::vector<std::vector<int64_t>> LinearShape(const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                                              const std::vector<int64_t>&) {
  auto s = x;
  s.back() = w[1];
  return {s};
}

std::vector<paddle::DataType> LinearDtype(const paddle::DataType& x, const paddle::DataType&, const paddle::DataType&) {
  return {x};
}

PD_BUILD_OP(pangu_linear)
    .Inputs({"X", "W", "B"})
    .Outputs({"Out"})
    .Attrs({"threads: int"})
    .SetKernelFn(PD_KERNEL(LinearForward))
    .SetInferShapeFn(PD_INFER_SHAPE(LinearShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(LinearDtype));

PD_BUILD_GRAD_OP(pangu_linear)
    .Inputs({"X", "W", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("W"), paddle::Grad("B")})
    .Attrs({"threads: int"})
    .SetKernelFn(PD_KERNEL(LinearBackward));
