// In-place kernels for views of fused buffers (sharding stage 2 on `npu`; docs/NPU_KERNELS.md "Sharding stage 2").
//
// Paddle's stage-2 sharding optimizer (fleet/utils/tensor_fusion_helper.py, paddle 3.3.1) makes every
// parameter, its gradient and the rank's slice views of two fused buffers and then writes them in place.
// Paddle 3.3.1 runs an op with no `npu` kernel through its CPU kernel and copies the result back to the
// device into a NEW allocation (the output's holder is replaced), so an in-place op on a view leaves the
// buffer untouched and the view detached from it. Each kernel here writes into the output's existing
// storage (`dev_ctx.Alloc` keeps a holder that is large enough, at the view's offset), computing exactly
// what Paddle's CPU kernel computes:
//   assign  `paddle.assign(param, buffer_slice)` (_share_param_buffer): without it the fused parameter
//           buffer stayed zero (every weight 0, loss ln 40000 at every step);
//   full    `clear_gradient(set_to_zero=True)` between steps (fills the gradient view with 0) and `zero_`
//           / `fill_`: without it the gradients left the fused gradient buffer after step 1 (grad norm 0);
//   fill    `zero_` / `fill_` on a view (stage 2's `p.grad.zero_()` when fleet fuses tensors);
//   scale   `grad_storage.scale_(1 / nranks)` before the reduce: without it the gradients were nranks x
//           the CPU run's (grad norm 4.2675 = 2 x 2.1337).
// (fp32 `multiply` for the clip's `g.multiply_(clip)` and fp32 `adamw` are in kernels.cc, which registers
// those kernel names for the half-precision types.) The list and how each was found: docs/NPU_KERNELS.md.
#include <cstring>

#include "paddle/phi/extension.h"

namespace pangu_npu_inplace {

// x -> out, a byte copy into out's storage (Paddle's AssignKernel copies; out may be a view)
template <typename T, typename Context>
void AssignKernel(const Context& dev_ctx, const phi::DenseTensor& x, phi::DenseTensor* out) {
  if (!x.initialized()) return;  // Paddle's AssignKernel leaves out alone for an uninitialised x
  PADDLE_ENFORCE_EQ(x.meta().is_contiguous(), true,
                    phi::errors::InvalidArgument("sim npu assign: a non-contiguous input"));
  out->Resize(x.dims());
  T* dst = dev_ctx.template Alloc<T>(out);
  const T* src = x.data<T>();
  if (dst != src) std::memmove(dst, src, sizeof(T) * x.numel());
}

// out [shape] = val, in out's storage (Paddle's FullKernel: val converted to T once)
template <typename T, typename Context>
void FullKernel(const Context& dev_ctx, const phi::IntArray& shape, const phi::Scalar& val, phi::DataType dtype,
                phi::DenseTensor* out) {
  out->Resize(phi::make_ddim(shape.GetData()));
  T* dst = dev_ctx.template Alloc<T>(out);
  const T v = val.to<T>();
  for (int64_t i = 0; i < out->numel(); ++i) dst[i] = v;
}

// out = value, shaped like x, in out's storage (`zero_` / `fill_`: out is x)
template <typename T, typename Context>
void FillKernel(const Context& dev_ctx, const phi::DenseTensor& x, const phi::Scalar& value, phi::DenseTensor* out) {
  out->Resize(x.dims());
  T* dst = dev_ctx.template Alloc<T>(out);
  const T v = value.to<T>();
  for (int64_t i = 0; i < out->numel(); ++i) dst[i] = v;
}

// out = x * scale + bias (bias_after_scale) or (x + bias) * scale, in T, as Paddle's CPU EigenScale with
// scale and bias converted to T first; the plugin is compiled with -ffp-contract=off, so x * scale + bias is
// two roundings there as here (with bias 0, the only use in stage 2, one: x * scale).
template <typename T, typename Context>
void ScaleKernel(const Context& dev_ctx, const phi::DenseTensor& x, const phi::Scalar& scale,
                 const phi::Scalar& bias, bool bias_after_scale, phi::DenseTensor* out) {
  out->Resize(x.dims());
  T* dst = dev_ctx.template Alloc<T>(out);
  if (x.numel() <= 0 || !x.initialized()) return;
  const T s = scale.to<T>(), b = bias.to<T>();
  const T* src = x.data<T>();  // may be dst itself (scale_): element i is read before it is written
  if (bias_after_scale) {
    for (int64_t i = 0; i < x.numel(); ++i) dst[i] = src[i] * s + b;
  } else {
    for (int64_t i = 0; i < x.numel(); ++i) dst[i] = (src[i] + b) * s;
  }
}

}  // namespace pangu_npu_inplace

PD_REGISTER_PLUGIN_KERNEL(assign, npu, ALL_LAYOUT, pangu_npu_inplace::AssignKernel, float, double, int, int64_t,
                          bool, uint8_t, int8_t, int16_t, phi::dtype::bfloat16, phi::dtype::float16) {}
PD_REGISTER_PLUGIN_KERNEL(full, npu, ALL_LAYOUT, pangu_npu_inplace::FullKernel, float, double, int, int64_t, bool,
                          uint8_t, int8_t, int16_t, phi::dtype::bfloat16, phi::dtype::float16) {}
PD_REGISTER_PLUGIN_KERNEL(fill, npu, ALL_LAYOUT, pangu_npu_inplace::FillKernel, float, double, int, int64_t, bool,
                          uint8_t, int8_t, int16_t, phi::dtype::bfloat16, phi::dtype::float16) {}
// fp32 / fp64 only: the half-precision scale stays Paddle's CPU kernel (its rounding, as before)
PD_REGISTER_PLUGIN_KERNEL(scale, npu, ALL_LAYOUT, pangu_npu_inplace::ScaleKernel, float, double) {}
