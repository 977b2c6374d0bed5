// `flash_attention_npu`: a test op with the name, inputs, outputs and attributes paddle-custom-npu
// registers (PaddleCustomDevice backends/npu/custom_op/fused_attention_npu.cc, PD_BUILD_OP
// (flash_attention_npu) and its grad), computing reference attention so that the model's NPU branch
// (paddle_pangu/model/layers.py npu_flash_attention) really runs with Ascend's conventions:
//   - q, k, v [B, S, N, D] ("BSND", the layout the Ascend op passes to aclnnFlashAttentionScore);
//   - scale 1 / sqrt(D) applied inside the op (the caller passes unscaled q);
//   - attn_mask is BOOL, true = masked out (Ascend's convention; an additive float mask is refused,
//     as the real op's PD_CHECK does), shapes [S, T] or [B or 1, 1 or N, S, T];
//   - causal = true ignores attn_mask and masks the upper triangle;
//   - outputs attention_score [B, S, N, D] in q's dtype, then softmax_max / softmax_sum [B, N, S, 8]
//     fp32 (the row max and the row sum of exp, replicated 8 times as Ascend stores them),
//     softmax_out (empty), seed, offset, numel (int64 [1]).
// Numerics: fp32 throughout, one rounding of the output. Dropout (training, dropout > 0): each
// probability is kept with probability 1 - dropout and scaled by 1 / (1 - dropout), the keep mask a
// hash of (seed, offset, element) so the grad op regenerates it from the seed / offset outputs, as
// the real op's grad does from its Ascend RNG state (the random stream itself differs from Ascend's).
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <tuple>
#include <utility>

#include "paddle/phi/api/all.h"  // the custom-op API of paddle/extension.h, without its pybind part
#include "paddle/phi/core/generator.h"

