// CUDA flash attention (kernels/attention/flash_attention_cuda.h) against the CPU reference
// cpu::attention_fwd/bwd run in double on the same inputs (bf16 cases: the inputs rounded to bf16
// first, so both sides see identical numbers), plus the log-sum-exp computed here in double.
//   fp32 (the SIMT kernels): out, lse, dq, dk, dv within 1e-5 of max |ref| per tensor.
//   bf16: within 1e-2 of max |ref| (lse within 1e-4): the tensor-core kernels at qk 192 / v 128
//     (seq 1, 63, 128, 300, 1024: inside one tile, odd tails, exact tiles, several blocks), and
//     the bf16 SIMT fallback (pointers off the 16-byte boundary, or other head dims).
// Every bf16 case runs twice: with the backend preference "own" (frugal's kernels; the test checks
// that the expected ones ran) and "cudnn" (cuDNN's fused engine where the call fits it, else
// frugal's kernels: cudnn_attention.h); same inputs, same tolerances. CudnnRunsTrainingShapes
// checks that a cuDNN build really runs the training dims (qk 192, v 128) on cuDNN.
// Every output is poisoned with 0xFF bytes (NaN in fp32 and bf16) before each run, so an element
// left unwritten shows as "unwritten". The forward and backward each run twice and must give the
// same bits (no order-dependent accumulation); cuDNN's backward, which accumulates dq with
// atomics, must instead be as close to the reference on its second run as on its first.
// Each check prints "CHECK | path | shape | tensor | max err | worst element | ok/FAIL", the path
// naming the kernels that ran ("bf16 cudnn", "bf16 sm90", ...); the worst element is given as
// (batch, position, head, column) so a tile-boundary bug shows where it is. cuDNN's reasons for
// refusing a call go to stderr ("frugal: cuDNN attention: ...").
// FRUGAL_TEST_SEED=<n> changes the random inputs.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "core/cuda_check.h"
#include "core/dtype.h"
#include "core/error.h"
#include "kernels/attention/attention.h"
#include "kernels/attention/cudnn_attention.h"
#include "kernels/attention/flash_attention_cuda.h"
#include "cuda_test_util.h"

