// Kernels the tensor-parallel path needs on `npu` where Paddle's CPU fallback behaves unlike the device
// (NPU-A's file; the AMP kernels are in kernels.cc: each (op, dtype) may be registered in one file only).
//
// one_hot: Paddle's custom-device c_softmax_with_cross_entropy_grad (paddle 3.3.1, the vocab-parallel
// cross entropy of fleet's ParallelCrossEntropy on every custom device) one-hots `label - start_index`
// on each mp rank, so labels owned by another rank are out of [0, depth). The device kernels (CUDA,
// Ascend's OneHot) give an all-zero row there; Paddle's CPU OneHotKernel, which the `npu` place fell back
// to, refuses them ("Illegal index value ... less than 0"), so no mp2 backward ran on npu. Out-of-range
// indices give a zero row here too; in-range ones a single 1.0.
//
// embedding_grad: (bf16 / fp16: `pangu finetune --bf16 true --fp16_opt_level O2 --device npu`, the Trainer's O2
// casts the embedding tables to bf16 and the CPU build has no bf16 embedding_grad.) Paddle's CPU fallback left the dense weight gradient on the CPU place (found: after one
// backward on npu the word, position and top-query embedding gradients were Place(cpu)); the pipeline's
// shared-weight all-reduce and the sharding optimizer's gradient reduce then failed in xccl ("interface
// not found": no device for a CPU place). This kernel writes it on the device, accumulating the rows of
// out_grad in index order as Paddle's CPU kernel does (bit-identical); padding_idx rows get no gradient.
//
// split / split_with_num: Paddle's CPU fallback writes every output on the CPU place. fleet's
// sync_params_buffers (sharding's and dp's start-up broadcast of the parameters) broadcasts one coalesced
// buffer and splits it back into `param.detach()` views with the legacy `split` op, so every parameter's
// storage moved to the CPU (found: after fleet.distributed_model with sharding2 on npu, `embedding_0.w_0`
// and each other parameter were Place(cpu), and the sharding optimizer's gradient reduce then failed in
// xccl with "interface not found"). These kernels write the pieces on the device, a byte copy per piece.
#include <cstring>
#include <type_traits>
#include <vector>

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

template <typename T, typename Context>
void EmbeddingGradKernel(const Context& dev_ctx, const phi::DenseTensor& input, const phi::DenseTensor& weight,
                         const phi::DenseTensor& out_grad, int64_t padding_idx, phi::DenseTensor* weight_grad) {
  // input [N...] int ids, weight [V, H], out_grad [N..., H] -> weight_grad [V, H]
  // bf16 / fp16 (O2: the embedding tables in half precision) accumulate in fp32 and round once at the end
  // (kernels.cc's contract); fp32 / fp64 accumulate in their own type, in the same order as before
  using Acc = typename std::conditional<std::is_same<T, double>::value, double, float>::type;
  weight_grad->Resize(weight.dims());
  T* g = dev_ctx.template Alloc<T>(weight_grad);
  const int64_t vocab = weight.dims()[0], hidden = weight.dims()[1], n = input.numel();
  std::vector<Acc> acc(vocab * hidden, Acc(0));
  const T* og = out_grad.data<T>();
  for (int64_t i = 0; i < n; ++i) {
    int64_t id = input.dtype() == phi::DataType::INT32 ? input.data<int32_t>()[i] : input.data<int64_t>()[i];
    if (id == padding_idx) continue;
    PADDLE_ENFORCE_EQ(id >= 0 && id < vocab, true,
                      phi::errors::InvalidArgument("sim npu embedding_grad: id %ld outside [0, %ld)", id, vocab));
    for (int64_t h = 0; h < hidden; ++h) acc[id * hidden + h] += static_cast<Acc>(og[i * hidden + h]);
  }
  for (int64_t k = 0; k < vocab * hidden; ++k) g[k] = static_cast<T>(acc[k]);  // the one rounding
}