namespace {

struct Dims {
  int64_t B, S, T, N, D;
};

template <typename T>
std::vector<float> widen(const paddle::Tensor& t) {
  const T* p = t.data<T>();
  std::vector<float> out(t.numel());
  for (int64_t i = 0; i < t.numel(); ++i) out[i] = static_cast<float>(p[i]);
  return out;
}

std::vector<float> widen_any(const paddle::Tensor& t) {
  switch (t.dtype()) {
    case paddle::DataType::FLOAT32: return widen<float>(t);
    case paddle::DataType::BFLOAT16: return widen<phi::dtype::bfloat16>(t);
    case paddle::DataType::FLOAT16: return widen<phi::dtype::float16>(t);
    default: PD_THROW("flash_attention_npu: q / k / v must be float32, bfloat16 or float16");
  }
}

paddle::Tensor narrow(const std::vector<float>& v, const std::vector<int64_t>& shape, paddle::DataType dtype,
                      const paddle::Place& place) {
  paddle::Tensor out = paddle::empty(shape, dtype, place);
  switch (dtype) {
    case paddle::DataType::FLOAT32: {
      float* o = out.data<float>();
      for (size_t i = 0; i < v.size(); ++i) o[i] = v[i];
      break;
    }
    case paddle::DataType::BFLOAT16: {
      auto* o = out.data<phi::dtype::bfloat16>();
      for (size_t i = 0; i < v.size(); ++i) o[i] = static_cast<phi::dtype::bfloat16>(v[i]);
      break;
    }
    default: {
      auto* o = out.data<phi::dtype::float16>();
      for (size_t i = 0; i < v.size(); ++i) o[i] = static_cast<phi::dtype::float16>(v[i]);
    }
  }
  return out;
}

// masked(b, n, s, t): the user's bool mask broadcast over batch and heads, or the causal triangle
struct Mask {
  const bool* data = nullptr;
  int64_t mb = 1, mn = 1, S = 0, T = 0;
  bool causal = false;
  Mask(const paddle::optional<paddle::Tensor>& m, bool causal_, const Dims& d) : causal(causal_) {
    S = d.S;
    T = d.T;
    if (causal || !m) return;
    PD_CHECK(m->dtype() == paddle::DataType::BOOL, "The mask tensor dtype must be bool , but got ", m->dtype());
    auto shape = m->shape();
    PD_CHECK(shape.size() == 2 || shape.size() == 4, "flash_attention_npu: attn_mask must be [S, T] or [B, N, S, T]");
    PD_CHECK(shape[shape.size() - 2] == d.S && shape.back() == d.T, "flash_attention_npu: attn_mask is not [.., S, T]");
    if (shape.size() == 4) {
      mb = shape[0];
      mn = shape[1];
      PD_CHECK((mb == 1 || mb == d.B) && (mn == 1 || mn == d.N), "flash_attention_npu: attn_mask batch / heads");
    }
    data = m->data<bool>();
  }
  bool operator()(int64_t b, int64_t n, int64_t s, int64_t t) const {
    if (causal) return t > s;
    if (!data) return false;
    return data[(((mb == 1 ? 0 : b) * mn + (mn == 1 ? 0 : n)) * S + s) * T + t];
  }
};

Dims dims_of(const paddle::Tensor& q, const paddle::Tensor& k) {
  auto qs = q.shape(), ks = k.shape();
  PD_CHECK(qs.size() == 4 && ks.size() == 4, "flash_attn receive input with dim [batch_size, seq_len, num_heads, head_dim]");
  return {qs[0], qs[1], ks[1], qs[2], qs[3]};
}

inline int64_t at(const Dims& d, int64_t len, int64_t b, int64_t s, int64_t n) {  // [B, len, N, D] offset
  return ((b * len + s) * d.N + n) * d.D;
}

// probabilities of one (b, n) row s: p[t] = softmax_t(scale * q.k_t, masked -> 0); returns max and sum
void row_probs(const std::vector<float>& q, const std::vector<float>& k, const Dims& d, const Mask& mask, int64_t b,
               int64_t n, int64_t s, float scale, std::vector<float>* p, float* row_max, float* row_sum) {
  const float* qr = q.data() + at(d, d.S, b, s, n);
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t t = 0; t < d.T; ++t) {
    if (mask(b, n, s, t)) {
      (*p)[t] = -std::numeric_limits<float>::infinity();
      continue;
    }
    const float* kr = k.data() + at(d, d.T, b, t, n);
    float dot = 0.0f;
    for (int64_t i = 0; i < d.D; ++i) dot += qr[i] * kr[i];
    (*p)[t] = dot * scale;
    mx = std::max(mx, (*p)[t]);
  }
  float sum = 0.0f;
  for (int64_t t = 0; t < d.T; ++t) {
    float e = std::isinf((*p)[t]) ? 0.0f : std::exp((*p)[t] - mx);
    (*p)[t] = e;
    sum += e;
  }
  for (int64_t t = 0; t < d.T; ++t) (*p)[t] = sum > 0.0f ? (*p)[t] / sum : 0.0f;  // a fully masked row gives 0
  *row_max = mx;
  *row_sum = sum;
}

// dropout keep decision of element `i` of the [B, N, S, T] probabilities (splitmix64 of seed, offset, i)
inline bool keep(uint64_t seed, uint64_t offset, uint64_t i, float keep_prob) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + offset + i;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * (1.0f / 16777216.0f) < keep_prob;
}

// seed / offset of a call without fixed_seed_offset: drawn from Paddle's generator of the device (as the
// Ascend op takes them from the device context's generator), advancing its offset by the call's element
// count. paddle.seed seeds it and paddle.get_rng_state / set_rng_state (what the Trainer's rng_state.pth
// and a resume save and restore) replay it, so training with attention dropout resumes bit-exactly. (A
// process-wide counter from 0 did neither: the resumed process drew other keep masks.)
std::pair<uint64_t, uint64_t> next_seed_offset(const paddle::Place& place, uint64_t numel) {
  const auto& gen = phi::DefaultCustomDeviceGenerator(phi::CustomPlace(place.GetDeviceType(), place.GetDeviceId()));
  return gen->IncrementOffset(numel);
}

paddle::Tensor int64_scalar(int64_t v, const paddle::Place& place) {
  paddle::Tensor t = paddle::empty({1}, paddle::DataType::INT64, place);
  *t.data<int64_t>() = v;
  return t;
}

}  // namespace

