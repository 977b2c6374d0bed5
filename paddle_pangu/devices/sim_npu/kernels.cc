// Low-precision kernels of the simulated `npu` device: the bf16 / fp16 kernels mixed-precision
// training, the loss scaler, export and decode need on `npu` and that Paddle's CPU build lacks
// (Paddle falls back to a CPU kernel for an op on a custom place only where the CPU registers that
// dtype; docs/PLATFORM.md "Custom devices, bf16 and the CPU kernels Paddle lacks").
//
// Numerics: every kernel widens its bf16 / fp16 inputs to fp32, computes in fp32 and rounds ONCE
// to the output dtype (round-to-nearest-even, phi::dtype conversions), the contract of Ascend's
// Cube unit (fp16 / bf16 operands, fp32 accumulation). A mixed-precision run on this device is
// therefore a faithful model of the device's rounding, not of its speed: the loops are plain and
// single-threaded, sized for the tiny test model.
//
// Which kernels: found by running bf16 / fp16 O1 and O2 `pangu train --device npu`, the GradScaler,
// `pangu export` and decode, one failure at a time (`kernel ... is not registered and fail to
// fallback to CPU one`); docs/NPU_KERNELS.md lists them with the run that needed each. One file registers
// a kernel name (the registration macro defines one symbol per name).
#include <dlfcn.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "paddle/phi/extension.h"

namespace pangu_npu {

using bf16 = phi::dtype::bfloat16;
using fp16 = phi::dtype::float16;

template <typename T>
inline auto widen(T v) { if constexpr (std::is_same<T, double>::value) return v; else return static_cast<float>(v); }

template <typename T>
std::vector<float> to_f32(const phi::DenseTensor& t) {
  const T* p = t.data<T>();
  std::vector<float> out(t.numel());
  for (int64_t i = 0; i < t.numel(); ++i) out[i] = widen(p[i]);
  return out;
}

template <typename T>
void store(const std::vector<float>& src, T* dst) {
  for (size_t i = 0; i < src.size(); ++i) dst[i] = static_cast<T>(src[i]);  // the one rounding
}

// ---- matmul (matmul_v2): [..., M, K] x [..., K, N] with batch broadcasting -----------------------
struct MatmulShape {
  int64_t M, N, K;
  int64_t xr, xc, yr, yc;               // stored matrix shape of x and y (before transpose)
  std::vector<int64_t> batch;           // broadcast batch dims of out
  std::vector<int64_t> xbatch, ybatch;  // each operand's batch dims, right-aligned to `batch`
  int64_t nbatch() const {
    int64_t n = 1;
    for (auto d : batch) n *= d;
    return n;
  }
  // flat batch index of an operand for output batch b (broadcast dims of size 1 repeat)
  static int64_t operand_index(int64_t b, const std::vector<int64_t>& out, const std::vector<int64_t>& opd) {
    int64_t idx = 0, stride = 1;
    for (int64_t i = static_cast<int64_t>(out.size()) - 1; i >= 0; --i) {
      int64_t coord = b % out[i];
      b /= out[i];
      int64_t d = opd[i];
      idx += (d == 1 ? 0 : coord) * stride;
      stride *= d;
    }
    return idx;
  }
};

MatmulShape matmul_shape(const phi::DDim& xd, const phi::DDim& yd, bool tx, bool ty) {
  MatmulShape s;
  std::vector<int64_t> xv = phi::vectorize(xd), yv = phi::vectorize(yd);
  if (xv.size() == 1) xv = tx ? std::vector<int64_t>{xv[0], 1} : std::vector<int64_t>{1, xv[0]};
  if (yv.size() == 1) yv = ty ? std::vector<int64_t>{1, yv[0]} : std::vector<int64_t>{yv[0], 1};
  s.xr = xv[xv.size() - 2];
  s.xc = xv.back();
  s.yr = yv[yv.size() - 2];
  s.yc = yv.back();
  s.M = tx ? s.xc : s.xr;
  s.K = tx ? s.xr : s.xc;
  s.N = ty ? s.yr : s.yc;
  PADDLE_ENFORCE_EQ((ty ? s.yc : s.yr), s.K,
                    phi::errors::InvalidArgument("sim npu matmul: inner dimensions differ"));
  std::vector<int64_t> xb(xv.begin(), xv.end() - 2), yb(yv.begin(), yv.end() - 2);
  size_t nb = std::max(xb.size(), yb.size());
  xb.insert(xb.begin(), nb - xb.size(), 1);
  yb.insert(yb.begin(), nb - yb.size(), 1);
  s.batch.resize(nb);
  for (size_t i = 0; i < nb; ++i) s.batch[i] = std::max(xb[i], yb[i]);
  s.xbatch = xb;
  s.ybatch = yb;
  return s;
}

// The fp32 GEMM: MKL's cblas_sgemm from the libmklml_intel.so Paddle has already loaded (the library
// Paddle's own CPU fp32 matmul calls, so a bf16 matmul here is exactly the CPU fp32 matmul of the
// rounded operands, rounded once); a plain loop where that library is absent (a non-MKL Paddle build).
using SgemmFn = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*,
                         int);