namespace frugal {
namespace {

using bf16 = __nv_bfloat16;

using testing::case_seed;
using testing::DeviceArray;
using testing::random_normal;

struct Case {
  int64_t batch, seq, heads, qk_dim, v_dim;
  bool misaligned = false;  // device pointers one element past the allocation
  float q_stddev = 1.0f;    // larger: sharper softmax rows
  float scale = 0.0f;       // 0: 1/sqrt(qk_dim)
  float softmax_scale() const {
    return scale > 0 ? scale : 1.0f / std::sqrt(static_cast<float>(qk_dim));
  }
  int64_t qk_size() const { return batch * seq * heads * qk_dim; }
  int64_t v_size() const { return batch * seq * heads * v_dim; }
  int64_t lse_size() const { return batch * heads * seq; }
  std::string text() const {
    return "B" + std::to_string(batch) + " S" + std::to_string(seq) + " H" +
           std::to_string(heads) + " " + std::to_string(qk_dim) + "/" + std::to_string(v_dim) +
           (misaligned ? " +1el" : "") + (q_stddev != 1.0f ? " sharp" : "");
  }
};

template <class T>
T from_float(float x);
template <>
float from_float<float>(float x) {
  return x;
}
template <>
bf16 from_float<bf16>(float x) {
  __nv_bfloat16_raw raw;
  raw.x = float_to_bf16_bits(x);
  return bf16(raw);
}
double to_double(float x) { return x; }
double to_double(bf16 x) { return bf16_bits_to_float(static_cast<__nv_bfloat16_raw>(x).x); }

template <class T>
std::vector<T> convert(const std::vector<float>& x) {
  std::vector<T> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = from_float<T>(x[i]);
  return out;
}
template <class T>
std::vector<double> widen(const std::vector<T>& x) {
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = to_double(x[i]);
  return out;
}

struct Reference {
  std::vector<double> out, lse, dq, dk, dv;
};

// The CPU reference in double, and lse[b, h, i] = log sum_{j <= i} exp(scale q_i . k_j).
Reference reference(const Case& c, const std::vector<double>& q, const std::vector<double>& k,
                    const std::vector<double>& v, const std::vector<double>& dout) {
  Reference ref;
  const double scale = c.softmax_scale();
  std::vector<double> probs(static_cast<size_t>(c.batch * c.heads * c.seq * c.seq));
  ref.out.resize(c.v_size());
  cpu::attention_fwd<double>(ref.out.data(), probs.data(), q.data(), k.data(), v.data(), c.batch,
                             c.seq, c.heads, c.qk_dim, c.v_dim, scale);
  ref.dq.resize(c.qk_size());
  ref.dk.resize(c.qk_size());
  ref.dv.resize(c.v_size());
  cpu::attention_bwd<double>(ref.dq.data(), ref.dk.data(), ref.dv.data(), dout.data(),
                             probs.data(), q.data(), k.data(), v.data(), c.batch, c.seq, c.heads,
                             c.qk_dim, c.v_dim, scale);
  ref.lse.resize(c.lse_size());
  std::vector<double> scores(c.seq);
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t h = 0; h < c.heads; ++h)
      for (int64_t i = 0; i < c.seq; ++i) {
        const double* qi = q.data() + ((b * c.seq + i) * c.heads + h) * c.qk_dim;
        double max_score = -INFINITY;
        for (int64_t j = 0; j <= i; ++j) {
          const double* kj = k.data() + ((b * c.seq + j) * c.heads + h) * c.qk_dim;
          double dot = 0;
          for (int64_t d = 0; d < c.qk_dim; ++d) dot += qi[d] * kj[d];
          scores[j] = scale * dot;
          max_score = std::max(max_score, scores[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j <= i; ++j) sum += std::exp(scores[j] - max_score);
        ref.lse[(b * c.heads + h) * c.seq + i] = max_score + std::log(sum);
      }
  return ref;
}

// Layout of a compared tensor, to name the worst element.
enum class Layout { Tokens, Lse };  // [batch, seq, heads, dim] or [batch, heads, seq]

std::string element_text(const Case& c, Layout layout, int64_t dim, int64_t index) {
  if (layout == Layout::Lse) {
    const int64_t i = index % c.seq, bh = index / c.seq;
    return "(b" + std::to_string(bh / c.heads) + " pos" + std::to_string(i) + " h" +
           std::to_string(bh % c.heads) + ")";
  }
  const int64_t col = index % dim, row = index / dim;
  const int64_t h = row % c.heads, bi = row / c.heads;
  return "(b" + std::to_string(bi / c.seq) + " pos" + std::to_string(bi % c.seq) + " h" +
         std::to_string(h) + " col" + std::to_string(col) + ")";
}

// max |gpu - ref| / max(|ref|) (at least `floor`), counting non-finite GPU values apart.
void expect_close(const std::string& path, const Case& c, const char* tensor, Layout layout,
                  int64_t dim, const std::vector<double>& gpu, const std::vector<double>& ref,
                  double tolerance, double floor = 0.0) {
  ASSERT_EQ(gpu.size(), ref.size());
  double scale = floor;
  for (double r : ref) scale = std::max(scale, std::fabs(r));
  if (scale == 0) scale = 1;
  double max_error = 0;
  int64_t worst = -1, not_finite = 0, first_not_finite = -1, over = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(gpu[i])) {
      if (not_finite++ == 0) first_not_finite = static_cast<int64_t>(i);
      continue;
    }
    const double error = std::fabs(gpu[i] - ref[i]) / scale;
    if (error > tolerance) ++over;
    if (error > max_error) {
      max_error = error;
      worst = static_cast<int64_t>(i);
    }
  }
  const bool ok = not_finite == 0 && max_error <= tolerance;
  std::string where = worst >= 0 ? element_text(c, layout, dim, worst) : "-";
  if (worst >= 0) {
    char values[96];
    std::snprintf(values, sizeof(values), " gpu %.6g ref %.6g", gpu[worst], ref[worst]);
    where += values;
  }
  std::printf("CHECK | %-10s | %-28s | %-4s | max rel err %9.2e | %s | %s\n", path.c_str(),
              c.text().c_str(), tensor, max_error, where.c_str(), ok ? "ok" : "FAIL");
  std::fflush(stdout);
  EXPECT_EQ(not_finite, 0) << path << " " << c.text() << " " << tensor << ": " << not_finite
                           << " elements unwritten or not finite, the first at "
                           << element_text(c, layout, dim, first_not_finite);
  EXPECT_LE(max_error, tolerance) << path << " " << c.text() << " " << tensor << ": " << over
                                  << " of " << ref.size() << " elements over tolerance; worst "
                                  << where;
}

template <class T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

struct Tolerances {
  double values, lse;
};

// The kernels that ran a case's forward and backward (cuda::flash_attention_backend).
struct Ran {
  std::string forward, backward;
};

// CudaTest's stream; every test leaves the attention backend on automatic.
class FlashAttentionCuda : public testing::CudaTest {
 protected:
  void TearDown() override {
    cuda::set_attention_backend(cuda::AttentionBackend::automatic);
    CudaTest::TearDown();
  }

