// Expert parallelism on the CPU (expert_parallel.h): dispatch, held experts per source, combine.
#include "parallel/expert_parallel.h"

#include <unistd.h>

#include <algorithm>
#include <climits>
#include <string>
#include <type_traits>

#include "core/error.h"

namespace frugal {
namespace {

template <class T>
constexpr CommType comm_type_of() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);
  return std::is_same_v<T, float> ? CommType::F32 : CommType::F64;
}

// FNV-1a of this host's name: equal on ranks of one node.
int64_t host_key() {
  char name[HOST_NAME_MAX + 1] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return 0;
  uint64_t h = 1469598103934665603ull;
  for (const char* c = name; *c; ++c) h = (h ^ static_cast<unsigned char>(*c)) * 1099511628211ull;
  return static_cast<int64_t>(h >> 1);
}

}  // namespace

ExpertShard expert_shard(int64_t n_experts, int ep_size, int ep_rank) {
  FRUGAL_CHECK(ep_size >= 1 && ep_rank >= 0 && ep_rank < ep_size,
               "expert parallelism: rank {} outside an EP group of {}", ep_rank, ep_size);
  FRUGAL_CHECK(n_experts % ep_size == 0,
               "expert parallelism: {} routed experts do not split evenly over {} EP ranks",
               n_experts, ep_size);
  const int64_t per_rank = n_experts / ep_size;
  return ExpertShard{ep_rank * per_rank, per_rank};
}

template <class T>
ExpertParallel<T>::ExpertParallel(Communicator& ep, std::vector<int> node_of_rank)
    : ep_(ep), node_of_rank_(std::move(node_of_rank)) {
  const int P = ep_.size();
  if (node_of_rank_.empty()) {
    std::vector<int64_t> keys(static_cast<size_t>(P));
    const int64_t mine = host_key();
    ep_.all_gather(keys.data(), &mine, 1, CommType::I64);
    // Node index = order of first appearance of the host.
    std::vector<int64_t> hosts;
    for (int r = 0; r < P; ++r) {
      auto it = std::find(hosts.begin(), hosts.end(), keys[r]);
      if (it == hosts.end()) it = hosts.insert(hosts.end(), keys[r]);
      node_of_rank_.push_back(static_cast<int>(it - hosts.begin()));
    }
  }
  FRUGAL_CHECK(static_cast<int>(node_of_rank_.size()) == P,
               "expert parallelism: {} node indices for an EP group of {} ranks",
               node_of_rank_.size(), P);
  std::vector<int> distinct = node_of_rank_;
  std::sort(distinct.begin(), distinct.end());
  nodes_ = static_cast<int>(std::unique(distinct.begin(), distinct.end()) - distinct.begin());
}

template <class T>
void ExpertParallel<T>::attach(MoE<T>& moe) {
  const int P = ep_.size();
  const int64_t E = moe.n_experts();
  const ExpertShard shard = expert_shard(E, P, ep_.rank());
  FRUGAL_CHECK(moe.first_expert() == shard.first && moe.local_experts() == shard.count,
               "{}: holds experts [{}, {}) but EP rank {} of {} owns [{}, {})", moe.prefix(),
               moe.first_expert(), moe.first_expert() + moe.local_experts(), ep_.rank(), P,
               shard.first, shard.first + shard.count);
  if (nodes_ > 1) {
    const cpu::RouterParams& router = moe.router();
    const int64_t per_group = E / router.n_group, per_rank = E / P;
    for (int64_t g = 0; g < router.n_group; ++g) {
      const int first_node = node_of_rank_[static_cast<size_t>(g * per_group / per_rank)];
      for (int64_t e = g * per_group; e < (g + 1) * per_group; ++e)
        FRUGAL_CHECK(node_of_rank_[static_cast<size_t>(e / per_rank)] == first_node,
                     "{}: routing group {} (experts {}..{}) spans nodes {} and {} of the "
                     "expert-parallel group; node-limited routing (spec §2.4: a token reaches at "
                     "most model.topk_group = {} nodes) needs every routing group on one node: "
                     "make model.n_group a multiple of the {} nodes the group spans",
                     moe.prefix(), g, g * per_group, (g + 1) * per_group - 1, first_node,
                     node_of_rank_[static_cast<size_t>(e / per_rank)], router.topk_group,
                     nodes_);
    }
  }
  moe.set_expert_runner(this);
}

template <class T>
typename ExpertParallel<T>::Counts ExpertParallel<T>::payload_counts(
    const MoE<T>& moe, const typename MoE<T>::Ctx& ctx) const {
  const int P = ep_.size();
  const int64_t L = moe.local_experts(), H = moe.hidden();
  const std::vector<int64_t>& off = ctx.expert_offsets;
  const std::vector<int64_t>& received = ctx.runner_layout;  // [source][held expert] rows
  Counts c;
  c.send.resize(static_cast<size_t>(P));
  c.recv.resize(static_cast<size_t>(P));
  for (int r = 0; r < P; ++r) {
    c.send[r] = (off[(r + 1) * L] - off[r * L]) * H;
    int64_t rows = 0;
    for (int64_t l = 0; l < L; ++l) rows += received[r * L + l];
    c.recv[r] = rows * H;
    c.recv_rows += rows;
  }
  return c;
}