std::vector<paddle::Tensor> SimNpuFlashAttention(const paddle::Tensor& query, const paddle::Tensor& key,
                                                 const paddle::Tensor& value,
                                                 const paddle::optional<paddle::Tensor>& fixed_seed_offset,
                                                 const paddle::optional<paddle::Tensor>& attn_mask, float dropout,
                                                 bool causal, bool return_softmax, bool is_test,
                                                 bool is_triangle_upper_mask) {
  Dims d = dims_of(query, key);
  const float keep_prob = is_test ? 1.0f : 1.0f - dropout;
  uint64_t seed = 0, offset = 0;
  if (fixed_seed_offset) {
    const int64_t* so = fixed_seed_offset->data<int64_t>();
    seed = so[0];
    offset = so[1];
  } else if (keep_prob < 1.0f) {  // only a call that drops consumes the generator
    std::tie(seed, offset) = next_seed_offset(query.place(), d.B * d.N * d.S * d.T);
  }
  Mask mask(attn_mask, causal, d);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d.D));
  std::vector<float> q = widen_any(query), k = widen_any(key), v = widen_any(value);
  std::vector<float> out(d.B * d.S * d.N * d.D, 0.0f), mx(d.B * d.N * d.S * 8), sm(d.B * d.N * d.S * 8);
  std::vector<float> p(d.T);
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t n = 0; n < d.N; ++n)
      for (int64_t s = 0; s < d.S; ++s) {
        float row_max, row_sum;
        row_probs(q, k, d, mask, b, n, s, scale, &p, &row_max, &row_sum);
        float* o = out.data() + at(d, d.S, b, s, n);
        const uint64_t row = ((b * d.N + n) * d.S + s) * d.T;
        for (int64_t t = 0; t < d.T; ++t) {
          if (keep_prob < 1.0f) p[t] = keep(seed, offset, row + t, keep_prob) ? p[t] / keep_prob : 0.0f;
          if (p[t] == 0.0f) continue;
          const float* vr = v.data() + at(d, d.T, b, t, n);
          for (int64_t i = 0; i < d.D; ++i) o[i] += p[t] * vr[i];
        }
        for (int j = 0; j < 8; ++j) {
          mx[((b * d.N + n) * d.S + s) * 8 + j] = row_max;
          sm[((b * d.N + n) * d.S + s) * 8 + j] = row_sum;
        }
      }
  auto place = query.place();
  return {narrow(out, query.shape(), query.dtype(), place),
          narrow(mx, {d.B, d.N, d.S, 8}, paddle::DataType::FLOAT32, place),
          narrow(sm, {d.B, d.N, d.S, 8}, paddle::DataType::FLOAT32, place),
          paddle::empty({0}, query.dtype(), place), int64_scalar(static_cast<int64_t>(seed), place),
          int64_scalar(static_cast<int64_t>(offset), place),
          int64_scalar(d.B * d.N * d.S * d.T, place)};
}

