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
#include <atomic>
#include <compare>
#include <cstdio>
#include <cstdlib>
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

#include "kernels/attention/cudnn_sdpa_graph.h"
#include "kernels/attention/sequence_padding_cuda.h"
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

using namespace cudnn_sdpa;

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

// The sequence lengths cuDNN's backward takes before 9.16 (others are padded to one).
constexpr int64_t kCudnnBwdSeqMultiple = 128;

bool aligned_16(std::initializer_list<const void*> pointers) {
  for (const void* p : pointers)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// Why this call cannot go to cuDNN, or nullptr.
const char* unfit_reason(const flash::AttentionShape& shape, bool aligned) {
  if (!aligned) return "a tensor is not 16-byte aligned";
  if (shape.qk_dim % 8 != 0 || shape.v_dim % 8 != 0 || shape.qk_dim > 256 || shape.v_dim > 256)
    return "head dims must be multiples of 8, at most 256";
  return nullptr;
}

// The preference allows cuDNN and the call fits it; says why not under FRUGAL_ATTENTION=cudnn.
bool wants_cudnn(const flash::AttentionShape& shape, bool backward, bool aligned) {
  const AttentionBackend preference = attention_backend();
  if (preference == AttentionBackend::own) return false;
  const char* reason = unfit_reason(shape, aligned);
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
  // cuDNN before 9.16 runs the backward only for seq % 128 == 0. Other lengths run on copies
  // padded with zero rows to the next multiple of 128 (q, k, v, out, dout and lse zero there), which
  // is exact under the causal mask: a padded key is seen only by padded queries, and a padded
  // query (dout = 0, so dP = 0 and the row sum of dout * out is 0) has dS = P * (dP - 0) = 0 with
  // P = exp(0 - 0) finite, so it adds nothing to dq, dk, dv of the real rows.
  const bool pad = shape.seq % kCudnnBwdSeqMultiple != 0 && runtime_version() < 91600;
  AttentionShape run = shape;
  if (pad) run.seq = (shape.seq + kCudnnBwdSeqMultiple - 1) / kCudnnBwdSeqMultiple * kCudnnBwdSeqMultiple;
  const ShapeKey key{true, run.batch, run.seq, run.heads, run.qk_dim, run.v_dim};
  Plan* plan = find_plan(*device, key, run);
  if (plan == nullptr) return false;
  // Scratch: [padded copies, if any][dq accumulator fp32 (b h s dqk)][row sums fp32 (b h s)]
  // [engine workspace].
  const size_t tokens = static_cast<size_t>(run.batch * run.seq * run.heads);
  const size_t rows = static_cast<size_t>(run.batch * run.heads * run.seq);
  const size_t qk_bytes = round_up_256(tokens * static_cast<size_t>(run.qk_dim) * sizeof(bf16));
  const size_t v_bytes = round_up_256(tokens * static_cast<size_t>(run.v_dim) * sizeof(bf16));
  const size_t lse_bytes = round_up_256(rows * 4);
  const size_t padded_bytes = pad ? 4 * qk_bytes + 5 * v_bytes + lse_bytes : 0;
  const size_t accum_bytes = round_up_256(rows * static_cast<size_t>(run.qk_dim) * 4);
  const size_t row_sum_bytes = round_up_256(rows * 4);
  void* scratch = nullptr;
  if (!stream_scratch(device_index, stream,
                      padded_bytes + accum_bytes + row_sum_bytes +
                          static_cast<size_t>(plan->workspace_bytes),
                      &scratch))
    return false;
  char* base = static_cast<char*>(scratch);
  void* dq_accum = base + padded_bytes;
  void* row_sums = base + padded_bytes + accum_bytes;
  void* workspace = plan->workspace_bytes > 0
                        ? base + padded_bytes + accum_bytes + row_sum_bytes
                        : nullptr;
  std::vector<void*> tensors = {mutable_pointer(q),   mutable_pointer(k),    mutable_pointer(v),
                                mutable_pointer(out), mutable_pointer(dout), mutable_pointer(lse),
                                dq,                   dk,                    dv};
  // Per tensor, the same order: padded size, bytes per token ([batch, seq, heads, dim]; lse is
  // [batch, heads, seq] and copied with 4 bytes per row).
  const int64_t qk_token = shape.heads * shape.qk_dim * 2, v_token = shape.heads * shape.v_dim * 2;
  const size_t sizes[] = {qk_bytes, qk_bytes, v_bytes, v_bytes, v_bytes, lse_bytes,
                          qk_bytes, qk_bytes, v_bytes};
  const int64_t token_bytes[] = {qk_token, qk_token, v_token, v_token, v_token, 4,
                                 qk_token, qk_token, v_token};
  if (pad) {
    char* next = base;
    for (size_t i = 0; i < tensors.size(); ++i) {
      void* padded = next;
      next += sizes[i];
      if (i < 6)  // the inputs; dq, dk, dv are outputs
        copy_padded_rows(padded, run.seq, tensors[i], shape.seq,
                         i == 5 ? shape.batch * shape.heads : shape.batch, token_bytes[i], stream);
      tensors[i] = padded;
    }
  }
  // cuDNN zeroes the accumulator itself from 9.6 on (as its front end relies on).
  if (runtime_version() < 90600)
    FRUGAL_CUDA_CHECK(cudaMemsetAsync(dq_accum, 0, accum_bytes, stream));
  float scale = run.scale;
  float mask_value = std::numeric_limits<float>::lowest();
  float one = 1.0f;
  const std::vector<int64_t> uids = {kUidQ,  kUidK,      kUidV,        kUidOut,  kUidDout,
                                     kUidLse, kUidDq,    kUidDk,       kUidDv,   kUidRowSums,
                                     kUidDqAccum, kUidScale, kUidMaskValue, kUidOne};
  std::vector<void*> pointers = tensors;
  pointers.insert(pointers.end(), {row_sums, dq_accum, &scale, &mask_value, &one});
  if (!run_plan(*device, key, *plan, stream, uids, pointers, workspace,
                "cuDNN attention backward " + shape_text(run)))
    return false;
  if (pad) {  // the real rows of dq, dk, dv
    void* results[] = {dq, dk, dv};
    for (int i = 0; i < 3; ++i)
      copy_padded_rows(results[i], shape.seq, tensors[6 + i], run.seq, shape.batch,
                       token_bytes[6 + i], stream);
  }
  return true;
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
