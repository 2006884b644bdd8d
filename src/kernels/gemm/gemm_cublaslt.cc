// FP32/BF16 GEMMs through cuBLASLt (gemm_cuda.h): BlasHandle, the plan cache, gemm, gemm_batched
// and the grouped (MoE expert) GEMMs as one cuBLASLt call per non-empty group.
//
// Every row-major call becomes one column-major cuBLASLt call by swapping the operands
// (C^T = op(B)^T op(A)^T, see gemm_cuda_internal.h). FP32 inputs compute with CUBLAS_COMPUTE_32F
// (true FP32, never TF32); BF16 inputs accumulate in FP32 (CUBLAS_COMPUTE_32F) and write F32 or
// BF16. K == 0 gives C = beta * C (an exact zero for beta == 0) from a small kernel.
//
// Host code only (compiled by the C++ compiler so that errors can use fmt); the kernels are in
// gemm_cuda.cu. Only in builds with the CUDA backend.
#ifdef FRUGAL_HAVE_CUDA

#include <algorithm>
#include <cstdlib>
#include <string>

#include "core/cuda_check.h"
#include "core/error.h"
#include "kernels/gemm/gemm_cuda.h"
#include "kernels/gemm/gemm_cuda_internal.h"

namespace frugal::cuda {

using gemm_detail::MatmulCall;
using gemm_detail::MatmulPlan;
using gemm_detail::PlanKey;
using gemm_detail::VaryingDim;

namespace gemm_detail {

size_t element_bytes(cudaDataType_t type) {
  switch (type) {
    case CUDA_R_32F:
      return 4;
    case CUDA_R_16BF:
      return 2;
    case CUDA_R_8F_E4M3:
      return 1;
    default:
      fail("cuBLASLt GEMM: unexpected data type {}", static_cast<int>(type));
  }
}

cudaDataType_t to_cuda_type(DataType type) {
  switch (type) {
    case DataType::F32:
      return CUDA_R_32F;
    case DataType::BF16:
      return CUDA_R_16BF;
    case DataType::E4M3:
      return CUDA_R_8F_E4M3;
  }
  fail("cuBLASLt GEMM: unknown DataType {}", static_cast<int>(type));
}

const char* type_name(DataType type) {
  switch (type) {
    case DataType::F32:
      return "F32";
    case DataType::BF16:
      return "BF16";
    case DataType::E4M3:
      return "E4M3";
  }
  return "?";
}

}  // namespace gemm_detail

namespace {

const char* cuda_type_name(cudaDataType_t type) {
  switch (type) {
    case CUDA_R_32F:
      return "F32";
    case CUDA_R_16BF:
      return "BF16";
    case CUDA_R_8F_E4M3:
      return "E4M3";
    default:
      return "?";
  }
}

const char* scale_mode_name(int mode) {
  switch (mode) {
    case gemm_detail::kNoScaling:
      return "none";
    case CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F:
      return "VEC128_32F";
    case CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F:
      return "BLK128x128_32F";
    default:
      return "?";
  }
}

// The call in words, for error messages.
std::string describe(const MatmulCall& call) {
  return fmt::format(
      "column-major cuBLASLt problem m={} n={} k={} transa={} transb={} lda={} ldb={} ldc={} "
      "types A={} B={} C/D={} scale modes A={} B={} batch={} alpha={} beta={}",
      call.m, call.n, call.k, call.trans_a == CUBLAS_OP_T ? "T" : "N",
      call.trans_b == CUBLAS_OP_T ? "T" : "N", call.lda, call.ldb, call.ldc,
      cuda_type_name(call.a_type), cuda_type_name(call.b_type), cuda_type_name(call.c_type),
      scale_mode_name(call.a_scale_mode), scale_mode_name(call.b_scale_mode), call.batch,
      call.alpha, call.beta);
}

void check_status(cublasStatus_t status, const char* operation, const char* what,
                  const MatmulCall& call) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  fail("{}: {} failed: {} ({}); {}", what, operation, cublasLtGetStatusName(status),
       cublasLtGetStatusString(status), describe(call));
}

// Largest power of two (at most 256) dividing the address: what cuBLASLt's alignment
// preferences describe.
int64_t alignment_of(const void* pointer) {
  const auto address = reinterpret_cast<uintptr_t>(pointer);
  if (address == 0) return 256;
  return static_cast<int64_t>(std::min<uintptr_t>(address & (~address + 1), 256));
}

// The bucket of a varying (per-expert) extent: multiples of 128 up to 1024, then 8 buckets per
// power of two.
int64_t bucket_of(int64_t extent) {
  int64_t power = 1;
  while (power * 2 <= extent) power *= 2;
  const int64_t step = std::max<int64_t>(128, power / 8);
  return std::max<int64_t>(step, (extent + step - 1) / step * step);
}

PlanKey make_key(const MatmulCall& call, int64_t align_a, int64_t align_b, int64_t align_c) {
  return {static_cast<int64_t>(call.a_type),
          static_cast<int64_t>(call.b_type),
          static_cast<int64_t>(call.c_type),
          static_cast<int64_t>(call.trans_a),
          static_cast<int64_t>(call.trans_b),
          call.a_scale_mode,
          call.b_scale_mode,
          call.m,
          call.n,
          call.k,
          call.lda,
          call.ldb,
          call.ldc,
          call.batch,
          call.stride_a,
          call.stride_b,
          call.stride_c,
          align_a,
          align_b,
          align_c,
          0,
          0};
}

struct Layouts {
  cublasLtMatrixLayoutOpaque_t a, b, c;
};

void init_layout(cublasLtMatrixLayoutOpaque_t* layout, cudaDataType_t type, int64_t rows,
                 int64_t cols, int64_t ld, int64_t batch, int64_t stride, const char* what,
                 const MatmulCall& call) {
  check_status(cublasLtMatrixLayoutInit(layout, type, static_cast<uint64_t>(rows),
                                        static_cast<uint64_t>(cols), ld),
               "cublasLtMatrixLayoutInit", what, call);
  if (batch > 1) {
    const int32_t count = static_cast<int32_t>(batch);
    check_status(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                                                  &count, sizeof count),
                 "cublasLtMatrixLayoutSetAttribute(BATCH_COUNT)", what, call);
    check_status(cublasLtMatrixLayoutSetAttribute(
                     layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride),
                 "cublasLtMatrixLayoutSetAttribute(STRIDED_BATCH_OFFSET)", what, call);
  }
}