std::vector<paddle::Tensor> SimNpuFlashAttentionGrad(
    const paddle::Tensor& query, const paddle::Tensor& key, const paddle::Tensor& value,
    const paddle::Tensor& attention_score_grad, const paddle::optional<paddle::Tensor>& attn_mask,
    const paddle::Tensor& softmax_max, const paddle::Tensor& softmax_sum, const paddle::Tensor& softmax_out,
    const paddle::Tensor& attention_score, const paddle::Tensor& seed_t, const paddle::Tensor& offset_t,
    const paddle::Tensor& numel, float dropout, bool causal, bool is_triangle_upper_mask) {
  Dims d = dims_of(query, key);
  Mask mask(attn_mask, causal, d);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d.D));
  std::vector<float> q = widen_any(query), k = widen_any(key), v = widen_any(value);
  std::vector<float> go = widen_any(attention_score_grad);
  std::vector<float> dq(q.size(), 0.0f), dk(k.size(), 0.0f), dv(v.size(), 0.0f), p(d.T), dp(d.T), kept(d.T);
  const float keep_prob = 1.0f - dropout;  // the grad runs only in training
  const uint64_t seed = static_cast<uint64_t>(*seed_t.data<int64_t>());
  const uint64_t offset = static_cast<uint64_t>(*offset_t.data<int64_t>());
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t n = 0; n < d.N; ++n)
      for (int64_t s = 0; s < d.S; ++s) {
        float row_max, row_sum;
        row_probs(q, k, d, mask, b, n, s, scale, &p, &row_max, &row_sum);
        const float* g = go.data() + at(d, d.S, b, s, n);
        const uint64_t row = ((b * d.N + n) * d.S + s) * d.T;
        for (int64_t t = 0; t < d.T; ++t)  // the dropout factor of each probability: 0 or 1 / keep_prob
          kept[t] = keep_prob < 1.0f ? (keep(seed, offset, row + t, keep_prob) ? 1.0f / keep_prob : 0.0f) : 1.0f;
        float pdp = 0.0f;  // sum_t p_t dp_t
        for (int64_t t = 0; t < d.T; ++t) {
          const float* vr = v.data() + at(d, d.T, b, t, n);
          float* dvr = dv.data() + at(d, d.T, b, t, n);
          float dot = 0.0f;
          for (int64_t i = 0; i < d.D; ++i) {
            dot += g[i] * vr[i];        // dP = dO V^T
            dvr[i] += p[t] * kept[t] * g[i];  // dV = dropout(P)^T dO
          }
          dp[t] = dot * kept[t];  // through the dropout
          pdp += p[t] * dp[t];
        }
        const float* qr = q.data() + at(d, d.S, b, s, n);
        float* dqr = dq.data() + at(d, d.S, b, s, n);
        for (int64_t t = 0; t < d.T; ++t) {
          float ds = p[t] * (dp[t] - pdp) * scale;  // softmax backward, then the scale
          if (ds == 0.0f) continue;
          const float* kr = k.data() + at(d, d.T, b, t, n);
          float* dkr = dk.data() + at(d, d.T, b, t, n);
          for (int64_t i = 0; i < d.D; ++i) {
            dqr[i] += ds * kr[i];
            dkr[i] += ds * qr[i];
          }
        }
      }
  auto place = query.place();
  return {narrow(dq, query.shape(), query.dtype(), place), narrow(dk, key.shape(), key.dtype(), place),
          narrow(dv, value.shape(), value.dtype(), place)};
}

std::vector<std::vector<int64_t>> SimNpuFlashAttentionInferShape(std::vector<int64_t> q_shape,
                                                                 std::vector<int64_t> k_shape,
                                                                 std::vector<int64_t> v_shape) {
  std::vector<int64_t> stats = {q_shape[0], q_shape[2], q_shape[1], 8};
  return {q_shape, stats, stats, {0}, {1}, {1}, {1}};
}

std::vector<paddle::DataType> SimNpuFlashAttentionInferDtype(paddle::DataType q, paddle::DataType k,
                                                             paddle::DataType v) {
  return {q, paddle::DataType::FLOAT32, paddle::DataType::FLOAT32, q,
          paddle::DataType::INT64, paddle::DataType::INT64, paddle::DataType::INT64};
}

std::vector<std::vector<int64_t>> SimNpuFlashAttentionGradInferShape(std::vector<int64_t> q_shape,
                                                                     std::vector<int64_t> k_shape,
                                                                     std::vector<int64_t> v_shape) {
  return {q_shape, k_shape, v_shape};
}

PD_BUILD_OP(flash_attention_npu)
    .Inputs({"query", "key", "value", paddle::Optional("fixed_seed_offset"), paddle::Optional("attn_mask")})
    .Outputs({"attention_score", "softmax_max", "softmax_sum", "softmax_out", "seed", "offset", "numel"})
    .Attrs({"dropout: float", "causal:bool", "return_softmax:bool", "is_test:bool", "is_triangle_upper_mask:bool"})
    .SetKernelFn(PD_KERNEL(SimNpuFlashAttention))
    .SetInferShapeFn(PD_INFER_SHAPE(SimNpuFlashAttentionInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(SimNpuFlashAttentionInferDtype));

PD_BUILD_GRAD_OP(flash_attention_npu)
    .Inputs({"query", "key", "value", paddle::Grad("attention_score"), paddle::Optional("attn_mask"), "softmax_max",
             "softmax_sum", "softmax_out", "attention_score", "seed", "offset", "numel"})
    .Outputs({paddle::Grad("query"), paddle::Grad("key"), paddle::Grad("value")})
    .Attrs({"dropout: float", "causal:bool", "is_triangle_upper_mask:bool"})
    .SetKernelFn(PD_KERNEL(SimNpuFlashAttentionGrad))
    .SetInferShapeFn(PD_INFER_SHAPE(SimNpuFlashAttentionGradInferShape));
