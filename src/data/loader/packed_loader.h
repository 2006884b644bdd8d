// PackedLoader: the training-data source over token-shard datasets (src/data/shards) - document
// packing, FIM, weighted mixing, data-parallel slices, a validation split and exact resume.
//
// The global stream. Each dataset d has its own stream of pieces (document_piece.h): its split's
// documents in a shuffled order, each turned into `[BOS] doc EOS` or, with probability fim_rate,
// into the PSM form `[BOS] FIM_BEGIN prefix FIM_HOLE suffix FIM_END middle EOS`, concatenated
// without gaps (documents are packed; a document longer than a sequence continues in the next
// sequence taken from the same dataset). Global sequence k (k = 0, 1, 2, ...) is the next
// seq + 1 tokens of dataset d(k)'s stream, where d(k) is drawn with probability
// weight_d / sum(weights) from uniform(seed, k): mixing is per sequence, so the weights are the
// fractions of sequences (= of tokens) drawn from each dataset. A row of next_batch holds one
// sequence: tokens = its first seq tokens, targets = its last seq (targets[t] = tokens[t + 1]).
//
// Attention is NOT masked across documents (DeepSeek-V3 packs without cross-document masking,
// spec 6.1); frugal's attention has no document mask yet. With document_masking = true the loader
// also records, per input token, the document (segment) it belongs to and its position inside
// that document, so a masked attention can be added later; the trainer must not claim masking
// until the attention uses them.
//
// Shuffling: epoch e of dataset d visits positions 0..N_d-1 of a Feistel permutation keyed by
// (seed, dataset, e) (permutation.h) and skips documents of the other split; every epoch has a
// new order. FIM decisions and cut points are drawn from (seed, dataset, epoch, position).
// Everything is a pure function of counters, so the state is a handful of integers.
//
// Data parallelism: rank r of world w takes the global sequences k with k mod w = r. A call
// next_batch(tokens, targets, b, seq) on every rank consumes global sequences [K, K + w*b) and
// rank r returns K + r, K + r + w, ..., so the ranks' batches are disjoint and together equal the
// batch next_batch(.., w*b, seq) of a single process (single-process row i = rank i mod w, row
// i / w). Every rank walks the whole stream (skipping other ranks' sequences reads no tokens), so
// the state is identical on every rank and may be restored under a different world size.
//
// Validation split: document i of a dataset is held out when uniform(split key, content id of the
// dataset, i) < val_fraction - independent of the seed, the rank and the dataset order. The train
// split never contains a held-out document; a loader built with LoaderSplit::kValidation reads
// only held-out documents (with the same packing, FIM and mixing).
//
// Resume: state() = {"kind": "packed", "split", "options": {seed, fim, ids, val_fraction,
// datasets: [content_id, weight, documents, tokens]}, "sequence_counter", "streams": [{epoch,
// position, offset, document, fim} per dataset]}. restore() refuses a state made with other data
// or options (naming the differing key) and otherwise continues with exactly the batches an
// uninterrupted run would produce, also mid-document and across epoch boundaries.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/data_source.h"
#include "data/loader/document_piece.h"
#include "data/shards/dataset.h"

namespace frugal {

struct LoaderDataset {
  std::string path;     // dataset directory
  double weight = 1.0;  // >= 0; fractions of sequences are weight / sum(weights)
};

struct LoaderOptions {
  std::vector<LoaderDataset> datasets;  // at least one; all from the same tokenizer
  uint64_t seed = 0;
  double fim_rate = 0.1;                 // fraction of documents rewritten in PSM form
  int64_t fim_begin_id = -1;             // required when fim_rate > 0
  int64_t fim_hole_id = -1;
  int64_t fim_end_id = -1;
  int64_t eos_id = -1;                   // -1: the datasets' eos_id
  bool add_bos = false;                  // prefix every document with the datasets' bos_id
  double val_fraction = 0.0;             // held-out fraction of documents, in [0, 1)
  int64_t rank = 0, world = 1;           // data-parallel slice
  bool document_masking = false;         // record segment ids and positions (see above)
  std::string expected_tokenizer_hash;   // when set, every dataset must match it
};

enum class LoaderSplit { kTrain, kValidation };

class PackedLoader : public DataSource {
 public:
  // Opens and validates the datasets and checks the options; throws frugal::Error naming the
  // dataset or option at fault.
  explicit PackedLoader(const LoaderOptions& options, LoaderSplit split = LoaderSplit::kTrain);