// Stored (not op'd) shapes: op(A) is m x k, so A is m x k (N) or k x m (T).
Layouts make_layouts(const MatmulCall& call, const char* what) {
  Layouts layouts;
  const bool ta = call.trans_a == CUBLAS_OP_T, tb = call.trans_b == CUBLAS_OP_T;
  init_layout(&layouts.a, call.a_type, ta ? call.k : call.m, ta ? call.m : call.k, call.lda,
              call.batch, call.stride_a, what, call);
  init_layout(&layouts.b, call.b_type, tb ? call.n : call.k, tb ? call.k : call.n, call.ldb,
              call.batch, call.stride_b, what, call);
  init_layout(&layouts.c, call.c_type, call.m, call.n, call.ldc, call.batch, call.stride_c, what,
              call);
  return layouts;
}

template <class T>
void set_desc(cublasLtMatmulDescOpaque_t* desc, cublasLtMatmulDescAttributes_t attribute,
              const T& value, const char* name, const char* what, const MatmulCall& call) {
  check_status(cublasLtMatmulDescSetAttribute(desc, attribute, &value, sizeof value), name, what,
               call);
}

// Scale pointers change from call to call; everything else in the descriptor is the plan's.
void set_scale_pointers(cublasLtMatmulDescOpaque_t* desc, const MatmulCall& call,
                        const char* what) {
  if (call.a_scale_mode != gemm_detail::kNoScaling)
    set_desc(desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, call.a_scales,
             "cublasLtMatmulDescSetAttribute(A_SCALE_POINTER)", what, call);
  if (call.b_scale_mode != gemm_detail::kNoScaling)
    set_desc(desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, call.b_scales,
             "cublasLtMatmulDescSetAttribute(B_SCALE_POINTER)", what, call);
}

