// cudnn_attention.h: the attention backend preference, the record of which kernels ran, and (with
// FRUGAL_HAVE_CUDNN) causal bf16 flash attention on cuDNN's fused engine through its backend graph
// API. The graphs are the patterns cuDNN's flash-attention engine recognises (the ones cuDNN's own
// front end builds for SDPA), in cuDNN's [batch, heads, rows, cols] dims over frugal's memory:
//   q [b, h, s, dqk] strides (s h dqk, dqk, h dqk, 1)   (frugal's [batch, seq, heads, dim])
//   k as k^T [b, h, dqk, s] strides (s h dqk, dqk, 1, h dqk); v, out, dout like q with dv
//   lse (cuDNN's "Stats") [b, h, s, 1] strides (h s, s, 1, 1)
// Forward:  S = (q k^T) * scale; causal: S_ij kept where i >= j (GEN_INDEX rows and columns,
//   CMP_GE, BINARY_SELECT against the lowest float); m = max_j S; E = exp(S - m); l = sum_j E;
//   lse = m + log l; P = E / l (bf16); out = P v.
// Backward: D = sum_c dout * out (times a by-value 1, into an fp32 [b, h, s, 1] buffer); S as above
//   minus lse, masked; P = exp(S); dv = P^T dout; dS = (dout v^T - D) * P * scale; dk = dS^T q;
//   dq = dS k, accumulated in an fp32 [b, h, s, dqk] buffer and converted by an IDENTITY op.
// Scalars (scale, the mask value, 1) are passed by value; everything else is a device pointer.
#ifdef FRUGAL_HAVE_CUDA

#include "kernels/attention/cudnn_attention.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <compare>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <initializer_list>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/cuda_check.h"
#include "core/error.h"

#ifdef FRUGAL_HAVE_CUDNN
#include <cudnn.h>
#endif

namespace frugal::cuda {
namespace {

constexpr int kPreferenceUnset = -1;
std::atomic<int> g_preference{kPreferenceUnset};
thread_local const char* t_forward_kernels = "none";
thread_local const char* t_backward_kernels = "none";

AttentionBackend preference_from_environment() {
  const char* text = std::getenv("FRUGAL_ATTENTION");
  if (text == nullptr || *text == '\0') return AttentionBackend::automatic;
  const std::string value = text;
  if (value == "auto") return AttentionBackend::automatic;
  if (value == "own") return AttentionBackend::own;
  if (value == "cudnn") return AttentionBackend::cudnn;
  fail("FRUGAL_ATTENTION={}: expected auto, own or cudnn", value);
}

}  // namespace

void set_attention_backend(AttentionBackend backend) {
  g_preference.store(static_cast<int>(backend));
}

AttentionBackend attention_backend() {
  int value = g_preference.load();
  if (value == kPreferenceUnset) {
    int expected = kPreferenceUnset;
    g_preference.compare_exchange_strong(expected,
                                         static_cast<int>(preference_from_environment()));
    value = g_preference.load();
  }
  return static_cast<AttentionBackend>(value);
}

const char* attention_backend_name(AttentionBackend backend) {
  switch (backend) {
    case AttentionBackend::automatic: return "auto";
    case AttentionBackend::own: return "own";
    case AttentionBackend::cudnn: return "cudnn";
  }
  return "?";
}

const char* flash_attention_backend(bool backward) {
  return backward ? t_backward_kernels : t_forward_kernels;
}

namespace flash {
void record_backend(bool backward, const char* name) {
  (backward ? t_backward_kernels : t_forward_kernels) = name;
}
}  // namespace flash

#ifdef FRUGAL_HAVE_CUDNN

namespace {

using Dims = std::array<int64_t, 4>;
using bf16 = __nv_bfloat16;

// A failed cuDNN step: which descriptor or call, cuDNN's status and its own last message.
struct CudnnFailure {
  std::string message;
};

std::string describe(cudnnStatus_t status) {
  std::string text = std::string(cudnnGetErrorString(status)) + " (" +
                     std::to_string(static_cast<int>(status)) + ")";
  char detail[1024] = {};
  cudnnGetLastErrorString(detail, sizeof(detail));
  if (detail[0] != '\0') text += ": " + std::string(detail);
  return text;
}

void check(cudnnStatus_t status, const std::string& step) {
  if (status != CUDNN_STATUS_SUCCESS) throw CudnnFailure{step + " failed: " + describe(status)};
}

// One backend descriptor (destroyed with the object), labelled for error messages.
class Descriptor {
 public:
  Descriptor(cudnnBackendDescriptorType_t type, std::string label) : label_(std::move(label)) {
    check(cudnnBackendCreateDescriptor(type, &descriptor_), "create " + label_);
  }
  ~Descriptor() {
    if (descriptor_ != nullptr) cudnnBackendDestroyDescriptor(descriptor_);
  }
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;
  Descriptor(Descriptor&& other) noexcept
      : descriptor_(std::exchange(other.descriptor_, nullptr)), label_(std::move(other.label_)) {}
  Descriptor& operator=(Descriptor&&) = delete;