SgemmFn find_sgemm() {
  void* sym = dlsym(RTLD_DEFAULT, "cblas_sgemm");
  if (!sym) {
    void* lib = dlopen("libmklml_intel.so", RTLD_NOW | RTLD_NOLOAD);
    if (lib) sym = dlsym(lib, "cblas_sgemm");
  }
  return reinterpret_cast<SgemmFn>(sym);
}

// C[M, N] (+)= op(A)[M, K] * op(B)[K, N] in fp32; A stored [*, ac] row-major, B stored [*, bc]
void gemm(const float* A, bool ta, int64_t ac, const float* B, bool tb, int64_t bc, float* C, int64_t M,
          int64_t N, int64_t K, bool accumulate) {
  static const SgemmFn sgemm = find_sgemm();
  if (sgemm && M < INT32_MAX && N < INT32_MAX && K < INT32_MAX) {
    constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;  // CBLAS enums
    sgemm(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, static_cast<int>(M), static_cast<int>(N),
          static_cast<int>(K), 1.0f, A, static_cast<int>(ac), B, static_cast<int>(bc), accumulate ? 1.0f : 0.0f,
          C, static_cast<int>(N));
    return;
  }
  if (!accumulate) std::fill(C, C + M * N, 0.0f);
  std::vector<float> bk(N);
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t n = 0; n < N; ++n) bk[n] = tb ? B[n * bc + k] : B[k * bc + n];  // row k of op(B)
    for (int64_t m = 0; m < M; ++m) {
      float a = ta ? A[k * ac + m] : A[m * ac + k];
      float* crow = C + m * N;
      for (int64_t n = 0; n < N; ++n) crow[n] += a * bk[n];
    }
  }
}

template <typename T, typename Context>
void MatmulKernel(const Context& dev_ctx, const phi::DenseTensor& x, const phi::DenseTensor& y, bool transpose_x,
                  bool transpose_y, phi::DenseTensor* out) {
  MatmulShape s = matmul_shape(x.dims(), y.dims(), transpose_x, transpose_y);
  T* o = dev_ctx.template Alloc<T>(out);
  std::vector<float> xf = to_f32<T>(x), yf = to_f32<T>(y), of(s.nbatch() * s.M * s.N);
  for (int64_t b = 0; b < s.nbatch(); ++b) {
    int64_t xi = MatmulShape::operand_index(b, s.batch, s.xbatch);
    int64_t yi = MatmulShape::operand_index(b, s.batch, s.ybatch);
    gemm(xf.data() + xi * s.xr * s.xc, transpose_x, s.xc, yf.data() + yi * s.yr * s.yc, transpose_y, s.yc,
         of.data() + b * s.M * s.N, s.M, s.N, s.K, false);
  }
  store(of, o);
}

template <typename T, typename Context>
void MatmulGradKernel(const Context& dev_ctx, const phi::DenseTensor& x, const phi::DenseTensor& y,
                      const phi::DenseTensor& dout, bool transpose_x, bool transpose_y, phi::DenseTensor* dx,
                      phi::DenseTensor* dy) {
  MatmulShape s = matmul_shape(x.dims(), y.dims(), transpose_x, transpose_y);
  std::vector<float> xf = to_f32<T>(x), yf = to_f32<T>(y), gf = to_f32<T>(dout);
  // broadcast batch dims accumulate in fp32 across the batch, then one rounding
  std::vector<float> dxf(dx ? x.numel() : 0, 0.0f), dyf(dy ? y.numel() : 0, 0.0f);
  std::vector<float> tmp;
  for (int64_t b = 0; b < s.nbatch(); ++b) {
    int64_t xi = MatmulShape::operand_index(b, s.batch, s.xbatch);
    int64_t yi = MatmulShape::operand_index(b, s.batch, s.ybatch);
    const float* X = xf.data() + xi * s.xr * s.xc;
    const float* Y = yf.data() + yi * s.yr * s.yc;
    const float* G = gf.data() + b * s.M * s.N;  // [M, N]
    if (dx) {
      float* DX = dxf.data() + xi * s.xr * s.xc;  // stored [xr, xc]
      if (!transpose_x)  // dX[M, K] += G[M, N] * op(Y)^T
        gemm(G, false, s.N, Y, !transpose_y, s.yc, DX, s.M, s.K, s.N, true);
      else  // dX[K, M] += op(Y)[K, N] * G^T
        gemm(Y, transpose_y, s.yc, G, true, s.N, DX, s.K, s.M, s.N, true);
    }
    if (dy) {
      float* DY = dyf.data() + yi * s.yr * s.yc;
      if (!transpose_y)  // dY[K, N] += op(X)^T * G
        gemm(X, !transpose_x, s.xc, G, false, s.N, DY, s.K, s.N, s.M, true);
      else  // dY[N, K] += G^T * op(X)
        gemm(G, true, s.N, X, transpose_x, s.xc, DY, s.N, s.K, s.M, true);
    }
  }
  if (dx) store(dxf, dev_ctx.template Alloc<T>(dx));
  if (dy) store(dyf, dev_ctx.template Alloc<T>(dy));
}


