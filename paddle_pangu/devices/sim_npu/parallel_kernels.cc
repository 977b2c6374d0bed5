// Kernels the tensor-parallel path needs on `npu` where Paddle's CPU fallback behaves unlike the device
// (NPU-A's file; the AMP kernels are in kernels.cc: each (op, dtype) may be registered in one file only).
//
// one_hot: Paddle's custom-device c_softmax_with_cross_entropy_grad (paddle 3.3.1, the vocab-parallel
// cross entropy of fleet's ParallelCrossEntropy on every custom device) one-hots `label - start_index`
// on each mp rank, so labels owned by another rank are out of [0, depth). The device kernels (CUDA,
// Ascend's OneHot) give an all-zero row there; Paddle's CPU OneHotKernel, which the `npu` place fell back
// to, refuses them ("Illegal index value ... less than 0"), so no mp2 backward ran on npu. Out-of-range
// indices give a zero row here too; in-range ones a single 1.0.
#include <cstring>

#include "paddle/phi/extension.h"

namespace pangu_npu_parallel {

template <typename T, typename Context>
void OneHotKernel(const Context& dev_ctx, const phi::DenseTensor& x, const phi::Scalar& num_classes,
                  phi::DenseTensor* out) {
  int64_t depth = num_classes.to<int64_t>();
  auto dims = x.dims();
  std::vector<int64_t> shape(dims.size() + 1);
  for (int i = 0; i < dims.size(); ++i) shape[i] = dims[i];
  shape[dims.size()] = depth;
  out->Resize(phi::make_ddim(shape));  // x [...] -> out [..., depth], float32
  float* o = dev_ctx.template Alloc<float>(out);
  const T* in = x.data<T>();
  int64_t n = x.numel();
  std::memset(o, 0, sizeof(float) * n * depth);
  for (int64_t i = 0; i < n; ++i) {
    if (in[i] >= 0 && static_cast<int64_t>(in[i]) < depth) o[i * depth + static_cast<int64_t>(in[i])] = 1.0f;
  }
}

}  // namespace pangu_npu_parallel

PD_REGISTER_PLUGIN_KERNEL(one_hot, npu, ALL_LAYOUT, pangu_npu_parallel::OneHotKernel, int, int64_t) {
  kernel->OutputAt(0).SetDataType(phi::DataType::FLOAT32);
}