class Preference {
 public:
  Preference(const MatmulCall& call, const char* what) : call_(call), what_(what) {
    check_status(cublasLtMatmulPreferenceCreate(&preference_), "cublasLtMatmulPreferenceCreate",
                 what, call);
  }
  ~Preference() { cublasLtMatmulPreferenceDestroy(preference_); }
  Preference(const Preference&) = delete;
  Preference& operator=(const Preference&) = delete;
  template <class T>
  void set(cublasLtMatmulPreferenceAttributes_t attribute, T value, const char* name) {
    check_status(cublasLtMatmulPreferenceSetAttribute(preference_, attribute, &value, sizeof value),
                 name, what_, call_);
  }
  cublasLtMatmulPreference_t get() const { return preference_; }

 private:
  cublasLtMatmulPreference_t preference_ = nullptr;
  const MatmulCall& call_;
  const char* what_;
};

// A new plan for `call` (whose dimensions are the plan's): descriptor and the heuristic's best
// algorithm for these pointer alignments and this workspace.
std::unique_ptr<MatmulPlan> create_plan(cublasLtHandle_t handle, size_t workspace_bytes,
                                        const MatmulCall& call, int64_t align_a, int64_t align_b,
                                        int64_t align_c, const char* what) {
  auto plan = std::make_unique<MatmulPlan>();
  check_status(cublasLtMatmulDescInit(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F),
               "cublasLtMatmulDescInit", what, call);
  set_desc(&plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, call.trans_a,
           "cublasLtMatmulDescSetAttribute(TRANSA)", what, call);
  set_desc(&plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, call.trans_b,
           "cublasLtMatmulDescSetAttribute(TRANSB)", what, call);
  if (call.a_scale_mode != gemm_detail::kNoScaling) {
    const int32_t mode = call.a_scale_mode;
    set_desc(&plan->desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, mode,
             "cublasLtMatmulDescSetAttribute(A_SCALE_MODE)", what, call);
  }
  if (call.b_scale_mode != gemm_detail::kNoScaling) {
    const int32_t mode = call.b_scale_mode;
    set_desc(&plan->desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, mode,
             "cublasLtMatmulDescSetAttribute(B_SCALE_MODE)", what, call);
  }
  set_scale_pointers(&plan->desc, call, what);

  Layouts layouts = make_layouts(call, what);
  Preference preference(call, what);
  preference.set(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, static_cast<uint64_t>(workspace_bytes),
                 "cublasLtMatmulPreferenceSetAttribute(MAX_WORKSPACE_BYTES)");
  preference.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, static_cast<uint32_t>(align_a),
                 "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_A_BYTES)");
  preference.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, static_cast<uint32_t>(align_b),
                 "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_B_BYTES)");
  preference.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, static_cast<uint32_t>(align_c),
                 "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_C_BYTES)");
  preference.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, static_cast<uint32_t>(align_c),
                 "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_D_BYTES)");

  cublasLtMatmulHeuristicResult_t result{};
  int returned = 0;
  check_status(
      cublasLtMatmulAlgoGetHeuristic(handle, &plan->desc, &layouts.a, &layouts.b, &layouts.c,
                                     &layouts.c, preference.get(), 1, &result, &returned),
      "cublasLtMatmulAlgoGetHeuristic", what, call);
  FRUGAL_CHECK(returned > 0,
               "{}: cuBLASLt has no algorithm for this GEMM (alignments A={} B={} C={} bytes); {}",
               what, align_a, align_b, align_c, describe(call));
  plan->algo = result.algo;
  plan->algo_workspace_bytes = result.workspaceSize;
  return plan;
}

}  // namespace

// ---- BlasHandle ---------------------------------------------------------------------------------

BlasHandle::BlasHandle(size_t workspace_bytes) : impl_(std::make_unique<Impl>()) {
  const cublasStatus_t status = cublasLtCreate(&impl_->handle);
  FRUGAL_CHECK(status == CUBLAS_STATUS_SUCCESS, "BlasHandle: cublasLtCreate failed: {} ({})",
               cublasLtGetStatusName(status), cublasLtGetStatusString(status));
  if (workspace_bytes > 0) {
    const cudaError_t error = cudaMalloc(&impl_->workspace, workspace_bytes);
    if (error != cudaSuccess) {
      cublasLtDestroy(impl_->handle);
      FRUGAL_CUDA_CHECK(error);
    }
  }
  impl_->workspace_bytes = workspace_bytes;
}