// ---- multiply_grad: registered for fp32 too ------------------------------------------------------
// When only one operand of `x * y` needs a gradient, Paddle 3.3.1 saves the other without its buffer
// (it is not needed for that gradient), but the CPU MultiplyGradKernel the `npu` place falls back to
// reads both: "Tensor's dimension is out of bound ... memory's size is 0" in the loss mask's backward.
// This kernel reads an operand only for the gradient that needs it.
// Broadcasting: Paddle's elementwise rule (shapes right-aligned unless `axis` says where y starts).
struct Broadcast {
  std::vector<int64_t> out, xs, ys;  // out dims; x and y dims aligned to out (1 where broadcast)
  int64_t numel = 1;
  static std::vector<int64_t> align(const std::vector<int64_t>& d, size_t rank, int64_t start) {
    std::vector<int64_t> a(rank, 1);
    for (size_t i = 0; i < d.size(); ++i) a[start + i] = d[i];
    return a;
  }
  Broadcast(const phi::DDim& xd, const phi::DDim& yd, int axis) {
    auto xv = phi::vectorize(xd), yv = phi::vectorize(yd);
    size_t rank = std::max(xv.size(), yv.size());
    int64_t xstart = rank - xv.size(), ystart = rank - yv.size();
    if (axis >= 0 && xv.size() >= yv.size()) ystart = axis;
    if (axis >= 0 && yv.size() > xv.size()) xstart = axis;
    xs = align(xv, rank, xstart);
    ys = align(yv, rank, ystart);
    out.resize(rank);
    for (size_t i = 0; i < rank; ++i) out[i] = std::max(xs[i], ys[i]);
    for (auto d : out) numel *= d;
  }
  // flat index into an operand of aligned dims `d` for flat output index `o`
  int64_t index(int64_t o, const std::vector<int64_t>& d) const {
    int64_t idx = 0, stride = 1;
    for (int64_t i = static_cast<int64_t>(out.size()) - 1; i >= 0; --i) {
      int64_t coord = o % out[i];
      o /= out[i];
      idx += (d[i] == 1 ? 0 : coord) * stride;
      stride *= d[i];
    }
    return idx;
  }
};

template <typename T, typename Context>
void MultiplyGradKernel(const Context& dev_ctx, const phi::DenseTensor& x, const phi::DenseTensor& y,
                        const phi::DenseTensor& dout, int axis, phi::DenseTensor* dx, phi::DenseTensor* dy) {
  Broadcast b(x.dims(), y.dims(), axis);
  const T* g = dout.data<T>();
  if (dx) {  // dx = reduce_to_x(dout * y), accumulated in fp32 (double for fp64), rounded once
    using Acc = std::conditional_t<std::is_same<T, double>::value, double, float>;
    const T* yp = y.data<T>();
    std::vector<Acc> acc(x.numel(), Acc(0));
    for (int64_t o = 0; o < b.numel; ++o)
      acc[b.index(o, b.xs)] += static_cast<Acc>(widen(g[o])) * static_cast<Acc>(widen(yp[b.index(o, b.ys)]));
    T* out = dev_ctx.template Alloc<T>(dx);
    for (int64_t i = 0; i < x.numel(); ++i) out[i] = static_cast<T>(acc[i]);
  }
  if (dy) {
    using Acc = std::conditional_t<std::is_same<T, double>::value, double, float>;
    const T* xp = x.data<T>();
    std::vector<Acc> acc(y.numel(), Acc(0));
    for (int64_t o = 0; o < b.numel; ++o)
      acc[b.index(o, b.ys)] += static_cast<Acc>(widen(g[o])) * static_cast<Acc>(widen(xp[b.index(o, b.xs)]));
    T* out = dev_ctx.template Alloc<T>(dy);
    for (int64_t i = 0; i < y.numel(); ++i) out[i] = static_cast<T>(acc[i]);
  }
}