  // tokens, targets: [batch, seq].
  void next_batch(int32_t* tokens, int32_t* targets, int64_t batch, int64_t seq) override;
  nlohmann::json state() const override;
  void restore(const nlohmann::json& state) override;
  int64_t vocab_size() const override { return vocab_size_; }

  // Only with document_masking: for the input tokens of the last next_batch, [batch, seq] each.
  // segment id = which document within the row (0 for the first, +1 at every new document);
  // position = index of the token inside its piece (continuing from the previous row when the
  // document started there).
  const std::vector<int32_t>& last_segment_ids() const;
  const std::vector<int32_t>& last_positions() const;

  // True when document `doc` of dataset `dataset` is in the validation split.
  bool is_validation_document(int64_t dataset, int64_t doc) const;
  // Documents and tokens (stored tokens, before EOS/BOS/FIM) of this loader's split.
  int64_t split_documents(int64_t dataset) const;
  int64_t split_tokens(int64_t dataset) const;
  int64_t num_datasets() const { return static_cast<int64_t>(datasets_.size()); }
  const Dataset& dataset(int64_t d) const { return datasets_[static_cast<size_t>(d)]; }
  // Current epoch of dataset d's stream, and the number of global sequences consumed so far.
  int64_t epoch(int64_t d) const { return cursors_[static_cast<size_t>(d)].epoch; }
  int64_t sequence_counter() const { return sequence_counter_; }
  // The dataset global sequence k is drawn from.
  int64_t dataset_of_sequence(int64_t k) const;
  const std::string& name() const { return name_; }
  const PieceTokens& piece_tokens() const { return special_; }

 private:
  struct Cursor {
    int64_t epoch = 0;     // epoch of this dataset's stream
    int64_t position = 0;  // position in the epoch's permutation of all documents
    int64_t offset = 0;    // tokens of the current piece already consumed
    int64_t document = 0;  // derived: the document at `position`
    DocumentPiece piece;   // derived: its piece
  };

  int64_t document_at(int64_t d, int64_t epoch, int64_t position) const;
  bool in_split(int64_t d, int64_t doc) const;
  // Moves the cursor forward from its (epoch, position) to the first document of the split and
  // builds its piece (offset untouched).
  void settle(int64_t d, Cursor& cursor) const;
  // Consumes n tokens of dataset d's stream; out, segments, positions may be null (skip).
  void take(int64_t d, int64_t n, int32_t* out, int32_t* segments, int32_t* positions);
  void check_tokens(int64_t d, const int32_t* tokens, int64_t n) const;
  nlohmann::json options_json() const;

  LoaderOptions options_;
  LoaderSplit split_;
  std::string name_;
  std::vector<Dataset> datasets_;
  std::vector<uint64_t> dataset_keys_;  // per dataset: content hash mixed with its list position
  std::vector<uint64_t> content_keys_;  // per dataset: content hash (the split key)
  std::vector<double> cumulative_weights_;
  std::vector<int64_t> split_documents_, split_tokens_;
  int64_t vocab_size_ = 0;
  PieceTokens special_;
  std::vector<Cursor> cursors_;
  int64_t sequence_counter_ = 0;
  std::vector<int32_t> window_, window_segments_, window_positions_;  // [seq + 1]
  std::vector<int32_t> segment_ids_, positions_;                       // [batch, seq]
};

}  // namespace frugal