BlasHandle::~BlasHandle() {
  // Destructors do not throw: a failing free means the context is already broken.
  if (impl_->scale_scratch != nullptr) cudaFree(impl_->scale_scratch);
  if (impl_->workspace != nullptr) cudaFree(impl_->workspace);
  if (impl_->handle != nullptr) cublasLtDestroy(impl_->handle);
}

float* BlasHandle::Impl::scratch_floats(size_t floats, cudaStream_t stream) {
  if (floats > scale_scratch_floats) {
    const size_t grown = std::max<size_t>({floats, 2 * scale_scratch_floats, size_t{1} << 16});
    if (scale_scratch != nullptr) {
      // The old buffer may still be read by work queued on this handle's stream.
      FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
      FRUGAL_CUDA_CHECK(cudaFree(scale_scratch));
      scale_scratch = nullptr;
      scale_scratch_floats = 0;
    }
    FRUGAL_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&scale_scratch), grown * sizeof(float)));
    scale_scratch_floats = grown;
  }
  return scale_scratch;
}

BlasHandle::Impl::~Impl() {
  for (Lane& lane : lanes) {
    if (lane.workspace != nullptr) cudaFree(lane.workspace);
    if (lane.done != nullptr) cudaEventDestroy(lane.done);
    if (lane.stream != nullptr) cudaStreamDestroy(lane.stream);
  }
  if (fork != nullptr) cudaEventDestroy(fork);
}

// ---- GroupLanes ---------------------------------------------------------------------------------

namespace {

int lane_count_setting() {
  static const int count = [] {
    const char* text = std::getenv("FRUGAL_GEMM_LANES");
    const int value = text != nullptr ? std::atoi(text) : 4;
    return std::clamp(value, 1, 8);
  }();
  return count;
}

}  // namespace

GroupLanes::GroupLanes(BlasHandle::Impl& blas, cudaStream_t stream) : blas_(blas), stream_(stream) {
  const int wanted = lane_count_setting();
  if (wanted <= 1) return;
  if (blas_.fork == nullptr)
    FRUGAL_CUDA_CHECK(cudaEventCreateWithFlags(&blas_.fork, cudaEventDisableTiming));
  while (static_cast<int>(blas_.lanes.size()) < wanted) {
    BlasHandle::Impl::Lane lane;
    FRUGAL_CUDA_CHECK(cudaStreamCreateWithFlags(&lane.stream, cudaStreamNonBlocking));
    FRUGAL_CUDA_CHECK(cudaEventCreateWithFlags(&lane.done, cudaEventDisableTiming));
    if (blas_.workspace_bytes > 0)
      FRUGAL_CUDA_CHECK(cudaMalloc(&lane.workspace, blas_.workspace_bytes));
    blas_.lanes.push_back(lane);
  }
  // Everything queued on `stream` so far (the inputs, padded scales) precedes every lane's work.
  FRUGAL_CUDA_CHECK(cudaEventRecord(blas_.fork, stream_));
  count_ = wanted;
  for (int i = 0; i < count_; ++i)
    FRUGAL_CUDA_CHECK(cudaStreamWaitEvent(blas_.lanes[i].stream, blas_.fork, 0));
}

GroupLanes::~GroupLanes() {
  // Destructors do not throw: a failing record/wait means the context is already broken, and the
  // next checked CUDA call reports it.
  for (int i = 0; i < count_; ++i) {
    cudaEventRecord(blas_.lanes[i].done, blas_.lanes[i].stream);
    cudaStreamWaitEvent(stream_, blas_.lanes[i].done, 0);
  }
}

std::pair<cudaStream_t, int> GroupLanes::next() {
  if (count_ == 0) return {stream_, -1};
  const int lane = static_cast<int>(calls_++ % count_);
  return {blas_.lanes[lane].stream, lane};
}