// ---- elementwise binary ops (bf16 / fp16): fp32 math on the widened operands, one rounding -------
template <typename T, typename F>
void binary(const phi::CustomContext& dev_ctx, const phi::DenseTensor& x, const phi::DenseTensor& y,
            phi::DenseTensor* out, F f) {
  Broadcast b(x.dims(), y.dims(), -1);
  const T* xp = x.data<T>();
  const T* yp = y.data<T>();
  T* o = dev_ctx.template Alloc<T>(out);
  for (int64_t i = 0; i < b.numel; ++i)
    o[i] = static_cast<T>(f(widen(xp[b.index(i, b.xs)]), widen(yp[b.index(i, b.ys)])));
}

// dx = reduce_to_x(gx(dout, x, y)), dy likewise, in fp32; x / y are read only when `reads_operands`
// (add / subtract save them without buffers)
template <typename T, typename GX, typename GY>
void binary_grad(const phi::CustomContext& dev_ctx, const phi::DenseTensor& x, const phi::DenseTensor& y,
                 const phi::DenseTensor& dout, int axis, phi::DenseTensor* dx, phi::DenseTensor* dy,
                 bool reads_operands, GX gx, GY gy) {
  Broadcast b(x.dims(), y.dims(), axis);
  const T* g = dout.data<T>();
  const T* xp = reads_operands ? x.data<T>() : nullptr;
  const T* yp = reads_operands ? y.data<T>() : nullptr;
  auto operands = [&](int64_t o, float* xv, float* yv) {
    *xv = xp ? widen(xp[b.index(o, b.xs)]) : 0.0f;
    *yv = yp ? widen(yp[b.index(o, b.ys)]) : 0.0f;
  };
  if (dx) {
    std::vector<float> acc(x.numel(), 0.0f);
    for (int64_t o = 0; o < b.numel; ++o) {
      float xv, yv;
      operands(o, &xv, &yv);
      acc[b.index(o, b.xs)] += gx(widen(g[o]), xv, yv);
    }
    store(acc, dev_ctx.template Alloc<T>(dx));
  }
  if (dy) {
    std::vector<float> acc(y.numel(), 0.0f);
    for (int64_t o = 0; o < b.numel; ++o) {
      float xv, yv;
      operands(o, &xv, &yv);
      acc[b.index(o, b.ys)] += gy(widen(g[o]), xv, yv);
    }
    store(acc, dev_ctx.template Alloc<T>(dy));
  }
}

template <typename T, typename Context>
void AddKernel(const Context& c, const phi::DenseTensor& x, const phi::DenseTensor& y, phi::DenseTensor* out) {
  binary<T>(c, x, y, out, [](float a, float b) { return a + b; });
}
template <typename T, typename Context>
void SubtractKernel(const Context& c, const phi::DenseTensor& x, const phi::DenseTensor& y, phi::DenseTensor* out) {
  binary<T>(c, x, y, out, [](float a, float b) { return a - b; });
}
template <typename T, typename Context>
void MultiplyKernel(const Context& c, const phi::DenseTensor& x, const phi::DenseTensor& y, phi::DenseTensor* out) {
  binary<T>(c, x, y, out, [](float a, float b) { return a * b; });
}
template <typename T, typename Context>
void DivideKernel(const Context& c, const phi::DenseTensor& x, const phi::DenseTensor& y, phi::DenseTensor* out) {
  binary<T>(c, x, y, out, [](float a, float b) { return a / b; });
}
template <typename T, typename Context>
void AddGradKernel(const Context& c, const phi::DenseTensor& x, const phi::DenseTensor& y,
                   const phi::DenseTensor& dout, int axis, phi::DenseTensor* dx, phi::DenseTensor* dy) {
  binary_grad<T>(c, x, y, dout, axis, dx, dy, false, [](float g, float, float) { return g; },
                 [](float g, float, float) { return g; });
}
template <typename T, typename Context>
void SubtractGradKernel(const Context& c, const phi::DenseTensor& x, const phi::DenseTensor& y,
                        const phi::DenseTensor& dout, int axis, phi::DenseTensor* dx, phi::DenseTensor* dy) {
  binary_grad<T>(c, x, y, dout, axis, dx, dy, false, [](float g, float, float) { return g; },
                 [](float g, float, float) { return -g; });
}
template <typename T, typename Context>
void DivideGradKernel(const Context& c, const phi::DenseTensor& x, const phi::DenseTensor& y,
                      const phi::DenseTensor& out, const phi::DenseTensor& dout, int axis, phi::DenseTensor* dx,
                      phi::DenseTensor* dy) {
  binary_grad<T>(c, x, y, dout, axis, dx, dy, true, [](float g, float, float b) { return g / b; },
                 [](float g, float a, float b) { return -g * a / (b * b); });
}