  // Runs `c` under the backend preference `backend`; `dtype` ("fp32", "bf16") also seeds the inputs
  // (the same for every backend). `ran` (optional) receives the kernels that ran.
  template <class T>
  void run_case(const Case& c, const std::string& dtype, Tolerances tolerance,
                cuda::AttentionBackend backend, Ran* ran = nullptr);
};

// The kernels frugal runs for `c` without cuDNN (flash_attention_cuda.cu).
template <class T>
std::string own_kernels(const Case& c) {
  const bool tensor_cores = std::is_same_v<T, bf16> && c.qk_dim == 192 && c.v_dim == 128 &&
                            !c.misaligned;
  return tensor_cores ? "sm90" : "simt";
}

// The kernels that ran are frugal's expected ones, or (preference cudnn, bf16) cuDNN.
template <class T>
void expect_kernels(const Case& c, cuda::AttentionBackend backend, const std::string& ran,
                    const char* pass) {
  const std::string own = own_kernels<T>(c);
  const bool cudnn_allowed = std::is_same_v<T, bf16> && backend != cuda::AttentionBackend::own;
  EXPECT_TRUE(ran == own || (cudnn_allowed && ran == "cudnn"))
      << c.text() << " " << pass << " under preference "
      << cuda::attention_backend_name(backend) << " ran \"" << ran << "\", expected \"" << own
      << "\"" << (cudnn_allowed ? " or \"cudnn\"" : "");
}

template <class T>
void FlashAttentionCuda::run_case(const Case& c, const std::string& dtype, Tolerances tolerance,
                                  cuda::AttentionBackend backend, Ran* ran) {
  cuda::set_attention_backend(backend);
  const std::string label = dtype + c.text();
  // Inputs in T (bf16: rounded), the reference on exactly those values.
  const std::vector<T> q = convert<T>(random_normal(c.qk_size(), case_seed(label, 1), 0.0f, c.q_stddev));
  const std::vector<T> k = convert<T>(random_normal(c.qk_size(), case_seed(label, 2), 0.0f, 1.0f));
  const std::vector<T> v = convert<T>(random_normal(c.v_size(), case_seed(label, 3), 0.0f, 1.0f));
  const std::vector<T> dout = convert<T>(random_normal(c.v_size(), case_seed(label, 4), 0.0f, 1.0f));
  const Reference ref = reference(c, widen(q), widen(k), widen(v), widen(dout));

  DeviceArray<T> q_d(c.qk_size(), c.misaligned), k_d(c.qk_size(), c.misaligned),
      v_d(c.v_size(), c.misaligned), dout_d(c.v_size(), c.misaligned);
  DeviceArray<T> out_d(c.v_size(), c.misaligned), dq_d(c.qk_size(), c.misaligned),
      dk_d(c.qk_size(), c.misaligned), dv_d(c.v_size(), c.misaligned);
  DeviceArray<float> lse_d(c.lse_size(), false);
  q_d.upload(q);
  k_d.upload(k);
  v_d.upload(v);
  dout_d.upload(dout);
  const size_t workspace_bytes =
      cuda::flash_attention_bwd_workspace_bytes<T>(c.batch, c.seq, c.heads, c.qk_dim, c.v_dim);
  ASSERT_GE(workspace_bytes, static_cast<size_t>(c.lse_size()) * sizeof(float));
  cuda::DeviceBuffer<uint8_t> workspace(workspace_bytes);
  const float scale = c.softmax_scale();

  auto forward = [&] {
    out_d.poison();
    lse_d.poison();
    cuda::flash_attention_fwd<T>(out_d.get(), lse_d.get(), q_d.get(), k_d.get(), v_d.get(),
                                 c.batch, c.seq, c.heads, c.qk_dim, c.v_dim, scale, stream_);
    sync();
  };
  auto backward = [&] {
    dq_d.poison();
    dk_d.poison();
    dv_d.poison();
    workspace.fill_bytes(0xFF);
    cuda::flash_attention_bwd<T>(dq_d.get(), dk_d.get(), dv_d.get(), dout_d.get(), out_d.get(),
                                 lse_d.get(), q_d.get(), k_d.get(), v_d.get(), c.batch, c.seq,
                                 c.heads, c.qk_dim, c.v_dim, scale, workspace.data(), stream_);
    sync();
  };

  forward();
  const std::string forward_kernels = cuda::flash_attention_backend(false);
  const std::string forward_path = dtype + " " + forward_kernels;
  expect_kernels<T>(c, backend, forward_kernels, "forward");
  const std::vector<T> out = out_d.download();
  const std::vector<float> lse = lse_d.download();
  expect_close(forward_path, c, "out", Layout::Tokens, c.v_dim, widen(out), ref.out,
               tolerance.values);
  expect_close(forward_path, c, "lse", Layout::Lse, 1, widen(lse), ref.lse, tolerance.lse, 1.0);

  backward();
  const std::string backward_kernels = cuda::flash_attention_backend(true);
  const std::string backward_path = dtype + " " + backward_kernels;
  expect_kernels<T>(c, backend, backward_kernels, "backward");
  if (ran != nullptr) *ran = Ran{forward_kernels, backward_kernels};
  const std::vector<T> dq = dq_d.download(), dk = dk_d.download(), dv = dv_d.download();
  expect_close(backward_path, c, "dq", Layout::Tokens, c.qk_dim, widen(dq), ref.dq,
               tolerance.values);
  expect_close(backward_path, c, "dk", Layout::Tokens, c.qk_dim, widen(dk), ref.dk,
               tolerance.values);
  expect_close(backward_path, c, "dv", Layout::Tokens, c.v_dim, widen(dv), ref.dv,
               tolerance.values);

  // Run both again: the same bits (the backward only for frugal's kernels).
  forward();
  const bool same_forward =
      bitwise_equal(out, out_d.download()) && bitwise_equal(lse, lse_d.download());
  std::printf("CHECK | %-10s | %-28s | forward determinism (two runs bitwise equal) | %s\n",
              forward_path.c_str(), c.text().c_str(), same_forward ? "ok" : "FAIL");
  EXPECT_TRUE(same_forward) << forward_path << " " << c.text()
                            << ": out or lse differs between two runs";
  if (backward_kernels == "cudnn") {
    // Not bitwise (cuDNN accumulates dq with atomics), but a second run, on reused scratch, must
    // be as close as the first (a dq accumulator left unzeroed would double dq).
    backward();
    const std::string again = backward_path + " again";
    expect_close(again, c, "dq", Layout::Tokens, c.qk_dim, widen(dq_d.download()), ref.dq,
                 tolerance.values);
    expect_close(again, c, "dk", Layout::Tokens, c.qk_dim, widen(dk_d.download()), ref.dk,
                 tolerance.values);
    expect_close(again, c, "dv", Layout::Tokens, c.v_dim, widen(dv_d.download()), ref.dv,
                 tolerance.values);
    return;
  }
  backward();
  const bool same = bitwise_equal(dq, dq_d.download()) && bitwise_equal(dk, dk_d.download()) &&
                    bitwise_equal(dv, dv_d.download());
  std::printf("CHECK | %-10s | %-28s | backward determinism (two runs bitwise equal) | %s\n",
              backward_path.c_str(), c.text().c_str(), same ? "ok" : "FAIL");
  std::fflush(stdout);
  EXPECT_TRUE(same) << backward_path << " " << c.text() << ": dq/dk/dv differ between two runs";
}

constexpr Tolerances kFp32Tolerance{1e-5, 1e-5};
constexpr Tolerances kBf16Tolerance{1e-2, 1e-4};

TEST_F(FlashAttentionCuda, Fp32MatchesCpu) {
  const std::vector<Case> cases = {
      {2, 1, 1, 24, 16},                                   // a single position
      {2, 7, 2, 24, 16},                                   // tiny.toml dims
      {2, 65, 3, 48, 32},                                  // one past a tile
      {2, 200, 2, 6, 4},                                   // tests' tiny model dims
      {2, 33, 3, 12, 8, false, 3.0f, 0.7f},                // sharp rows, explicit scale
      {2, 130, 1, 17, 5},                                  // dims not multiples of 8
      {2, 65, 2, 192, 128},                                // V3 training dims
      {2, 40, 1, 256, 256},                                // the largest dims
      {2, 31, 2, 24, 16, true},                            // pointers off the 16-byte boundary
  };
  for (const Case& c : cases)
    run_case<float>(c, "fp32", kFp32Tolerance, cuda::AttentionBackend::own);
  // fp32 never goes to cuDNN, whatever the preference.
  run_case<float>(cases[1], "fp32", kFp32Tolerance, cuda::AttentionBackend::cudnn);
}

constexpr cuda::AttentionBackend kBothBackends[] = {cuda::AttentionBackend::own,
                                                    cuda::AttentionBackend::cudnn};

TEST_F(FlashAttentionCuda, Bf16TensorCoresMatchCpu) {
  const std::vector<Case> cases = {
      {2, 1, 2, 192, 128},   {2, 63, 2, 192, 128},  {2, 128, 2, 192, 128},
      {2, 300, 2, 192, 128}, {2, 1024, 2, 192, 128}, {2, 129, 3, 192, 128, false, 3.0f},
  };
  for (cuda::AttentionBackend backend : kBothBackends)
    for (const Case& c : cases) run_case<bf16>(c, "bf16", kBf16Tolerance, backend);
}

TEST_F(FlashAttentionCuda, Bf16FallbackMatchesCpu) {
  const std::vector<Case> cases = {
      {2, 300, 2, 192, 128, true},  // misaligned: the SIMT kernels on the sm90 dims
      {2, 100, 3, 24, 16},          // dims the tensor-core kernels do not take
      {2, 65, 2, 48, 32},
  };
  for (cuda::AttentionBackend backend : kBothBackends)
    for (const Case& c : cases) run_case<bf16>(c, "bf16", kBf16Tolerance, backend);
}

// With cuDNN in the build, the training dims must run on cuDNN both ways, also at seq % 128 != 0
// (the MTP module's seq - 1: before cuDNN 9.16 its backward runs on zero-padded copies) (a
// failure here means cuDNN refused the graph: its reason is on stderr). Also the preference "own"
// keeps them off cuDNN, and the backend names read back as set.
TEST_F(FlashAttentionCuda, CudnnRunsTrainingShapes) {
  cuda::set_attention_backend(cuda::AttentionBackend::own);
  EXPECT_EQ(cuda::attention_backend(), cuda::AttentionBackend::own);
  EXPECT_STREQ(cuda::attention_backend_name(cuda::attention_backend()), "own");
#ifndef FRUGAL_HAVE_CUDNN
  EXPECT_EQ(cuda::cudnn_attention_version(), 0);
  GTEST_SKIP() << "built without cuDNN";
#else
  std::printf("cuDNN version %lld\n", static_cast<long long>(cuda::cudnn_attention_version()));
  EXPECT_GE(cuda::cudnn_attention_version(), 90000);
  const std::vector<Case> cases = {{2, 128, 2, 192, 128}, {1, 1024, 3, 192, 128},
                                   {2, 256, 2, 192, 128, false, 3.0f}, {2, 300, 2, 192, 128},
                                   {1, 1023, 2, 192, 128}};
  for (const Case& c : cases) {
    Ran ran;
    run_case<bf16>(c, "bf16", kBf16Tolerance, cuda::AttentionBackend::cudnn, &ran);
    EXPECT_EQ(ran.forward, "cudnn") << c.text() << ": the forward did not run on cuDNN "
                                    << "(see \"frugal: cuDNN attention:\" on stderr)";
    EXPECT_EQ(ran.backward, "cudnn") << c.text() << ": the backward did not run on cuDNN "
                                     << "(see \"frugal: cuDNN attention:\" on stderr)";
  }
  Ran ran;
  run_case<bf16>(cases[0], "bf16", kBf16Tolerance, cuda::AttentionBackend::own, &ran);
  EXPECT_EQ(ran.forward, "sm90");
  EXPECT_EQ(ran.backward, "sm90");
#endif
}

TEST_F(FlashAttentionCuda, RejectsBadArguments) {
  cuda::DeviceBuffer<float> buffer(64);
  float* p = buffer.data();
  auto fwd = [&](int64_t seq, int64_t qk_dim, int64_t v_dim, float scale) {
    cuda::flash_attention_fwd<float>(p, p, p, p, p, 1, seq, 1, qk_dim, v_dim, scale, stream_);
  };
  EXPECT_THROW(fwd(4, 0, 4, 0.5f), Error);
  EXPECT_THROW(fwd(4, 257, 4, 0.5f), Error);
  EXPECT_THROW(fwd(4, 4, 300, 0.5f), Error);
  EXPECT_THROW(fwd(-1, 4, 4, 0.5f), Error);
  EXPECT_THROW(fwd(4, 4, 4, 0.0f), Error);
  EXPECT_THROW(fwd(4, 4, 4, NAN), Error);
  EXPECT_THROW(cuda::flash_attention_fwd<float>(nullptr, p, p, p, p, 1, 4, 1, 4, 4, 0.5f, stream_),
               Error);
  EXPECT_THROW(cuda::flash_attention_bwd<float>(p, p, p, p, p, p, p, p, p, 1, 4, 1, 4, 4, 0.5f,
                                                nullptr, stream_),
               Error);
  EXPECT_THROW(cuda::flash_attention_bwd_workspace_bytes<bf16>(1, 4, 1, 0, 4), Error);
  // Empty shapes do nothing, even with null pointers.
  EXPECT_NO_THROW(cuda::flash_attention_fwd<bf16>(nullptr, nullptr, nullptr, nullptr, nullptr, 2,
                                                  0, 2, 192, 128, 0.1f, stream_));
  EXPECT_EQ(cuda::flash_attention_bwd_workspace_bytes<bf16>(2, 0, 2, 192, 128), 0u);
  sync();
}

}  // namespace
}  // namespace frugal