void BlasHandle::Impl::run(const MatmulCall& call, VaryingDim varying, cudaStream_t stream,
                           const char* what, int lane) {
  void* const call_workspace = lane >= 0 ? lanes[lane].workspace : workspace;
  const int64_t align_a = alignment_of(call.a), align_b = alignment_of(call.b),
                align_c = alignment_of(call.c);
  MatmulCall plan_call = call;
  int64_t exact = 0;
  if (varying == VaryingDim::N) {
    exact = call.n;
    plan_call.n = bucket_of(call.n);
  } else if (varying == VaryingDim::K) {
    exact = call.k;
    plan_call.k = bucket_of(call.k);
    // Operands whose rows are the varying reduction (FP8 Wgrad's transposes) have ld = k: the
    // bucket's plan must see a consistent ld, or cuBLASLt rejects it (ld < k).
    if (call.lda == call.k) plan_call.lda = plan_call.k;
    if (call.ldb == call.k) plan_call.ldb = plan_call.k;
  }
  const bool bucketed = plan_call.n != call.n || plan_call.k != call.k;

  auto find_or_create = [&](const MatmulCall& key_call) -> MatmulPlan& {
    const PlanKey key = make_key(key_call, align_a, align_b, align_c);
    auto it = plans.find(key);
    if (it == plans.end())
      it = plans
               .emplace(key, create_plan(handle, workspace_bytes, key_call, align_a, align_b,
                                         align_c, what))
               .first;
    return *it->second;
  };

  MatmulPlan* plan = &find_or_create(plan_call);
  Layouts layouts = make_layouts(call, what);
  set_scale_pointers(&plan->desc, call, what);
  if (bucketed) {
    auto fit = plan->algo_fits.find(exact);
    if (fit == plan->algo_fits.end()) {
      cublasLtMatmulHeuristicResult_t result{};
      const cublasStatus_t status =
          cublasLtMatmulAlgoCheck(handle, &plan->desc, &layouts.a, &layouts.b, &layouts.c,
                                  &layouts.c, &plan->algo, &result);
      const bool fits = status == CUBLAS_STATUS_SUCCESS && result.workspaceSize <= workspace_bytes;
      fit = plan->algo_fits.emplace(exact, fits).first;
    }
    if (!fit->second) {
      plan = &find_or_create(call);  // this exact size gets its own heuristic
      set_scale_pointers(&plan->desc, call, what);
    }
  }
  const float alpha = call.alpha, beta = call.beta;
  check_status(cublasLtMatmul(handle, &plan->desc, &alpha, call.a, &layouts.a, call.b, &layouts.b,
                              &beta, call.c, &layouts.c, call.c, &layouts.c, &plan->algo,
                              call_workspace, workspace_bytes, stream),
               "cublasLtMatmul", what, call);
}

// ---- FP32 / BF16 GEMMs --------------------------------------------------------------------------