// ---- gelu (exact erf form and the tanh approximation), in fp32 ---------------------------------
inline float gelu_f(float x, bool approximate) {
  if (approximate) {
    const float k = std::sqrt(2.0f / static_cast<float>(M_PI));
    return 0.5f * x * (1.0f + std::tanh(k * (x + 0.044715f * x * x * x)));
  }
  return 0.5f * x * (1.0f + std::erf(x * static_cast<float>(M_SQRT1_2)));
}
inline float gelu_grad_f(float x, bool approximate) {
  if (approximate) {
    const float k = std::sqrt(2.0f / static_cast<float>(M_PI));
    float t = std::tanh(k * (x + 0.044715f * x * x * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * k * (1.0f + 3.0f * 0.044715f * x * x);
  }
  const float inv_sqrt_2pi = 0.3989422804014327f;
  return 0.5f * (1.0f + std::erf(x * static_cast<float>(M_SQRT1_2))) + x * inv_sqrt_2pi * std::exp(-0.5f * x * x);
}

template <typename T, typename Context>
void GeluKernel(const Context& dev_ctx, const phi::DenseTensor& x, bool approximate, phi::DenseTensor* out) {
  const T* xp = x.data<T>();
  T* o = dev_ctx.template Alloc<T>(out);
  for (int64_t i = 0; i < x.numel(); ++i) o[i] = static_cast<T>(gelu_f(widen(xp[i]), approximate));
}

template <typename T, typename Context>
void GeluGradKernel(const Context& dev_ctx, const phi::DenseTensor& x, const phi::DenseTensor& dout,
                    bool approximate, phi::DenseTensor* dx) {
  const T* xp = x.data<T>();
  const T* g = dout.data<T>();
  T* o = dev_ctx.template Alloc<T>(dx);
  for (int64_t i = 0; i < x.numel(); ++i) o[i] = static_cast<T>(widen(g[i]) * gelu_grad_f(widen(xp[i]), approximate));
}


// ---- loss scaler: check_finite_and_unscale, update_loss_scaling ---------------------------------
// Paddle's CPU build registers neither ("There are no kernels which are registered in the
// check_finite_and_unscale operator"), so fp16 GradScaler steps on `npu` need them for every dtype.
// Semantics of Paddle's own kernels (phi amp_kernel_impl.h): grads *= 1/scale, found_inf = any
// non-finite grad; a step with found_inf zeroes the grads, and the scale is multiplied by decr_ratio
// after decr_every_n such steps in a row (never below 1) or by incr_ratio after incr_every_n clean ones.
inline double scalar_of(const phi::DenseTensor& t) {
  if (t.dtype() == phi::DataType::FLOAT64) return *t.data<double>();
  return *t.data<float>();
}

template <typename T, typename Context>
void CheckFiniteAndUnscaleKernel(const Context& dev_ctx, const std::vector<const phi::DenseTensor*>& xs,
                                 const phi::DenseTensor& scale, std::vector<phi::DenseTensor*> outs,
                                 phi::DenseTensor* found_infinite) {
  using Acc = std::conditional_t<std::is_same<T, double>::value, double, float>;
  const Acc inverse = static_cast<Acc>(1.0 / scalar_of(scale));
  bool found = false;
  for (size_t i = 0; i < xs.size(); ++i) {
    const T* x = xs[i]->data<T>();
    T* o = dev_ctx.template Alloc<T>(outs[i]);
    for (int64_t j = 0; j < xs[i]->numel(); ++j) {
      Acc v = static_cast<Acc>(widen(x[j]));
      found = found || !std::isfinite(v);
      o[j] = static_cast<T>(v * inverse);
    }
  }
  *dev_ctx.template Alloc<bool>(found_infinite) = found;
}

template <typename T, typename Context>
void UpdateLossScalingKernel(const Context& dev_ctx, const std::vector<const phi::DenseTensor*>& xs,
                             const phi::DenseTensor& found_infinite, const phi::DenseTensor& prev_loss_scaling,
                             const phi::DenseTensor& in_good_steps, const phi::DenseTensor& in_bad_steps,
                             int incr_every_n_steps, int decr_every_n_nan_or_inf, float incr_ratio, float decr_ratio,
                             const phi::Scalar& stop_update, std::vector<phi::DenseTensor*> outs,
                             phi::DenseTensor* loss_scaling, phi::DenseTensor* out_good_steps,
                             phi::DenseTensor* out_bad_steps) {
  const bool found = *found_infinite.data<bool>();
  for (size_t i = 0; i < xs.size(); ++i) {
    const T* x = xs[i]->data<T>();
    T* o = dev_ctx.template Alloc<T>(outs[i]);
    if (found) std::fill(o, o + xs[i]->numel(), static_cast<T>(0.0f));
    else if (o != x) std::memcpy(o, x, xs[i]->numel() * sizeof(T));
  }
  if (stop_update.to<bool>()) return;
  using MT = std::conditional_t<std::is_same<T, double>::value, double, float>;
  const MT prev = *prev_loss_scaling.data<MT>();
  int good = *in_good_steps.data<int>(), bad = *in_bad_steps.data<int>();
  MT scale = prev;
  if (found) {
    good = 0;
    if (++bad == decr_every_n_nan_or_inf) {
      scale = std::max<MT>(prev * static_cast<MT>(decr_ratio), MT(1));
      bad = 0;
    }
  } else {
    bad = 0;
    if (++good == incr_every_n_steps) {
      MT grown = prev * static_cast<MT>(incr_ratio);
      scale = std::isfinite(grown) ? grown : prev;
      good = 0;
    }
  }
  *dev_ctx.template Alloc<MT>(loss_scaling) = scale;
  *dev_ctx.template Alloc<int>(out_good_steps) = good;
  *dev_ctx.template Alloc<int>(out_bad_steps) = bad;
}

// ---- adamw: fp32 parameters; bf16 / fp16 parameters with fp32 master weights (multi_precision) ----
// fp32 (sharding stage 2, docs/NPU_KERNELS.md "Sharding stage 2"): Paddle's CPU fallback wrote the updated
// parameter into a new allocation, detaching a stage-2 slice parameter from the fused parameter buffer;
// this kernel writes in place. Its arithmetic is, operation for operation, that of the AdamW the CPU run
// uses, `pangu_adamw_` (paddle_pangu/kernels/cpu_kernels.cc AdamWInplace: PanGuAdamW on dense fp32 CPU
// parameters), itself Paddle's CPU adamw order (phi/kernels/cpu/adamw_kernel.cc + jit refer AdamW): decay
// `p - old_lr * lr_ratio * coeff * p` (lr_ratio scales the decay only, as on Paddle's CPU), the moments,
// then `p + (-old_lr * (sqrt(1 - b2p) / (1 - b1p))) * (m1 / (sqrt(m2) + eps * sqrt(1 - b2p)))`. Both files
// are compiled with -ffp-contract=off and no -march (no FMA), so an fp32 update is bit-identical to the
// CPU run's (tests/unit/test_npu_inplace.py checks np.array_equal). Half precision: the same math on the fp32
// master copy, the parameter being the master rounded once.
template <typename T, typename Context>
void AdamwKernel(const Context& dev_ctx, const phi::DenseTensor& param, const phi::DenseTensor& grad,
                 const phi::DenseTensor& learning_rate, const phi::DenseTensor& moment1,
                 const phi::DenseTensor& moment2, const paddle::optional<phi::DenseTensor>& moment2_max,
                 const phi::DenseTensor& beta1_pow, const phi::DenseTensor& beta2_pow,
                 const paddle::optional<phi::DenseTensor>& master_param,
                 const paddle::optional<phi::DenseTensor>& skip_update, const phi::Scalar& beta1,
                 const phi::Scalar& beta2, const phi::Scalar& epsilon, float lr_ratio, float coeff, bool with_decay,
                 bool lazy_mode, int64_t min_row_size_to_use_multithread, bool multi_precision,
                 bool use_global_beta_pow, bool amsgrad, phi::DenseTensor* param_out,
                 phi::DenseTensor* moment1_out, phi::DenseTensor* moment2_out, phi::DenseTensor* moment2_max_out,
                 phi::DenseTensor* beta1_pow_out, phi::DenseTensor* beta2_pow_out,
                 phi::DenseTensor* master_param_out) {
  const int64_t n = param.numel();
  const bool skip = skip_update && *skip_update->data<bool>();
  const bool mp = multi_precision && master_param;
  const float* master = mp ? master_param->data<float>() : nullptr;
  const T* p = param.data<T>();
  const T* g = grad.data<T>();
  const float* m1 = moment1.data<float>();
  const float* m2 = moment2.data<float>();
  const float* m2max = amsgrad && moment2_max ? moment2_max->data<float>() : nullptr;
  const float b1 = beta1.to<float>(), b2 = beta2.to<float>(), eps = epsilon.to<float>();
  const float b1p = *beta1_pow.data<float>(), b2p = *beta2_pow.data<float>();
  // read everything before allocating: outputs may share their inputs' buffers (the op is in place)
  std::vector<float> w(n), m1o(n), m2o(n), m2mo(m2max ? n : 0);
  for (int64_t i = 0; i < n; ++i) w[i] = mp ? master[i] : widen(p[i]);
  if (skip) {
    for (int64_t i = 0; i < n; ++i) { m1o[i] = m1[i]; m2o[i] = m2[i]; if (m2max) m2mo[i] = m2max[i]; }
  } else {
    const float old_lr = learning_rate.dtype() == phi::DataType::FLOAT64
                             ? static_cast<float>(*learning_rate.data<double>()) : *learning_rate.data<float>();
    const float neg_step = -(old_lr * (std::sqrt(1 - b2p) / (1 - b1p)));
    const float eps_t = eps * std::sqrt(1 - b2p);
    const float one_b1 = 1 - b1, one_b2 = 1 - b2;
    for (int64_t i = 0; i < n; ++i) {
      const float gi = widen(g[i]);
      const float pt = with_decay ? w[i] - old_lr * lr_ratio * coeff * w[i] : w[i];
      m1o[i] = b1 * m1[i] + one_b1 * gi;
      m2o[i] = b2 * m2[i] + one_b2 * gi * gi;
      float denom_m2 = m2o[i];
      if (m2max) denom_m2 = m2mo[i] = std::max(m2o[i], m2max[i]);
      w[i] = pt + neg_step * (m1o[i] / (std::sqrt(denom_m2) + eps_t));
    }
  }
  T* po = dev_ctx.template Alloc<T>(param_out);
  for (int64_t i = 0; i < n; ++i) po[i] = static_cast<T>(w[i]);  // the one rounding
  if (mp) std::memcpy(dev_ctx.template Alloc<float>(master_param_out), w.data(), n * sizeof(float));
  std::memcpy(dev_ctx.template Alloc<float>(moment1_out), m1o.data(), n * sizeof(float));
  std::memcpy(dev_ctx.template Alloc<float>(moment2_out), m2o.data(), n * sizeof(float));
  if (m2max && moment2_max_out) std::memcpy(dev_ctx.template Alloc<float>(moment2_max_out), m2mo.data(), n * sizeof(float));
  const bool advance = !skip && !use_global_beta_pow;
  *dev_ctx.template Alloc<float>(beta1_pow_out) = advance ? b1p * b1 : b1p;
  *dev_ctx.template Alloc<float>(beta2_pow_out) = advance ? b2p * b2 : b2p;
}

// ---- squared_l2_norm: the global-norm gradient clip (ClipGradByGlobalNorm) of O2 bf16 / fp16 grads ----
// x [...] -> out [1] = sum(x^2), summed in fp32 in index order, rounded once to T (Paddle's clip then
// casts the half-precision partial norms to fp32 before adding them up). Needed by `pangu finetune
// --bf16 true --fp16_opt_level O2 --device npu` (the Trainer's default max_grad_norm=1.0).
template <typename T, typename Context>
void SquaredL2NormKernel(const Context& dev_ctx, const phi::DenseTensor& x, phi::DenseTensor* out) {
  const T* xp = x.data<T>();
  float sum = 0.0f;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const float v = widen(xp[i]);
    sum += v * v;
  }
  out->Resize(phi::make_ddim({1}));
  *dev_ctx.template Alloc<T>(out) = static_cast<T>(sum);
}

// ---- npu_identity: Paddle's save of a tensor on an `npu` place (paddle.save / the Trainer's checkpoint) ----
// paddle/framework/io.py calls `_C_ops.npu_identity(value, -1)` on every dense npu tensor before copying it to
// the host: on Ascend it converts an NZ-format tensor back to ND. The CPU build registers it for every dtype
// but bf16, so an O2 bf16 checkpoint on npu failed to save. No NZ storage here (docs/NPU_KERNELS.md): a copy.
template <typename T, typename Context>
void NpuIdentityKernel(const Context& dev_ctx, const phi::DenseTensor& x, int format, phi::DenseTensor* out) {
  out->Resize(x.dims());
  std::memcpy(dev_ctx.template Alloc<T>(out), x.data<T>(), sizeof(T) * x.numel());
}

}  // namespace pangu_npu

