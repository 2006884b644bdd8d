// The forward and backward SDPA graphs of cuDNN's fused flash-attention engine, built op by op
// through the backend descriptor API; see cudnn_sdpa_graph.h and the graph description at the top
// of cudnn_attention.cc.
#if defined(FRUGAL_HAVE_CUDA) && defined(FRUGAL_HAVE_CUDNN)

#include "kernels/attention/cudnn_sdpa_graph.h"

#include <algorithm>
#include <limits>
#include <set>
#include <string>
#include <vector>

namespace frugal::cuda::cudnn_sdpa {
namespace {

struct Tensor {
  cudnnBackendDescriptor_t descriptor;
  int64_t uid;
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

}  // namespace

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

}  // namespace frugal::cuda::cudnn_sdpa

#endif
