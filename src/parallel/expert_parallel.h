// Expert parallelism on the CPU (spec §5.1, §5.3): the routed experts of every MoE layer are
// spread over the P ranks of an EP group (EP rank r holds experts [r*E/P, (r+1)*E/P), under their
// global names, so checkpoints are those of one process); router, shared experts and everything
// else are replicated (their gradients are summed over the data-parallel group with the rest).
//
// ExpertParallel is the MoE layer's ExpertRunner (model/moe.h). Every rank routes its own tokens,
// then for each layer:
//   dispatch   per-expert row counts are exchanged (all_to_all_v of [P][E/P] counts), then the
//              permuted rows (expert-major, so each destination's rows are contiguous) go to the
//              experts' owners: all_to_all_v, payload in the model's element type (fp32/fp64 here;
//              the GPU path sends FP8 + scales or BF16)
//   experts    each held expert runs once per source rank over that rank's rows (source order),
//              so its inputs, outputs and per-source weight gradients are exactly those of a
//              single process running the sources' micro-batches one after the other
//   combine    the outputs go back (all_to_all_v with the counts reversed) into the permuted order;
//              the MoE layer applies the routing weights as in a single process
// Backward is symmetric: the backward of combine is a dispatch of the output gradients, the
// backward of dispatch a combine of the input gradients. No token is dropped.
// The layout between forward and backward (rows received per source and expert) is kept in
// MoE::Ctx::runner_layout; the experts' contexts in MoE::Ctx::experts ([source][held expert]).
//
// Node-limited routing (spec §2.4): when the EP group spans several nodes (host names differ, or
// as given), every routing group (model.n_group) must lie on one node, so the router's group limit
// (model.topk_group groups per token) sends each token to at most topk_group nodes; attach()
// refuses a layout that breaks this, and forward checks it on every token
// (max_nodes_per_token()).
//
// The expert load stays per rank (each rank counts its own tokens for all E experts); the trainer
// sums it over the data-parallel group before the bias update, so every rank's bias agrees.
#pragma once

#include <cstdint>
#include <vector>

#include "model/moe.h"
#include "model/transformer.h"
#include "parallel/communicator.h"

namespace frugal {

// The routed experts EP rank `ep_rank` of `ep_size` holds.
ExpertShard expert_shard(int64_t n_experts, int ep_size, int ep_rank);

template <class T>
class ExpertParallel final : public ExpertRunner<T> {
 public:
  // `ep`: this rank's EP group (outlives the runner). node_of_rank[r]: the node of EP rank r;
  // empty: found from the host names (collective over `ep`).
  explicit ExpertParallel(Communicator& ep, std::vector<int> node_of_rank = {});

  // Checks that `moe` holds this rank's experts and that routing groups respect nodes, then
  // installs this runner in it.
  void attach(MoE<T>& moe);

  void forward(const MoE<T>& moe, typename MoE<T>::Ctx& ctx, const T* xp, T* out) override;
  void backward_input(const MoE<T>& moe, typename MoE<T>::Ctx& ctx, const T* d_out,
                      T* dxp) override;
  void backward_weight(const MoE<T>& moe, typename MoE<T>::Ctx& ctx) override;

  int nodes() const { return nodes_; }
  // The most distinct nodes one token's experts were on, over every forward so far.
  int64_t max_nodes_per_token() const { return max_nodes_per_token_; }
  // Rows this rank sent to other ranks and received from them (forward dispatches).
  int64_t rows_sent() const { return rows_sent_; }
  int64_t rows_received() const { return rows_received_; }

 private:
  struct Counts {
    std::vector<int64_t> send, recv;  // elements per peer
    int64_t recv_rows = 0;
  };
  Counts payload_counts(const MoE<T>& moe, const typename MoE<T>::Ctx& ctx) const;
  void check_node_limit(const MoE<T>& moe, const typename MoE<T>::Ctx& ctx);

  Communicator& ep_;
  std::vector<int> node_of_rank_;
  int nodes_ = 1;
  int64_t max_nodes_per_token_ = 0;
  int64_t rows_sent_ = 0, rows_received_ = 0;
};

// Attaches `runner` to every MoE layer of `model` (built with expert_shard of the runner's rank).
template <class T>
void attach_expert_parallel(Transformer<T>& model, ExpertParallel<T>& runner);

}  // namespace frugal