PD_REGISTER_PLUGIN_KERNEL(squared_l2_norm, npu, ALL_LAYOUT, pangu_npu::SquaredL2NormKernel, phi::dtype::bfloat16,
                          phi::dtype::float16) {}
PD_REGISTER_PLUGIN_KERNEL(npu_identity, npu, ALL_LAYOUT, pangu_npu::NpuIdentityKernel, phi::dtype::bfloat16) {}
PD_REGISTER_PLUGIN_KERNEL(matmul, npu, ALL_LAYOUT, pangu_npu::MatmulKernel, phi::dtype::bfloat16,
                          phi::dtype::float16) {}
PD_REGISTER_PLUGIN_KERNEL(matmul_grad, npu, ALL_LAYOUT, pangu_npu::MatmulGradKernel, phi::dtype::bfloat16,
                          phi::dtype::float16) {}
PD_REGISTER_PLUGIN_KERNEL(multiply_grad, npu, ALL_LAYOUT, pangu_npu::MultiplyGradKernel, float, double,
                          phi::dtype::bfloat16, phi::dtype::float16) {}
PD_REGISTER_PLUGIN_KERNEL(add, npu, ALL_LAYOUT, pangu_npu::AddKernel, phi::dtype::bfloat16, phi::dtype::float16) {}
PD_REGISTER_PLUGIN_KERNEL(subtract, npu, ALL_LAYOUT, pangu_npu::SubtractKernel, phi::dtype::bfloat16, phi::dtype::float16) {}
// fp32: the gradient clip's in-place `g.multiply_(clip)` on stage-2 gradient views
// (docs/NPU_KERNELS.md "Sharding stage 2"); a * b is one rounding, so it equals Paddle's CPU multiply bit for bit
PD_REGISTER_PLUGIN_KERNEL(multiply, npu, ALL_LAYOUT, pangu_npu::MultiplyKernel, float, phi::dtype::bfloat16,
                          phi::dtype::float16) {}