namespace {

size_t bytes_of(DataType type) {
  return gemm_detail::element_bytes(gemm_detail::to_cuda_type(type));
}

// Row-major C[M,N] = alpha op(A) op(B) + beta C for `batch` matrices (see gemm_cuda.h).
void dense_gemm(BlasHandle& blas, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                float alpha, const void* a, int64_t lda, int64_t stride_a, const void* b,
                int64_t ldb, int64_t stride_b, DataType ab_type, float beta, void* c, int64_t ldc,
                int64_t stride_c, DataType c_type, int64_t batch, VaryingDim varying,
                cudaStream_t stream, const char* what, int lane = -1) {
  FRUGAL_CHECK(ab_type == DataType::F32 || ab_type == DataType::BF16,
               "{}: A and B must be F32 or BF16, got {} (E4M3 operands go through gemm_fp8_nt)",
               what, gemm_detail::type_name(ab_type));
  FRUGAL_CHECK(c_type == DataType::F32 || c_type == DataType::BF16,
               "{}: C must be F32 or BF16, got {}", what, gemm_detail::type_name(c_type));
  FRUGAL_CHECK(ab_type == DataType::BF16 || c_type == DataType::F32,
               "{}: F32 inputs need an F32 output (cuBLASLt has no F32 x F32 -> BF16 GEMM)", what);
  FRUGAL_CHECK(m >= 0 && n >= 0 && k >= 0 && batch >= 0,
               "{}: negative extent (m={} n={} k={} batch={})", what, m, n, k, batch);
  FRUGAL_CHECK(lda >= std::max<int64_t>(1, trans_a ? m : k),
               "{}: lda={} is smaller than a row of {} A ({})", what, lda,
               trans_a ? "transposed" : "", trans_a ? m : k);
  FRUGAL_CHECK(ldb >= std::max<int64_t>(1, trans_b ? k : n),
               "{}: ldb={} is smaller than a row of {} B ({})", what, ldb,
               trans_b ? "transposed" : "", trans_b ? k : n);
  FRUGAL_CHECK(ldc >= std::max<int64_t>(1, n), "{}: ldc={} is smaller than N={}", what, ldc, n);
  FRUGAL_CHECK(batch <= 1 || (stride_a >= 0 && stride_b >= 0 && stride_c >= 0),
               "{}: negative batch stride", what);
  FRUGAL_CHECK(batch <= (int64_t{1} << 31) - 1, "{}: batch {} too large", what, batch);
  if (m == 0 || n == 0 || batch == 0) return;
  FRUGAL_CHECK(c != nullptr, "{}: C is null", what);
  if (k == 0) {  // an empty sum: C = beta * C
    gemm_detail::scale_matrix(c, c_type, m, n, ldc, batch, stride_c, beta, stream);
    return;
  }
  FRUGAL_CHECK(a != nullptr && b != nullptr, "{}: A or B is null", what);

  MatmulCall call;
  call.a_type = call.b_type = gemm_detail::to_cuda_type(ab_type);
  call.c_type = gemm_detail::to_cuda_type(c_type);
  call.trans_a = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's A is our B
  call.trans_b = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's B is our A
  call.m = n;
  call.n = m;
  call.k = k;
  call.lda = ldb;
  call.ldb = lda;
  call.ldc = ldc;
  call.batch = batch;
  call.stride_a = stride_b;
  call.stride_b = stride_a;
  call.stride_c = stride_c;
  call.a = b;
  call.b = a;
  call.c = c;
  call.alpha = alpha;
  call.beta = beta;
  blas.impl().run(call, varying, stream, what, lane);
}

const char* offset_ptr(const void* base, int64_t elements, DataType type) {
  return static_cast<const char*>(base) + elements * static_cast<int64_t>(bytes_of(type));
}
char* offset_ptr(void* base, int64_t elements, DataType type) {
  return static_cast<char*>(base) + elements * static_cast<int64_t>(bytes_of(type));
}

}  // namespace

void gemm_detail::check_group_offsets(const char* what, int64_t groups, const int64_t* host_offsets,
                                      int64_t row_align) {
  FRUGAL_CHECK(groups >= 0, "{}: negative group count {}", what, groups);
  if (groups == 0) return;
  FRUGAL_CHECK(host_offsets != nullptr, "{}: host_offsets is null", what);
  FRUGAL_CHECK(host_offsets[0] >= 0, "{}: offsets[0]={} is negative", what, host_offsets[0]);
  for (int64_t g = 0; g < groups; ++g)
    FRUGAL_CHECK(host_offsets[g + 1] >= host_offsets[g],
                 "{}: offsets decrease at group {} ({} -> {})", what, g, host_offsets[g],
                 host_offsets[g + 1]);
  for (int64_t g = 0; g <= groups; ++g)
    FRUGAL_CHECK(host_offsets[g] % row_align == 0,
                 "{}: offsets[{}]={} is not a multiple of {} (FP8 groups are padded to whole "
                 "128-row tiles)",
                 what, g, host_offsets[g], row_align);
}

void gemm(BlasHandle& blas, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
          float alpha, const void* a, int64_t lda, const void* b, int64_t ldb, DataType ab_type,
          float beta, void* c, int64_t ldc, DataType c_type, cudaStream_t stream) {
  dense_gemm(blas, trans_a, trans_b, m, n, k, alpha, a, lda, 0, b, ldb, 0, ab_type, beta, c, ldc, 0,
             c_type, 1, VaryingDim::None, stream, "gemm");
}