  cudnnBackendDescriptor_t get() const { return descriptor_; }
  const std::string& label() const { return label_; }
  void set(cudnnBackendAttributeName_t name, const char* name_text,
           cudnnBackendAttributeType_t type, int64_t count, const void* values) {
    check(cudnnBackendSetAttribute(descriptor_, name, type, count, values),
          label_ + ": set " + name_text);
  }
  void finalize() { check(cudnnBackendFinalize(descriptor_), label_ + ": finalize"); }

 private:
  cudnnBackendDescriptor_t descriptor_ = nullptr;
  std::string label_;
};

#define FRUGAL_CUDNN_SET(descriptor, name, type, count, values) \
  (descriptor).set(name, #name, type, count, values)

// Unique ids of the tensors the caller binds in the variant pack; virtual tensors count up from
// kFirstVirtualUid.
enum Uid : int64_t {
  kUidQ = 1,
  kUidK,
  kUidV,
  kUidOut,
  kUidLse,
  kUidDout,
  kUidDq,
  kUidDk,
  kUidDv,
  kUidRowSums,   // backward: sum_c dout * out, fp32 [b, h, s, 1] (scratch)
  kUidDqAccum,   // backward: fp32 dq accumulator [b, h, s, dqk] (scratch)
  kUidScale,     // by value
  kUidMaskValue, // by value: the lowest float, for masked scores
  kUidOne,       // by value: 1
  kFirstVirtualUid = 100,
};

struct Tensor {
  cudnnBackendDescriptor_t descriptor;
  int64_t uid;
};

// A finalized execution plan and every descriptor it was built from (kept alive with it).
struct Plan {
  std::deque<Descriptor> descriptors;
  cudnnBackendDescriptor_t plan = nullptr;
  int64_t workspace_bytes = 0;
};

// Builds one operation graph, op by op, then its execution plan.
class GraphBuilder {
 public:
  explicit GraphBuilder(std::string label) : label_(std::move(label)) {}

  Tensor tensor(int64_t uid, const std::string& name, cudnnDataType_t type, const Dims& dims,
                const Dims& strides) {
    return make_tensor(uid, name, type, dims, strides, false, false);
  }
  Tensor virtual_tensor(const std::string& name, cudnnDataType_t type, const Dims& dims,
                        const Dims& strides) {
    return make_tensor(next_virtual_uid_++, name, type, dims, strides, true, false);
  }
  // An fp32 scalar read from host memory when the plan runs.
  Tensor scalar(int64_t uid, const std::string& name) {
    return make_tensor(uid, name, CUDNN_DATA_FLOAT, {1, 1, 1, 1}, {1, 1, 1, 1}, false, true);
  }

  // y = mode(x[, b[, t]]). GEN_INDEX takes `axis`.
  void pointwise(const std::string& name, cudnnPointwiseMode_t mode, cudnnDataType_t math,
                 const Tensor& x, const Tensor* b, const Tensor* t, const Tensor& y,
                 int64_t axis = -1) {
    Descriptor& pointwise = keep(CUDNN_BACKEND_POINTWISE_DESCRIPTOR, name + " (pointwise mode)");
    FRUGAL_CUDNN_SET(pointwise, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
    FRUGAL_CUDNN_SET(pointwise, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &math);
    if (axis >= 0)
      FRUGAL_CUDNN_SET(pointwise, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis);
    pointwise.finalize();
    Descriptor& op = keep(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, name + " (pointwise op)");
    const cudnnBackendDescriptor_t pointwise_descriptor = pointwise.get();
    FRUGAL_CUDNN_SET(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR,
                     CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &pointwise_descriptor);
    FRUGAL_CUDNN_SET(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                     &x.descriptor);
    if (b != nullptr)
      FRUGAL_CUDNN_SET(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                       &b->descriptor);
    FRUGAL_CUDNN_SET(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                     &y.descriptor);
    if (t != nullptr)
      FRUGAL_CUDNN_SET(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                       &t->descriptor);
    op.finalize();
    operations_.push_back(op.get());
  }

  // c = a b over the last two dims (fp32 accumulation), batched over the first two.
  void matmul(const std::string& name, const Tensor& a, const Tensor& b, const Tensor& c) {
    Descriptor& matmul = keep(CUDNN_BACKEND_MATMUL_DESCRIPTOR, name + " (matmul)");
    const cudnnDataType_t compute = CUDNN_DATA_FLOAT;
    FRUGAL_CUDNN_SET(matmul, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute);
    matmul.finalize();
    Descriptor& op = keep(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, name + " (matmul op)");
    const cudnnBackendDescriptor_t matmul_descriptor = matmul.get();
    FRUGAL_CUDNN_SET(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                     &a.descriptor);
    FRUGAL_CUDNN_SET(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                     &b.descriptor);
    FRUGAL_CUDNN_SET(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                     &c.descriptor);
    FRUGAL_CUDNN_SET(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                     &matmul_descriptor);
    op.finalize();
    operations_.push_back(op.get());
  }

  // y = reduce(x) over the dims where y has extent 1 (fp32).
  void reduction(const std::string& name, cudnnReduceTensorOp_t mode, const Tensor& x,
                 const Tensor& y) {
    Descriptor& reduction = keep(CUDNN_BACKEND_REDUCTION_DESCRIPTOR, name + " (reduction)");
    const cudnnDataType_t compute = CUDNN_DATA_FLOAT;
    FRUGAL_CUDNN_SET(reduction, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE,
                     1, &mode);
    FRUGAL_CUDNN_SET(reduction, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1,
                     &compute);
    reduction.finalize();
    Descriptor& op = keep(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, name + " (reduction op)");
    const cudnnBackendDescriptor_t reduction_descriptor = reduction.get();
    FRUGAL_CUDNN_SET(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                     &x.descriptor);
    FRUGAL_CUDNN_SET(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                     &y.descriptor);
    FRUGAL_CUDNN_SET(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                     &reduction_descriptor);
    op.finalize();
    operations_.push_back(op.get());
  }

  // y: the same elements as x under other dims and strides (here: a transposed view).
  void reshape(const std::string& name, const Tensor& x, const Tensor& y) {
    Descriptor& op = keep(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, name + " (reshape op)");
    FRUGAL_CUDNN_SET(op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                     &x.descriptor);
    FRUGAL_CUDNN_SET(op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                     &y.descriptor);
    op.finalize();
    operations_.push_back(op.get());
  }

  // Finalizes the operation graph, then the first engine configuration that finalizes as an
  // execution plan, from heuristics mode A, then the fallback list. Throws CudnnFailure naming
  // what cuDNN refused.
  std::unique_ptr<Plan> build(cudnnHandle_t handle);

 private:
  static constexpr int64_t kMaxConfigsTried = 8;

  Descriptor& keep(cudnnBackendDescriptorType_t type, const std::string& name) {
    descriptors_.emplace_back(type, label_ + ": " + name);
    return descriptors_.back();
  }

  Tensor make_tensor(int64_t uid, const std::string& name, cudnnDataType_t type, const Dims& dims,
                     const Dims& strides, bool is_virtual, bool by_value) {
    Descriptor& tensor = keep(CUDNN_BACKEND_TENSOR_DESCRIPTOR, "tensor " + name);
    const int64_t alignment = 16;
    FRUGAL_CUDNN_SET(tensor, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type);
    FRUGAL_CUDNN_SET(tensor, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims.data());
    FRUGAL_CUDNN_SET(tensor, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides.data());
    FRUGAL_CUDNN_SET(tensor, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    FRUGAL_CUDNN_SET(tensor, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment);
    FRUGAL_CUDNN_SET(tensor, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual);
    if (by_value)
      FRUGAL_CUDNN_SET(tensor, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value);
    tensor.finalize();
    return Tensor{tensor.get(), uid};
  }

  std::string label_;
  std::deque<Descriptor> descriptors_;
  std::vector<cudnnBackendDescriptor_t> operations_;
  int64_t next_virtual_uid_ = kFirstVirtualUid;
};

std::unique_ptr<Plan> GraphBuilder::build(cudnnHandle_t handle) {
  Descriptor& graph = keep(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph");
  FRUGAL_CUDNN_SET(graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
  FRUGAL_CUDNN_SET(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                   static_cast<int64_t>(operations_.size()), operations_.data());
  graph.finalize();
  const cudnnBackendDescriptor_t graph_descriptor = graph.get();

  std::string refusals;
  for (const cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
    const std::string mode_name = mode == CUDNN_HEUR_MODE_A ? "heuristics A" : "fallback list";
    Descriptor heuristics(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, label_ + ": " + mode_name);
    FRUGAL_CUDNN_SET(heuristics, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH,
                     CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph_descriptor);
    FRUGAL_CUDNN_SET(heuristics, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
    cudnnStatus_t status = cudnnBackendFinalize(heuristics.get());
    if (status != CUDNN_STATUS_SUCCESS) {
      refusals += "; " + mode_name + ": finalize: " + describe(status);
      continue;
    }
    int64_t available = 0;
    check(cudnnBackendGetAttribute(heuristics.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                   CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &available, nullptr),
          heuristics.label() + ": count CUDNN_ATTR_ENGINEHEUR_RESULTS");
    if (available <= 0) {
      refusals += "; " + mode_name + ": no engine for this graph";
      continue;
    }
    const int64_t requested = std::min(available, kMaxConfigsTried);
    std::vector<Descriptor> configs;
    std::vector<cudnnBackendDescriptor_t> config_descriptors;
    for (int64_t i = 0; i < requested; ++i) {
      configs.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR,
                           heuristics.label() + " config " + std::to_string(i));
      config_descriptors.push_back(configs.back().get());
    }
    int64_t returned = 0;
    check(cudnnBackendGetAttribute(heuristics.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                   CUDNN_TYPE_BACKEND_DESCRIPTOR, requested, &returned,
                                   config_descriptors.data()),
          heuristics.label() + ": get CUDNN_ATTR_ENGINEHEUR_RESULTS");
    if (returned <= 0)
      refusals += "; " + mode_name + ": " + std::to_string(available) +
                  " engine configs counted, none returned";
    for (int64_t i = 0; i < std::min(returned, requested); ++i) {
      Descriptor plan(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR,
                      configs[i].label() + " execution plan");
      FRUGAL_CUDNN_SET(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
      FRUGAL_CUDNN_SET(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
                       CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &config_descriptors[i]);
      status = cudnnBackendFinalize(plan.get());
      if (status != CUDNN_STATUS_SUCCESS) {
        refusals += "; " + mode_name + " config " + std::to_string(i) + ": " + describe(status);
        continue;
      }
      auto result = std::make_unique<Plan>();
      int64_t count = 0;
      check(cudnnBackendGetAttribute(plan.get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                     CUDNN_TYPE_INT64, 1, &count, &result->workspace_bytes),
            plan.label() + ": get CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE");
      result->plan = plan.get();
      result->descriptors = std::move(descriptors_);
      result->descriptors.push_back(std::move(configs[i]));
      result->descriptors.push_back(std::move(plan));
      return result;
    }
  }
  throw CudnnFailure{label_ + ": cuDNN has no engine that runs this graph" + refusals};
}

// [b, h, s, d] over frugal's [batch, seq, heads, d] memory.
Dims token_strides(const flash::AttentionShape& shape, int64_t dim) {
  return {shape.seq * shape.heads * dim, dim, shape.heads * dim, 1};
}
// The same memory seen as [b, h, d, s] (k^T, v^T).
Dims transposed_token_strides(const flash::AttentionShape& shape, int64_t dim) {
  return {shape.seq * shape.heads * dim, dim, 1, shape.heads * dim};
}

std::string shape_text(const flash::AttentionShape& shape) {
  return "B" + std::to_string(shape.batch) + " S" + std::to_string(shape.seq) + " H" +
         std::to_string(shape.heads) + " qk " + std::to_string(shape.qk_dim) + " v " +
         std::to_string(shape.v_dim);
}

// [b, h, s, s] scores, [b, h, s, 1] row statistics.
struct ScoreLayout {
  Dims scores, score_strides, rows, row_strides, scores_transposed, transposed_strides;
};
ScoreLayout score_layout(const flash::AttentionShape& shape) {
  const int64_t b = shape.batch, h = shape.heads, s = shape.seq;
  return ScoreLayout{{b, h, s, s}, {h * s * s, s * s, s, 1}, {b, h, s, 1},
                     {h * s, s, 1, 1},  {b, h, s, s}, {h * s * s, s * s, 1, s}};
}

// Keeps scores[i, j] where i >= j, the lowest float elsewhere.
Tensor causal_mask(GraphBuilder& graph, const ScoreLayout& layout, const Tensor& scores,
                   const Tensor& mask_value) {
  const Tensor row = graph.virtual_tensor("row index", CUDNN_DATA_INT32, layout.scores,
                                          layout.score_strides);
  const Tensor column = graph.virtual_tensor("column index", CUDNN_DATA_INT32, layout.scores,
                                             layout.score_strides);
  const Tensor keep = graph.virtual_tensor("causal keep", CUDNN_DATA_BOOLEAN, layout.scores,
                                           layout.score_strides);
  const Tensor masked = graph.virtual_tensor("masked scores", CUDNN_DATA_FLOAT, layout.scores,
                                             layout.score_strides);
  graph.pointwise("row index", CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, scores, nullptr,
                  nullptr, row, 2);
  graph.pointwise("column index", CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, scores, nullptr,
                  nullptr, column, 3);
  graph.pointwise("row >= column", CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN, row, &column,
                  nullptr, keep);
  graph.pointwise("causal select", CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, scores,
                  &mask_value, &keep, masked);
  return masked;
}

std::unique_ptr<Plan> build_forward(cudnnHandle_t handle, const flash::AttentionShape& shape) {
  const int64_t b = shape.batch, h = shape.heads, s = shape.seq;
  const int64_t dqk = shape.qk_dim, dv = shape.v_dim;
  const ScoreLayout layout = score_layout(shape);
  GraphBuilder graph("cuDNN attention forward " + shape_text(shape));
  const Tensor q = graph.tensor(kUidQ, "q", CUDNN_DATA_BFLOAT16, {b, h, s, dqk},
                                token_strides(shape, dqk));
  const Tensor k_t = graph.tensor(kUidK, "k^T", CUDNN_DATA_BFLOAT16, {b, h, dqk, s},
                                  transposed_token_strides(shape, dqk));
  const Tensor v = graph.tensor(kUidV, "v", CUDNN_DATA_BFLOAT16, {b, h, s, dv},
                                token_strides(shape, dv));
  const Tensor out = graph.tensor(kUidOut, "out", CUDNN_DATA_BFLOAT16, {b, h, s, dv},
                                  token_strides(shape, dv));
  const Tensor lse = graph.tensor(kUidLse, "lse (stats)", CUDNN_DATA_FLOAT, layout.rows,
                                  layout.row_strides);
  const Tensor scale = graph.scalar(kUidScale, "scale");
  const Tensor mask_value = graph.scalar(kUidMaskValue, "mask value");
  auto scores = [&](const char* name, cudnnDataType_t type) {
    return graph.virtual_tensor(name, type, layout.scores, layout.score_strides);
  };
  auto rows = [&](const char* name) {
    return graph.virtual_tensor(name, CUDNN_DATA_FLOAT, layout.rows, layout.row_strides);
  };

  const Tensor products = scores("q k^T", CUDNN_DATA_FLOAT);
  graph.matmul("q k^T", q, k_t, products);
  const Tensor scaled = scores("scaled scores", CUDNN_DATA_FLOAT);
  graph.pointwise("scale", CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, products, &scale, nullptr,
                  scaled);
  const Tensor masked = causal_mask(graph, layout, scaled, mask_value);
  // Softmax with its statistics: lse = max + log(sum exp(x - max)).
  const Tensor row_max = rows("row max");
  graph.reduction("row max", CUDNN_REDUCE_TENSOR_MAX, masked, row_max);
  const Tensor centered = scores("scores - max", CUDNN_DATA_FLOAT);
  graph.pointwise("subtract max", CUDNN_POINTWISE_SUB, CUDNN_DATA_FLOAT, masked, &row_max,
                  nullptr, centered);
  const Tensor exponentials = scores("exp", CUDNN_DATA_FLOAT);
  graph.pointwise("exp", CUDNN_POINTWISE_EXP, CUDNN_DATA_FLOAT, centered, nullptr, nullptr,
                  exponentials);
  const Tensor row_sum = rows("row sum");
  graph.reduction("row sum", CUDNN_REDUCE_TENSOR_ADD, exponentials, row_sum);
  const Tensor log_sum = rows("log row sum");
  graph.pointwise("log", CUDNN_POINTWISE_LOG, CUDNN_DATA_FLOAT, row_sum, nullptr, nullptr,
                  log_sum);
  graph.pointwise("lse = max + log sum", CUDNN_POINTWISE_ADD, CUDNN_DATA_FLOAT, row_max,
                  &log_sum, nullptr, lse);
  // The probabilities in bf16: the second matmul's A operand has the I/O type.
  const Tensor probabilities = scores("probabilities", CUDNN_DATA_BFLOAT16);
  graph.pointwise("normalize", CUDNN_POINTWISE_DIV, CUDNN_DATA_FLOAT, exponentials, &row_sum,
                  nullptr, probabilities);
  graph.matmul("P v", probabilities, v, out);
  return graph.build(handle);
}

std::unique_ptr<Plan> build_backward(cudnnHandle_t handle, const flash::AttentionShape& shape) {
  const int64_t b = shape.batch, h = shape.heads, s = shape.seq;
  const int64_t dqk = shape.qk_dim, dv = shape.v_dim;
  const ScoreLayout layout = score_layout(shape);
  GraphBuilder graph("cuDNN attention backward " + shape_text(shape));
  const Tensor q = graph.tensor(kUidQ, "q", CUDNN_DATA_BFLOAT16, {b, h, s, dqk},
                                token_strides(shape, dqk));
  const Tensor k_t = graph.tensor(kUidK, "k^T", CUDNN_DATA_BFLOAT16, {b, h, dqk, s},
                                  transposed_token_strides(shape, dqk));
  const Tensor v_t = graph.tensor(kUidV, "v^T", CUDNN_DATA_BFLOAT16, {b, h, dv, s},
                                  transposed_token_strides(shape, dv));
  const Tensor out = graph.tensor(kUidOut, "out", CUDNN_DATA_BFLOAT16, {b, h, s, dv},
                                  token_strides(shape, dv));
  const Tensor dout = graph.tensor(kUidDout, "dout", CUDNN_DATA_BFLOAT16, {b, h, s, dv},
                                   token_strides(shape, dv));
  const Tensor lse = graph.tensor(kUidLse, "lse (stats)", CUDNN_DATA_FLOAT, layout.rows,
                                  layout.row_strides);
  const Tensor dq = graph.tensor(kUidDq, "dq", CUDNN_DATA_BFLOAT16, {b, h, s, dqk},
                                 token_strides(shape, dqk));
  const Tensor dk = graph.tensor(kUidDk, "dk", CUDNN_DATA_BFLOAT16, {b, h, s, dqk},
                                 token_strides(shape, dqk));
  const Tensor dv_tensor = graph.tensor(kUidDv, "dv", CUDNN_DATA_BFLOAT16, {b, h, s, dv},
                                        token_strides(shape, dv));
  const Tensor row_sums = graph.tensor(kUidRowSums, "dout.out row sums", CUDNN_DATA_FLOAT,
                                       layout.rows, layout.row_strides);
  const Tensor dq_accum = graph.tensor(kUidDqAccum, "dq accumulator", CUDNN_DATA_FLOAT,
                                       {b, h, s, dqk}, {h * s * dqk, s * dqk, dqk, 1});
  const Tensor scale = graph.scalar(kUidScale, "scale");
  const Tensor mask_value = graph.scalar(kUidMaskValue, "mask value");
  const Tensor one = graph.scalar(kUidOne, "one");
  auto scores = [&](const char* name, cudnnDataType_t type) {
    return graph.virtual_tensor(name, type, layout.scores, layout.score_strides);
  };
  auto transposed_scores = [&](const char* name) {
    return graph.virtual_tensor(name, CUDNN_DATA_BFLOAT16, layout.scores_transposed,
                                layout.transposed_strides);
  };

  // D = sum_c dout * out.
  const Tensor dout_out = graph.virtual_tensor("dout * out", CUDNN_DATA_FLOAT, {b, h, s, dv},
                                               token_strides(shape, dv));
  graph.pointwise("dout * out", CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, dout, &out, nullptr,
                  dout_out);
  const Tensor dout_out_sum = graph.virtual_tensor("sum dout * out", CUDNN_DATA_FLOAT,
                                                   layout.rows, layout.row_strides);
  graph.reduction("sum dout * out", CUDNN_REDUCE_TENSOR_ADD, dout_out, dout_out_sum);
  graph.pointwise("row sums * 1", CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, dout_out_sum, &one,
                  nullptr, row_sums);

  // P = exp(scale q k^T - lse), causal.
  const Tensor products = scores("q k^T", CUDNN_DATA_FLOAT);
  graph.matmul("q k^T", q, k_t, products);
  const Tensor scaled = scores("scaled scores", CUDNN_DATA_FLOAT);
  graph.pointwise("scale", CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, products, &scale, nullptr,
                  scaled);
  const Tensor centered = scores("scores - lse", CUDNN_DATA_FLOAT);
  graph.pointwise("subtract lse", CUDNN_POINTWISE_SUB, CUDNN_DATA_FLOAT, scaled, &lse, nullptr,
                  centered);
  const Tensor masked = causal_mask(graph, layout, centered, mask_value);
  const Tensor probabilities = scores("probabilities", CUDNN_DATA_FLOAT);
  graph.pointwise("exp", CUDNN_POINTWISE_EXP, CUDNN_DATA_FLOAT, masked, nullptr, nullptr,
                  probabilities);

  // dv = P^T dout.
  const Tensor probabilities_t = transposed_scores("P^T");
  graph.reshape("P^T", probabilities, probabilities_t);
  graph.matmul("P^T dout", probabilities_t, dout, dv_tensor);

  // dS = (dout v^T - D) * P * scale.
  const Tensor dp = scores("dout v^T", CUDNN_DATA_FLOAT);
  graph.matmul("dout v^T", dout, v_t, dp);
  const Tensor dp_centered = scores("dP - D", CUDNN_DATA_FLOAT);
  graph.pointwise("dP - D", CUDNN_POINTWISE_SUB, CUDNN_DATA_FLOAT, dp, &row_sums, nullptr,
                  dp_centered);
  const Tensor ds_unscaled = scores("(dP - D) * P", CUDNN_DATA_FLOAT);
  graph.pointwise("(dP - D) * P", CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, dp_centered,
                  &probabilities, nullptr, ds_unscaled);
  const Tensor ds = scores("dS", CUDNN_DATA_FLOAT);
  graph.pointwise("dS = ... * scale", CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, ds_unscaled, &scale,
                  nullptr, ds);

  // dk = dS^T q.
  const Tensor ds_t = transposed_scores("dS^T");
  graph.reshape("dS^T", ds, ds_t);
  graph.matmul("dS^T q", ds_t, q, dk);

  // dq = dS k, through the fp32 accumulator.
  const Tensor k = graph.virtual_tensor("k", CUDNN_DATA_FLOAT, {b, h, s, dqk},
                                        token_strides(shape, dqk));
  graph.reshape("k from k^T", k_t, k);
  graph.matmul("dS k", ds, k, dq_accum);
  graph.pointwise("dq = accumulator", CUDNN_POINTWISE_IDENTITY, CUDNN_DATA_FLOAT, dq_accum,
                  nullptr, nullptr, dq);
  return graph.build(handle);
}

// ---- Plans, handles and scratch, shared by every thread under one mutex -------------------------

struct ShapeKey {
  bool backward;
  int64_t batch, seq, heads, qk_dim, v_dim;
  auto operator<=>(const ShapeKey&) const = default;
};

struct DeviceState {
  cudnnHandle_t handle = nullptr;
  bool broken = false;                                // cudnnCreate failed
  std::map<ShapeKey, std::unique_ptr<Plan>> plans;    // nullptr: cuDNN refused this shape
};

struct Scratch {
  void* data = nullptr;
  size_t bytes = 0;
};

struct CudnnState {
  std::mutex mutex;
  std::map<int, DeviceState> devices;
  std::map<std::pair<int, cudaStream_t>, Scratch> scratch;
  std::set<std::string> said;
};

// Never destroyed: handles and plans must outlive every caller, static destructors included.
CudnnState& state() {
  static CudnnState* const instance = new CudnnState;
  return *instance;
}

void say_once(const std::string& message) {
  static std::mutex said_mutex;
  std::lock_guard<std::mutex> lock(said_mutex);
  if (!state().said.insert(message).second) return;
  std::fprintf(stderr, "frugal: cuDNN attention: %s\n", message.c_str());
  std::fflush(stderr);
}

int64_t runtime_version() { return static_cast<int64_t>(cudnnGetVersion()); }

// Caller holds the state mutex.
DeviceState* device_state(int device) {
  DeviceState& entry = state().devices[device];
  if (entry.handle == nullptr && !entry.broken) {
    const cudnnStatus_t status = cudnnCreate(&entry.handle);
    if (status != CUDNN_STATUS_SUCCESS) {
      entry.broken = true;
      entry.handle = nullptr;
      say_once("cudnnCreate failed on device " + std::to_string(device) + ": " +
               describe(status) + "; attention runs frugal's kernels");
    } else {
      say_once("cuDNN " + std::to_string(runtime_version()) + " (built against " +
               std::to_string(CUDNN_VERSION) +
               ") runs bf16 flash attention where it fits (FRUGAL_ATTENTION=own: frugal's "
               "kernels only)");
    }
  }
  return entry.broken ? nullptr : &entry;
}

// The plan for this shape, built on first use; nullptr when cuDNN refuses it (said once).
Plan* find_plan(DeviceState& device, const ShapeKey& key, const flash::AttentionShape& shape) {
  const auto found = device.plans.find(key);
  if (found != device.plans.end()) return found->second.get();
  std::unique_ptr<Plan> plan;
  try {
    plan = key.backward ? build_backward(device.handle, shape)
                        : build_forward(device.handle, shape);
  } catch (const CudnnFailure& failure) {
    say_once(failure.message +
             "; this shape runs frugal's kernels (CUDNN_LOGERR_DBG=1 CUDNN_LOGDEST_DBG=stderr "
             "shows cuDNN's own log)");
  }
  Plan* result = plan.get();
  device.plans.emplace(key, std::move(plan));
  return result;
}

// At least `bytes` of device scratch for this stream; false (said once) when it cannot be had.
bool stream_scratch(int device, cudaStream_t stream, size_t bytes, void** data) {
  Scratch& scratch = state().scratch[{device, stream}];
  if (bytes > scratch.bytes) {
    if (scratch.data != nullptr) {
      // Work queued on this stream may still use the old buffer.
      FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
      FRUGAL_CUDA_CHECK(cudaFree(scratch.data));
      scratch = Scratch{};
    }
    const cudaError_t status = cudaMalloc(&scratch.data, bytes);
    if (status != cudaSuccess) {
      cudaGetLastError();
      scratch = Scratch{};
      say_once("could not allocate " + std::to_string(bytes) + " bytes of scratch (" +
               cudaGetErrorString(status) + "); such calls run frugal's kernels");
      return false;
    }
    scratch.bytes = bytes;
  }
  *data = scratch.data;
  return true;
}

size_t round_up_256(size_t bytes) { return (bytes + 255) / 256 * 256; }

bool aligned_16(std::initializer_list<const void*> pointers) {
  for (const void* p : pointers)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// Why this call cannot go to cuDNN, or nullptr.
const char* unfit_reason(const flash::AttentionShape& shape, bool backward, bool aligned) {
  if (!aligned) return "a tensor is not 16-byte aligned";
  if (shape.qk_dim % 8 != 0 || shape.v_dim % 8 != 0 || shape.qk_dim > 256 || shape.v_dim > 256)
    return "head dims must be multiples of 8, at most 256";
  if (backward && shape.seq % 128 != 0 && runtime_version() < 91600)
    return "the backward on cuDNN before 9.16 needs seq % 128 == 0";
  return nullptr;
}

// The preference allows cuDNN and the call fits it; says why not under FRUGAL_ATTENTION=cudnn.
bool wants_cudnn(const flash::AttentionShape& shape, bool backward, bool aligned) {
  const AttentionBackend preference = attention_backend();
  if (preference == AttentionBackend::own) return false;
  const char* reason = unfit_reason(shape, backward, aligned);
  if (reason == nullptr) return true;
  if (preference == AttentionBackend::cudnn)
    say_once(std::string(backward ? "backward" : "forward") + " runs frugal's kernels: " +
             reason);
  return false;
}

// Runs `plan` with these bindings; on failure says why (once), drops the plan and returns false.
bool run_plan(DeviceState& device, const ShapeKey& key, Plan& plan, cudaStream_t stream,
              const std::vector<int64_t>& uids, const std::vector<void*>& pointers,
              void* workspace, const std::string& label) {
  try {
    check(cudnnSetStream(device.handle, stream), label + ": cudnnSetStream");
    Descriptor pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, label + ": variant pack");
    FRUGAL_CUDNN_SET(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64,
                     static_cast<int64_t>(uids.size()), uids.data());
    FRUGAL_CUDNN_SET(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR,
                     static_cast<int64_t>(pointers.size()), pointers.data());
    FRUGAL_CUDNN_SET(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace);
    pack.finalize();
    check(cudnnBackendExecute(device.handle, plan.plan, pack.get()),
          label + ": cudnnBackendExecute");
    return true;
  } catch (const CudnnFailure& failure) {
    say_once(failure.message + "; this shape runs frugal's kernels from now on");
    device.plans[key] = nullptr;
    return false;
  }
}

void* mutable_pointer(const void* p) { return const_cast<void*>(p); }

}  // namespace

int64_t cudnn_attention_version() { return runtime_version(); }

namespace flash {

bool cudnn_fwd_bf16(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                    const AttentionShape& shape, cudaStream_t stream) {
  if (!wants_cudnn(shape, false, aligned_16({out, lse, q, k, v}))) return false;
  int device_index = 0;
  FRUGAL_CUDA_CHECK(cudaGetDevice(&device_index));
  std::lock_guard<std::mutex> lock(state().mutex);
  DeviceState* device = device_state(device_index);
  if (device == nullptr) return false;
  const ShapeKey key{false, shape.batch, shape.seq, shape.heads, shape.qk_dim, shape.v_dim};
  Plan* plan = find_plan(*device, key, shape);
  if (plan == nullptr) return false;
  void* workspace = nullptr;
  if (!stream_scratch(device_index, stream, static_cast<size_t>(plan->workspace_bytes),
                      &workspace))
    return false;
  float scale = shape.scale;
  float mask_value = std::numeric_limits<float>::lowest();
  const std::vector<int64_t> uids = {kUidQ,   kUidK,   kUidV,        kUidOut,
                                     kUidLse, kUidScale, kUidMaskValue};
  const std::vector<void*> pointers = {mutable_pointer(q), mutable_pointer(k), mutable_pointer(v),
                                       out, lse, &scale, &mask_value};
  return run_plan(*device, key, *plan, stream, uids, pointers, workspace,
                  "cuDNN attention forward " + shape_text(shape));
}

bool cudnn_bwd_bf16(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* out,
                    const float* lse, const bf16* q, const bf16* k, const bf16* v,
                    const AttentionShape& shape, cudaStream_t stream) {
  if (!wants_cudnn(shape, true, aligned_16({dq, dk, dv, dout, out, lse, q, k, v}))) return false;
  int device_index = 0;
  FRUGAL_CUDA_CHECK(cudaGetDevice(&device_index));
  std::lock_guard<std::mutex> lock(state().mutex);
  DeviceState* device = device_state(device_index);
  if (device == nullptr) return false;
  const ShapeKey key{true, shape.batch, shape.seq, shape.heads, shape.qk_dim, shape.v_dim};
  Plan* plan = find_plan(*device, key, shape);
  if (plan == nullptr) return false;
  // Scratch: [dq accumulator fp32 (b h s dqk)][row sums fp32 (b h s)][engine workspace].
  const size_t rows = static_cast<size_t>(shape.batch * shape.heads * shape.seq);
  const size_t accum_bytes = round_up_256(rows * static_cast<size_t>(shape.qk_dim) * 4);
  const size_t row_sum_bytes = round_up_256(rows * 4);
  void* scratch = nullptr;
  if (!stream_scratch(device_index, stream,
                      accum_bytes + row_sum_bytes + static_cast<size_t>(plan->workspace_bytes),
                      &scratch))
    return false;
  char* base = static_cast<char*>(scratch);
  void* dq_accum = base;
  void* row_sums = base + accum_bytes;
  void* workspace = plan->workspace_bytes > 0 ? base + accum_bytes + row_sum_bytes : nullptr;
  // cuDNN zeroes the accumulator itself from 9.6 on (as its front end relies on).
  if (runtime_version() < 90600)
    FRUGAL_CUDA_CHECK(cudaMemsetAsync(dq_accum, 0, accum_bytes, stream));
  float scale = shape.scale;
  float mask_value = std::numeric_limits<float>::lowest();
  float one = 1.0f;
  const std::vector<int64_t> uids = {kUidQ,  kUidK,      kUidV,        kUidOut,  kUidDout,
                                     kUidLse, kUidDq,    kUidDk,       kUidDv,   kUidRowSums,
                                     kUidDqAccum, kUidScale, kUidMaskValue, kUidOne};
  const std::vector<void*> pointers = {
      mutable_pointer(q), mutable_pointer(k),    mutable_pointer(v),   mutable_pointer(out),
      mutable_pointer(dout), mutable_pointer(lse), dq,                  dk,
      dv,                 row_sums,              dq_accum,              &scale,
      &mask_value,        &one};
  return run_plan(*device, key, *plan, stream, uids, pointers, workspace,
                  "cuDNN attention backward " + shape_text(shape));
}

}  // namespace flash

#else  // !FRUGAL_HAVE_CUDNN

namespace {
void say_no_cudnn_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    std::fprintf(stderr,
                 "frugal: FRUGAL_ATTENTION=cudnn, but this build has no cuDNN (CMake did not find "
                 "it); attention runs frugal's kernels\n");
  });
}
}  // namespace

int64_t cudnn_attention_version() { return 0; }

namespace flash {

bool cudnn_fwd_bf16(__nv_bfloat16*, float*, const __nv_bfloat16*, const __nv_bfloat16*,
                    const __nv_bfloat16*, const AttentionShape&, cudaStream_t) {
  if (attention_backend() == AttentionBackend::cudnn) say_no_cudnn_once();
  return false;
}

bool cudnn_bwd_bf16(__nv_bfloat16*, __nv_bfloat16*, __nv_bfloat16*, const __nv_bfloat16*,
                    const __nv_bfloat16*, const float*, const __nv_bfloat16*, const __nv_bfloat16*,
                    const __nv_bfloat16*, const AttentionShape&, cudaStream_t) {
  if (attention_backend() == AttentionBackend::cudnn) say_no_cudnn_once();
  return false;
}

}  // namespace flash

#endif  // FRUGAL_HAVE_CUDNN

}  // namespace frugal::cuda

#endif  // FRUGAL_HAVE_CUDA