// x [d0, ..., d_axis, ..., dn] -> out[i] [d0, ..., sections[i], ..., dn]; one section may be -1 (the rest)
template <typename T, typename Context>
void SplitPieces(const Context& dev_ctx, const phi::DenseTensor& x, std::vector<int64_t> sections, int64_t axis,
                 std::vector<phi::DenseTensor*> out) {
  auto dims = x.dims();
  const int rank = dims.size();
  if (axis < 0) axis += rank;
  PADDLE_ENFORCE_EQ(axis >= 0 && axis < rank, true,
                    phi::errors::InvalidArgument("sim npu split: axis %ld outside a rank-%d tensor", axis, rank));
  int64_t known = 0, unknown = -1;
  for (size_t i = 0; i < sections.size(); ++i) {
    if (sections[i] < 0) unknown = static_cast<int64_t>(i);
    else known += sections[i];
  }
  if (unknown >= 0) sections[unknown] = dims[axis] - known;
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < axis; ++i) outer *= dims[i];
  for (int i = axis + 1; i < rank; ++i) inner *= dims[i];
  const T* src = x.data<T>();
  int64_t offset = 0;  // along the axis
  for (size_t i = 0; i < out.size(); ++i) {
    auto piece = dims;
    piece[axis] = sections[i];
    if (out[i] == nullptr) {
      offset += sections[i];
      continue;
    }
    out[i]->Resize(piece);
    T* dst = dev_ctx.template Alloc<T>(out[i]);
    const int64_t row = sections[i] * inner;
    for (int64_t o = 0; o < outer && row > 0; ++o) {
      std::memcpy(dst + o * row, src + (o * dims[axis] + offset) * inner, sizeof(T) * row);
    }
    offset += sections[i];
  }
}

template <typename T, typename Context>
void SplitKernel(const Context& dev_ctx, const phi::DenseTensor& x, const phi::IntArray& sections,
                 const phi::Scalar& axis, std::vector<phi::DenseTensor*> out) {
  SplitPieces<T>(dev_ctx, x, sections.GetData(), axis.to<int64_t>(), out);
}

template <typename T, typename Context>
void SplitWithNumKernel(const Context& dev_ctx, const phi::DenseTensor& x, int num, const phi::Scalar& axis,
                        std::vector<phi::DenseTensor*> out) {
  int64_t a = axis.to<int64_t>();
  int64_t dim = x.dims()[a < 0 ? a + x.dims().size() : a];
  PADDLE_ENFORCE_EQ(num > 0 && dim % num == 0, true,
                    phi::errors::InvalidArgument("sim npu split_with_num: %ld not divisible by %d", dim, num));
  SplitPieces<T>(dev_ctx, x, std::vector<int64_t>(num, dim / num), a, out);
}

}  // namespace pangu_npu_parallel

PD_REGISTER_PLUGIN_KERNEL(one_hot, npu, ALL_LAYOUT, pangu_npu_parallel::OneHotKernel, int, int64_t) {
  kernel->OutputAt(0).SetDataType(phi::DataType::FLOAT32);
}
PD_REGISTER_PLUGIN_KERNEL(embedding_grad, npu, ALL_LAYOUT, pangu_npu_parallel::EmbeddingGradKernel, float, double,
                          phi::dtype::bfloat16, phi::dtype::float16) {}
PD_REGISTER_PLUGIN_KERNEL(split, npu, ALL_LAYOUT, pangu_npu_parallel::SplitKernel, float, double, int, int64_t,
                          bool, uint8_t, int8_t, int16_t, phi::dtype::bfloat16, phi::dtype::float16) {}
PD_REGISTER_PLUGIN_KERNEL(split_with_num, npu, ALL_LAYOUT, pangu_npu_parallel::SplitWithNumKernel, float, double, int,
                          int64_t, bool, uint8_t, int8_t, int16_t, phi::dtype::bfloat16, phi::dtype::float16) {}