void gemm_batched(BlasHandle& blas, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                  float alpha, const void* a, int64_t lda, int64_t stride_a, const void* b,
                  int64_t ldb, int64_t stride_b, DataType ab_type, float beta, void* c, int64_t ldc,
                  int64_t stride_c, DataType c_type, int64_t batch, cudaStream_t stream) {
  dense_gemm(blas, trans_a, trans_b, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b, ab_type,
             beta, c, ldc, stride_c, c_type, batch, VaryingDim::None, stream, "gemm_batched");
}

// ---- Grouped (MoE) GEMMs: one cuBLASLt call per non-empty group ---------------------------------

namespace {

// out_g[rows, out_cols] = in_g[rows, in_cols] · W_g (trans_w: W_g^T), W_g [N, K] the g-th of the
// weights; rows of group g are host_offsets[g]..host_offsets[g+1] of in and out.
void grouped_rows_times_weight(BlasHandle& blas, const char* what, bool trans_w, int64_t groups,
                               const int64_t* host_offsets, int64_t n, int64_t k, const void* in,
                               int64_t in_cols, const void* w, DataType ab_type, void* out,
                               int64_t out_cols, DataType c_type, cudaStream_t stream) {
  gemm_detail::check_group_offsets(what, groups, host_offsets, 1);
  GroupLanes lanes(blas.impl(), stream);
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t begin = host_offsets[g], rows = host_offsets[g + 1] - begin;
    if (rows == 0) continue;
    const auto [lane_stream, lane] = lanes.next();
    dense_gemm(blas, false, trans_w, rows, out_cols, in_cols, 1.0f,
               offset_ptr(in, begin * in_cols, ab_type), in_cols, 0,
               offset_ptr(w, g * n * k, ab_type), k, 0, ab_type, 0.0f,
               offset_ptr(out, begin * out_cols, c_type), out_cols, 0, c_type, 1, VaryingDim::N,
               lane_stream, what, lane);
  }
}

}  // namespace

// y_g[rows,N] = x_g[rows,K] · W_g[N,K]^T
void grouped_gemm_nt(BlasHandle& blas, int64_t groups, const int64_t* host_offsets, int64_t n,
                     int64_t k, const void* x, const void* w, DataType ab_type, void* y,
                     DataType c_type, cudaStream_t stream) {
  grouped_rows_times_weight(blas, "grouped_gemm_nt", true, groups, host_offsets, n, k, x, k, w,
                            ab_type, y, n, c_type, stream);
}

// dx_g[rows,K] = dy_g[rows,N] · W_g[N,K]
void grouped_gemm_nn(BlasHandle& blas, int64_t groups, const int64_t* host_offsets, int64_t n,
                     int64_t k, const void* dy, const void* w, DataType ab_type, void* dx,
                     DataType c_type, cudaStream_t stream) {
  grouped_rows_times_weight(blas, "grouped_gemm_nn", false, groups, host_offsets, n, k, dy, n, w,
                            ab_type, dx, k, c_type, stream);
}

void grouped_gemm_tn(BlasHandle& blas, int64_t groups, const int64_t* host_offsets, int64_t n,
                     int64_t k, const void* dy, const void* x, DataType ab_type, void* dw,
                     DataType c_type, bool accumulate, cudaStream_t stream) {
  const char* what = "grouped_gemm_tn";
  gemm_detail::check_group_offsets(what, groups, host_offsets, 1);
  GroupLanes lanes(blas.impl(), stream);
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t begin = host_offsets[g], rows = host_offsets[g + 1] - begin;
    if (rows == 0 && accumulate) continue;  // adds nothing; without accumulate dW_g becomes 0
    const auto [lane_stream, lane] = lanes.next();
    // dW_g[N,K] (+)= dy_g[rows,N]^T · x_g[rows,K]
    dense_gemm(blas, true, false, n, k, rows, 1.0f, offset_ptr(dy, begin * n, ab_type), n, 0,
               offset_ptr(x, begin * k, ab_type), k, 0, ab_type, accumulate ? 1.0f : 0.0f,
               offset_ptr(dw, g * n * k, c_type), k, 0, c_type, 1, VaryingDim::K, lane_stream,
               what, lane);
  }
}

}  // namespace frugal::cuda

#endif  // FRUGAL_HAVE_CUDA