template <class T>
void ExpertParallel<T>::check_node_limit(const MoE<T>& moe, const typename MoE<T>::Ctx& ctx) {
  const int64_t K = moe.router().top_k, L = moe.local_experts();
  std::vector<int> seen;
  for (int64_t t = 0; t < ctx.rows; ++t) {
    seen.clear();
    for (int64_t k = 0; k < K; ++k) {
      const int node = node_of_rank_[static_cast<size_t>(ctx.topk_idx[t * K + k] / L)];
      if (std::find(seen.begin(), seen.end(), node) == seen.end()) seen.push_back(node);
    }
    max_nodes_per_token_ = std::max<int64_t>(max_nodes_per_token_, static_cast<int64_t>(seen.size()));
  }
  if (nodes_ > 1)
    FRUGAL_CHECK(max_nodes_per_token_ <= moe.router().topk_group,
                 "{}: a token was routed to {} nodes, more than model.topk_group = {}",
                 moe.prefix(), max_nodes_per_token_, moe.router().topk_group);
}

template <class T>
void ExpertParallel<T>::forward(const MoE<T>& moe, typename MoE<T>::Ctx& ctx, const T* xp, T* out) {
  const int P = ep_.size(), me = ep_.rank();
  const int64_t E = moe.n_experts(), L = moe.local_experts(), H = moe.hidden();
  FRUGAL_CHECK(L * P == E && moe.first_expert() == me * L,
               "{}: holds experts [{}, {}), not EP rank {}'s share of {}", moe.prefix(),
               moe.first_expert(), moe.first_expert() + L, me, E);
  // Rows per expert in permuted (expert-major) order: destination r gets experts [r*L, (r+1)*L).
  std::vector<int64_t> send_rows(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) send_rows[e] = ctx.expert_offsets[e + 1] - ctx.expert_offsets[e];
  ctx.runner_layout.assign(static_cast<size_t>(P * L), 0);  // [source][held expert]
  const std::vector<int64_t> per_peer(static_cast<size_t>(P), L);
  ep_.all_to_all_v(ctx.runner_layout.data(), per_peer, send_rows.data(), per_peer, CommType::I64);

  const Counts c = payload_counts(moe, ctx);
  std::vector<T> x_recv(static_cast<size_t>(c.recv_rows * H)), y_recv(x_recv.size());  // [rows, H]
  ep_.all_to_all_v(x_recv.data(), c.recv, xp, c.send, comm_type_of<T>());
  ctx.experts.assign(static_cast<size_t>(P * L), typename MLP<T>::Ctx{});
  int64_t row = 0;
  for (int src = 0; src < P; ++src)
    for (int64_t l = 0; l < L; ++l) {
      const int64_t n = ctx.runner_layout[src * L + l];
      if (n > 0)
        moe.expert(me * L + l).forward(ctx.experts[src * L + l], x_recv.data() + row * H,
                                       y_recv.data() + row * H, n);
      row += n;
    }
  ep_.all_to_all_v(out, c.send, y_recv.data(), c.recv, comm_type_of<T>());  // combine

  for (int r = 0; r < P; ++r)
    if (r != me) {
      rows_sent_ += c.send[r] / H;
      rows_received_ += c.recv[r] / H;
    }
  check_node_limit(moe, ctx);
}

template <class T>
void ExpertParallel<T>::backward_input(const MoE<T>& moe, typename MoE<T>::Ctx& ctx,
                                       const T* d_out, T* dxp) {
  const int P = ep_.size(), me = ep_.rank();
  const int64_t L = moe.local_experts(), H = moe.hidden();
  FRUGAL_CHECK(static_cast<int64_t>(ctx.runner_layout.size()) == P * L &&
                   static_cast<int64_t>(ctx.experts.size()) == P * L,
               "{}: expert-parallel backward without its forward", moe.prefix());
  const Counts c = payload_counts(moe, ctx);
  // Backward of combine: the output gradients go to the experts' owners (a dispatch).
  std::vector<T> d_recv(static_cast<size_t>(c.recv_rows * H)), dx_recv(d_recv.size());
  ep_.all_to_all_v(d_recv.data(), c.recv, d_out, c.send, comm_type_of<T>());
  int64_t row = 0;
  for (int src = 0; src < P; ++src)
    for (int64_t l = 0; l < L; ++l) {
      const int64_t n = ctx.runner_layout[src * L + l];
      if (n > 0)
        moe.expert(me * L + l).backward_input(ctx.experts[src * L + l], d_recv.data() + row * H,
                                              dx_recv.data() + row * H);
      row += n;
    }
  // Backward of dispatch: the input gradients return to the tokens' ranks (a combine).
  ep_.all_to_all_v(dxp, c.send, dx_recv.data(), c.recv, comm_type_of<T>());
}

template <class T>
void ExpertParallel<T>::backward_weight(const MoE<T>& moe, typename MoE<T>::Ctx& ctx) {
  const int64_t L = moe.local_experts();
  // Source order: each held expert accumulates its sources' gradients as a single process
  // accumulates its micro-batches.
  for (size_t s = 0; s < ctx.experts.size(); ++s)
    if (ctx.experts[s].rows > 0)
      moe.expert(moe.first_expert() + static_cast<int64_t>(s) % L).backward_weight(ctx.experts[s]);
}

template <class T>
void attach_expert_parallel(Transformer<T>& model, ExpertParallel<T>& runner) {
  for (MoE<T>* moe : model.moe_layers()) runner.attach(*moe);
}

template class ExpertParallel<float>;
template class ExpertParallel<double>;
template void attach_expert_parallel<float>(Transformer<float>&, ExpertParallel<float>&);
template void attach_expert_parallel<double>(Transformer<double>&, ExpertParallel<double>&);

}  // namespace frugal