PD_REGISTER_PLUGIN_KERNEL(divide, npu, ALL_LAYOUT, pangu_npu::DivideKernel, phi::dtype::bfloat16, phi::dtype::float16) {}
PD_REGISTER_PLUGIN_KERNEL(add_grad, npu, ALL_LAYOUT, pangu_npu::AddGradKernel, phi::dtype::bfloat16, phi::dtype::float16) {}
PD_REGISTER_PLUGIN_KERNEL(subtract_grad, npu, ALL_LAYOUT, pangu_npu::SubtractGradKernel, phi::dtype::bfloat16, phi::dtype::float16) {}
PD_REGISTER_PLUGIN_KERNEL(divide_grad, npu, ALL_LAYOUT, pangu_npu::DivideGradKernel, phi::dtype::bfloat16, phi::dtype::float16) {}
PD_REGISTER_PLUGIN_KERNEL(gelu, npu, ALL_LAYOUT, pangu_npu::GeluKernel, phi::dtype::bfloat16, phi::dtype::float16) {}
PD_REGISTER_PLUGIN_KERNEL(gelu_grad, npu, ALL_LAYOUT, pangu_npu::GeluGradKernel, phi::dtype::bfloat16, phi::dtype::float16) {}
PD_REGISTER_PLUGIN_KERNEL(check_finite_and_unscale, npu, ALL_LAYOUT, pangu_npu::CheckFiniteAndUnscaleKernel, float,
                          double, phi::dtype::bfloat16, phi::dtype::float16) {
  kernel->OutputAt(1).SetDataType(phi::DataType::BOOL);
}
PD_REGISTER_PLUGIN_KERNEL(update_loss_scaling, npu, ALL_LAYOUT, pangu_npu::UpdateLossScalingKernel, float, double,
                          phi::dtype::bfloat16, phi::dtype::float16) {
  if (kernel_key.dtype() == phi::DataType::FLOAT16 || kernel_key.dtype() == phi::DataType::BFLOAT16) {
    kernel->InputAt(2).SetDataType(phi::DataType::FLOAT32);
    kernel->OutputAt(1).SetDataType(phi::DataType::FLOAT32);
  }
  kernel->OutputAt(2).SetDataType(phi::DataType::INT32);
  kernel->OutputAt(3).SetDataType(phi::DataType::INT32);
}
PD_REGISTER_PLUGIN_KERNEL(adamw, npu, ALL_LAYOUT, pangu_npu::AdamwKernel, float, phi::dtype::bfloat16,
                          phi::dtype::float16) {
  for (int i = 1; i <= 6; ++i) kernel->OutputAt(i).SetDataType(phi::DataType::FLOAT32);  // moments, pows, master
}
