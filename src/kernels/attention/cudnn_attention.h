// Which kernels run the CUDA flash attention (flash_attention_cuda.h), and the cuDNN path behind
// it. Backends: frugal's own kernels (flash_attention_simt.cu, sm90_flash_{fwd,bwd}_bf16.cu) and
// cuDNN's fused flash-attention engine, reached through cuDNN's backend graph API
// (cudnn_attention.cc; built only when CMake finds cuDNN, which defines FRUGAL_HAVE_CUDNN).
// Same math and layouts either way:
//   q, k [batch, seq, heads, qk_dim]; v, out, dout [batch, seq, heads, v_dim] (bf16);
//   lse [batch, heads, seq] fp32, natural log of sum_j exp(scale q_i.k_j) over j <= i (cuDNN's
//   softmax "Stats" are exactly this: the row max plus the log of the row sum of exp(s - max)).
//
// The choice, per call, for bf16 (fp32 always runs frugal's kernels):
//   automatic (the default): cuDNN when this build has it and the call fits it (16-byte aligned
//     tensors, head dims multiples of 8 up to 256), else frugal's. cuDNN < 9.16 runs the backward
//     only for seq % 128 == 0: other lengths (the MTP module's seq - 1) run on copies padded with
//     zero rows, which is exact under the causal mask (cudnn_attention.cc).
//   cudnn: the same, but a call that cannot take cuDNN says why on stderr (once per reason).
//   own: frugal's kernels only.
// The preference comes from the environment variable FRUGAL_ATTENTION=auto|own|cudnn at first
// use (a bad value throws frugal::Error), or from set_attention_backend, which overrides it.
//
// Failure is never fatal: if cuDNN rejects a graph (no engine for it) or fails to build or run a
// plan, the reason (the failing descriptor, cuDNN's status and message) goes to stderr once per
// shape, and that shape runs frugal's kernels from then on.
//
// cuDNN's backward accumulates dq with atomics, so unlike frugal's kernels it is not bitwise
// reproducible from run to run; its forward is. Plans are built once per shape and device (the
// first call of a shape pays for cuDNN's engine compilation) and cached; each (device, stream)
// has its own cuDNN scratch (engine workspace; for the backward an fp32 dq accumulator
// [batch, heads, seq, qk_dim], the dout.out row sums and any padded copies), cudaMalloc'ed and
// grown as needed.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/attention/flash_attention_launch.h"

namespace frugal::cuda {

enum class AttentionBackend { automatic, own, cudnn };

// Sets the preference for every thread (overrides FRUGAL_ATTENTION).
void set_attention_backend(AttentionBackend backend);
// The preference in force (reads FRUGAL_ATTENTION on first use; throws frugal::Error on a bad
// value).
AttentionBackend attention_backend();
// "auto", "own" or "cudnn".
const char* attention_backend_name(AttentionBackend backend);

// The kernels that ran the calling thread's last flash_attention_fwd (backward = false) or
// flash_attention_bwd (backward = true): "cudnn", "sm90" or "simt"; "none" before the first call.
const char* flash_attention_backend(bool backward);

// cudnnGetVersion() (e.g. 91400 for 9.14.0) when this build has the cuDNN path, else 0.
int64_t cudnn_attention_version();

namespace flash {

// Internal to kernels/attention (the dispatch in flash_attention_cuda.cu). Each runs the call on
// cuDNN and returns true, or returns false having written nothing (the preference is own, the
// call does not fit cuDNN, this build has no cuDNN, or cuDNN refused; see above), so that the
// caller runs its own kernels. Arguments are checked by the caller.
bool cudnn_fwd_bf16(__nv_bfloat16* out, float* lse, const __nv_bfloat16* q, const __nv_bfloat16* k,
                    const __nv_bfloat16* v, const AttentionShape& shape, cudaStream_t stream);
// dq, dk, dv assigned. cuDNN computes the row sums of dout * out itself (the caller's delta
// workspace is not used on this path).
bool cudnn_bwd_bf16(__nv_bfloat16* dq, __nv_bfloat16* dk, __nv_bfloat16* dv,
                    const __nv_bfloat16* dout, const __nv_bfloat16* out, const float* lse,
                    const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                    const AttentionShape& shape, cudaStream_t stream);

// Records which kernels ran (read back by flash_attention_backend). `name` must outlive the
// thread (a string literal).
void record_backend(bool backward, const char* name);

}  // namespace flash
}  // namespace frugal::cuda
