// PackedLoader: packing (EOS between documents, shifted targets), every train token once per epoch,
// FIM form and rate, mixing frequencies, exact resume (mid-document, mid-epoch, across epochs),
// data-parallel slices (disjoint, union = single process), the validation split, determinism,
// segment information and option errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>

#include "data/loader/packed_loader.h"
#include "data/loader/permutation.h"
#include "token_data_fixtures.h"

namespace frugal {
namespace {

using namespace frugal::testing;

constexpr int32_t kEos = 0, kFimBegin = 1, kFimHole = 2, kFimEnd = 3, kBos = 4;
constexpr int64_t kVocab = int64_t{1} << 17;

bool is_special(int32_t id) { return id <= kBos; }

struct Batch {
  std::vector<int32_t> tokens, targets, segments, positions;
  bool operator==(const Batch&) const = default;
};

Batch next(PackedLoader& loader, int64_t batch, int64_t seq) {
  Batch out;
  out.tokens.resize(static_cast<size_t>(batch * seq));
  out.targets.resize(out.tokens.size());
  loader.next_batch(out.tokens.data(), out.targets.data(), batch, seq);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t + 1 < seq; ++t)
      EXPECT_EQ(out.targets[static_cast<size_t>(b * seq + t)],
                out.tokens[static_cast<size_t>(b * seq + t + 1)])
          << "targets are the tokens shifted by one";
  try {
    out.segments = loader.last_segment_ids();
    out.positions = loader.last_positions();
  } catch (const Error&) {
  }
  return out;
}

// Row b's seq + 1 tokens: its input tokens followed by its last target.
std::vector<int32_t> window(const Batch& batch, int64_t b, int64_t seq) {
  std::vector<int32_t> row(batch.tokens.begin() + b * seq, batch.tokens.begin() + (b + 1) * seq);
  row.push_back(batch.targets[static_cast<size_t>((b + 1) * seq - 1)]);
  return row;
}

// The token stream of `batches` consecutive batches (single dataset, single process).
std::vector<int32_t> read_stream(PackedLoader& loader, int64_t batches, int64_t batch, int64_t seq) {
  std::vector<int32_t> stream;
  for (int64_t i = 0; i < batches; ++i) {
    const Batch b = next(loader, batch, seq);
    for (int64_t r = 0; r < batch; ++r) {
      const auto row = window(b, r, seq);
      stream.insert(stream.end(), row.begin(), row.end());
    }
  }
  return stream;
}

// Complete pieces of a stream (each without its EOS), in order.
std::vector<std::vector<int32_t>> pieces_of(const std::vector<int32_t>& stream) {
  std::vector<std::vector<int32_t>> pieces(1);
  for (int32_t token : stream) {
    if (token == kEos) {
      pieces.emplace_back();
    } else {
      pieces.back().push_back(token);
    }
  }
  pieces.pop_back();  // unfinished
  return pieces;
}

struct Decoded {
  std::vector<int32_t> doc;
  bool fim = false;
  size_t prefix = 0, middle = 0, suffix = 0;
};

// Undoes PSM: checks [BOS] FIM_BEGIN prefix FIM_HOLE suffix FIM_END middle, exactly one of each
// sentinel in that order, or no sentinel at all.
Decoded decode(std::vector<int32_t> piece, bool bos) {
  Decoded out;
  if (bos) {
    EXPECT_FALSE(piece.empty());
    if (piece.empty()) return out;
    EXPECT_EQ(piece.front(), kBos);
    piece.erase(piece.begin());
  }
  auto count = [&](int32_t id) { return std::count(piece.begin(), piece.end(), id); };
  EXPECT_EQ(count(kBos), 0);
  if (piece.empty() || piece.front() != kFimBegin) {
    EXPECT_EQ(count(kFimBegin) + count(kFimHole) + count(kFimEnd), 0);
    out.doc = piece;
    return out;
  }
  out.fim = true;
  EXPECT_EQ(count(kFimBegin), 1);
  EXPECT_EQ(count(kFimHole), 1);
  EXPECT_EQ(count(kFimEnd), 1);
  const auto hole = std::find(piece.begin(), piece.end(), kFimHole);
  const auto end = std::find(piece.begin(), piece.end(), kFimEnd);
  EXPECT_LT(hole, end) << "PSM order: FIM_BEGIN prefix FIM_HOLE suffix FIM_END middle";
  if (!(hole < end)) return out;
  const std::vector<int32_t> prefix(piece.begin() + 1, hole), suffix(hole + 1, end),
      middle(end + 1, piece.end());
  out.doc = prefix;
  out.doc.insert(out.doc.end(), middle.begin(), middle.end());
  out.doc.insert(out.doc.end(), suffix.begin(), suffix.end());
  out.prefix = prefix.size();
  out.middle = middle.size();
  out.suffix = suffix.size();
  return out;
}

class LoaderTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    a_ = unique_documents(60, 1, 120, 10, 11);
    b_ = unique_documents(40, 1, 80, 50000, 12);
    c_ = unique_documents(2000, 1, 12, 70000, 13);
    write_dataset(dir_->path("a"), a_, test_tokenizer("tok", kVocab), 4096);
    write_dataset(dir_->path("b"), b_, test_tokenizer("tok", kVocab), 4096);
    write_dataset(dir_->path("c"), c_, test_tokenizer("tok", kVocab));
    owner_.assign(static_cast<size_t>(kVocab), {-1, -1});
    const Documents* all[] = {&a_, &b_, &c_};
    for (int d = 0; d < 3; ++d)
      for (size_t i = 0; i < all[d]->size(); ++i)
        for (int32_t t : (*all[d])[i]) owner_[static_cast<size_t>(t)] = {d, static_cast<int>(i)};
  }
  static void TearDownTestSuite() { delete dir_; }

  static LoaderOptions options(const std::vector<std::pair<std::string, double>>& datasets) {
    LoaderOptions o;
    for (const auto& [name, weight] : datasets) o.datasets.push_back({dir_->path(name), weight});
    o.seed = 1234;
    o.fim_rate = 0.0;
    o.fim_begin_id = kFimBegin;
    o.fim_hole_id = kFimHole;
    o.fim_end_id = kFimEnd;
    return o;
  }
  // (dataset, document) of a stored token.
  static std::pair<int, int> owner(int32_t token) { return owner_[static_cast<size_t>(token)]; }

  static TempDir* dir_;
  static Documents a_, b_, c_;
  static std::vector<std::pair<int, int>> owner_;
};

TempDir* LoaderTest::dir_ = nullptr;
Documents LoaderTest::a_, LoaderTest::b_, LoaderTest::c_;
std::vector<std::pair<int, int>> LoaderTest::owner_;

TEST_F(LoaderTest, EveryTrainTokenOncePerEpochWithEosBetweenDocuments) {
  LoaderOptions o = options({{"a", 1.0}});
  o.val_fraction = 0.2;
  PackedLoader loader(o);
  const int64_t docs = loader.split_documents(0);
  const int64_t epoch_tokens = loader.split_tokens(0) + docs;  // + one EOS per document
  EXPECT_LT(docs, 60);
  const int64_t seq = 37, batch = 2;
  const std::vector<int32_t> stream =
      read_stream(loader, 2 * epoch_tokens / (batch * (seq + 1)) + 2, batch, seq);
  ASSERT_GE(static_cast<int64_t>(stream.size()), 2 * epoch_tokens);
  EXPECT_GE(loader.epoch(0), 2);

  std::vector<std::vector<int>> orders;
  for (int e = 0; e < 2; ++e) {
    const std::vector<int32_t> epoch(stream.begin() + e * epoch_tokens,
                                     stream.begin() + (e + 1) * epoch_tokens);
    ASSERT_EQ(epoch.back(), kEos) << "epoch " << e << " ends with a whole document";
    const auto pieces = pieces_of(epoch);
    ASSERT_EQ(static_cast<int64_t>(pieces.size()), docs);
    std::vector<int> order;
    std::set<int> seen;
    for (const auto& piece : pieces) {
      ASSERT_FALSE(piece.empty());
      const auto [d, i] = owner(piece.front());
      ASSERT_EQ(d, 0);
      EXPECT_EQ(piece, a_[static_cast<size_t>(i)]) << "document " << i << " is packed intact";
      EXPECT_FALSE(loader.is_validation_document(0, i));
      EXPECT_TRUE(seen.insert(i).second) << "document " << i << " twice in epoch " << e;
      order.push_back(i);
    }
    orders.push_back(order);
  }
  EXPECT_NE(orders[0], orders[1]) << "each epoch is reshuffled";
  std::vector<int> sorted = orders[0];
  std::sort(sorted.begin(), sorted.end());
  EXPECT_NE(orders[0], sorted) << "documents are shuffled";
}

TEST_F(LoaderTest, FimIsWellFormedAndPreservesDocuments) {
  LoaderOptions o = options({{"a", 1.0}});
  o.fim_rate = 0.5;
  PackedLoader loader(o);
  const std::vector<int32_t> stream = read_stream(loader, 60, 4, 50);  // > 2 epochs of a
  const auto pieces = pieces_of(stream);
  ASSERT_GE(pieces.size(), 2 * a_.size());
  int fim = 0, all_parts = 0;
  for (size_t e = 0; e < 2; ++e) {
    std::multiset<std::vector<int32_t>> decoded;
    for (size_t p = e * a_.size(); p < (e + 1) * a_.size(); ++p) {
      const Decoded piece = decode(pieces[p], false);
      fim += piece.fim;
      all_parts += piece.fim && piece.prefix > 0 && piece.middle > 0 && piece.suffix > 0;
      decoded.insert(piece.doc);
    }
    const std::multiset<std::vector<int32_t>> original(a_.begin(), a_.end());
    EXPECT_TRUE(decoded == original) << "epoch " << e << ": prefix+middle+suffix = the document";
  }
  EXPECT_GT(fim, 30);
  EXPECT_LT(fim, 90);
  EXPECT_GT(all_parts, 10) << "cuts fall inside documents";
}

TEST_F(LoaderTest, FimRateMatches) {
  LoaderOptions o = options({{"c", 1.0}});
  o.fim_rate = 0.1;
  PackedLoader loader(o);
  const auto pieces = pieces_of(read_stream(loader, 60, 16, 100));
  ASSERT_GT(pieces.size(), 8000u);
  int64_t fim = 0;
  std::multiset<std::vector<int32_t>> first_epoch;
  for (size_t p = 0; p < pieces.size(); ++p) {
    const Decoded piece = decode(pieces[p], false);
    fim += piece.fim;
    if (p < c_.size()) first_epoch.insert(piece.doc);
  }
  const double rate = static_cast<double>(fim) / static_cast<double>(pieces.size());
  std::printf("FIM rate over %zu documents: %.4f (target 0.1)\n", pieces.size(), rate);
  EXPECT_NEAR(rate, 0.1, 0.015);
  EXPECT_TRUE(first_epoch == std::multiset<std::vector<int32_t>>(c_.begin(), c_.end()));
}

TEST_F(LoaderTest, MixingFrequenciesFollowTheWeights) {
  LoaderOptions o = options({{"a", 3.0}, {"b", 1.0}, {"c", 0.0}});
  o.fim_rate = 0.2;
  PackedLoader loader(o);
  const int64_t seq = 16, batch = 50, batches = 60;
  int64_t counts[3] = {0, 0, 0};
  for (int64_t i = 0; i < batches; ++i) {
    const Batch b = next(loader, batch, seq);
    for (int64_t r = 0; r < batch; ++r) {
      const int64_t k = i * batch + r;
      const int64_t d = loader.dataset_of_sequence(k);
      counts[d] += 1;
      int stored = 0;
      for (int32_t t : window(b, r, seq)) {
        if (is_special(t)) continue;
        ASSERT_EQ(owner(t).first, d) << "sequence " << k << " mixes datasets";
        stored += 1;
      }
      EXPECT_GT(stored, 0);
    }
  }
  const double total = static_cast<double>(batch * batches);
  std::printf("mixing 3:1:0 -> %.4f %.4f %.4f\n", counts[0] / total, counts[1] / total,
              counts[2] / total);
  EXPECT_NEAR(counts[0] / total, 0.75, 0.04);
  EXPECT_NEAR(counts[1] / total, 0.25, 0.04);
  EXPECT_EQ(counts[2], 0);
}

TEST_F(LoaderTest, ResumeEqualsUninterruptedRun) {
  LoaderOptions o = options({{"a", 2.0}, {"b", 1.0}});
  o.fim_rate = 0.3;
  o.val_fraction = 0.15;
  o.document_masking = true;
  const int64_t seq = 50, batch = 3, total = 40;
  PackedLoader reference_loader(o);
  std::vector<Batch> reference;
  for (int64_t i = 0; i < total; ++i) reference.push_back(next(reference_loader, batch, seq));
  EXPECT_GE(reference_loader.epoch(0), 1);
  EXPECT_GE(reference_loader.epoch(1), 1);

  bool mid_document = false, later_epoch = false;
  for (int64_t cut = 0; cut <= total; ++cut) {
    PackedLoader first(o);
    for (int64_t i = 0; i < cut; ++i) ASSERT_EQ(next(first, batch, seq), reference[static_cast<size_t>(i)]);
    const nlohmann::json saved = nlohmann::json::parse(first.state().dump());
    for (const auto& stream : saved["streams"]) {
      mid_document = mid_document || stream["offset"].get<int64_t>() > 0;
      later_epoch = later_epoch || stream["epoch"].get<int64_t>() > 0;
    }
    PackedLoader second(o);
    second.restore(saved);
    EXPECT_EQ(second.state(), saved);
    for (int64_t i = cut; i < total; ++i)
      ASSERT_EQ(next(second, batch, seq), reference[static_cast<size_t>(i)]) << "cut " << cut;
  }
  EXPECT_TRUE(mid_document) << "some cut falls inside a document";
  EXPECT_TRUE(later_epoch) << "some cut falls after an epoch boundary";

  // Rewinding the same loader (the trainer does this for validation).
  PackedLoader loader(o);
  const nlohmann::json start = loader.state();
  const Batch once = next(loader, batch, seq);
  loader.restore(start);
  EXPECT_EQ(next(loader, batch, seq), once);
}

TEST_F(LoaderTest, RestoreRefusesOtherDataOrOptions) {
  LoaderOptions o = options({{"a", 1.0}});
  o.fim_rate = 0.1;
  o.val_fraction = 0.1;
  PackedLoader loader(o);
  next(loader, 2, 30);
  const nlohmann::json saved = loader.state();

  LoaderOptions other_seed = o;
  other_seed.seed = 99;
  expect_error([&] { PackedLoader(other_seed).restore(saved); }, {"train data", "seed", "1234", "99"});
  LoaderOptions other_fim = o;
  other_fim.fim_rate = 0.2;
  expect_error([&] { PackedLoader(other_fim).restore(saved); }, {"fim_rate"});
  LoaderOptions other_data = options({{"b", 1.0}});
  other_data.fim_rate = 0.1;
  other_data.val_fraction = 0.1;
  expect_error([&] { PackedLoader(other_data).restore(saved); },
               {"dataset 0", dir_->path("b"), "differs"});
  LoaderOptions two = options({{"a", 1.0}, {"b", 1.0}});
  two.fim_rate = 0.1;
  two.val_fraction = 0.1;
  expect_error([&] { PackedLoader(two).restore(saved); }, {"mixes 1 datasets, this loader 2"});
  expect_error([&] { PackedLoader(o, LoaderSplit::kValidation).restore(saved); },
               {"validation data", "train split"});
  expect_error([&] { loader.restore({{"kind", "text"}}); }, {"kind 'text'"});
  nlohmann::json broken = saved;
  broken["streams"][0]["position"] = 1000;
  expect_error([&] { loader.restore(broken); }, {"position 1000"});
  broken = saved;
  broken["streams"][0]["offset"] = 100000;
  expect_error([&] { loader.restore(broken); }, {"offset 100000"});
  broken = saved;
  broken.erase("streams");
  expect_error([&] { loader.restore(broken); }, {"malformed saved state"});
  EXPECT_EQ(loader.state(), saved) << "a refused restore changes nothing";
}

TEST_F(LoaderTest, RanksAreDisjointAndTogetherEqualTheSingleProcessBatch) {
  LoaderOptions o = options({{"a", 2.0}, {"b", 1.0}});
  o.fim_rate = 0.2;
  const int64_t world = 3, local = 2, seq = 20, steps = 8;
  PackedLoader single(o);
  std::vector<PackedLoader> ranks;
  ranks.reserve(world);
  for (int64_t r = 0; r < world; ++r) {
    LoaderOptions ro = o;
    ro.rank = r;
    ro.world = world;
    ranks.emplace_back(ro);
  }
  std::vector<Batch> single_batches;
  for (int64_t step = 0; step < steps; ++step) {
    const Batch global = next(single, world * local, seq);
    single_batches.push_back(global);
    std::set<std::vector<int32_t>> rows;
    for (int64_t r = 0; r < world; ++r) {
      const Batch mine = next(ranks[static_cast<size_t>(r)], local, seq);
      for (int64_t j = 0; j < local; ++j) {
        const int64_t i = j * world + r;  // single-process row
        EXPECT_EQ(window(mine, j, seq), window(global, i, seq)) << "step " << step << " rank " << r;
        EXPECT_TRUE(rows.insert(window(mine, j, seq)).second) << "ranks share a sequence";
      }
    }
    for (const auto& rank : ranks) EXPECT_EQ(rank.state(), single.state()) << "same state on every rank";
  }

  // Elastic resume: rank 1's state continues a world-1 and a world-2 run of the same global batch.
  PackedLoader alone(o);
  for (int64_t step = 0; step < 4; ++step) next(alone, world * local, seq);
  LoaderOptions pair = o;
  pair.world = 2;
  pair.rank = 1;
  PackedLoader half(pair);
  half.restore(alone.state());
  PackedLoader from_rank(o);
  from_rank.restore(ranks[1].state());  // at step 8
  const Batch continued = next(from_rank, world * local, seq);
  PackedLoader single_again(o);
  for (int64_t step = 0; step < steps; ++step) next(single_again, world * local, seq);
  EXPECT_EQ(continued, next(single_again, world * local, seq));
  const Batch half_batch = next(half, world, seq);
  for (int64_t j = 0; j < world; ++j)
    EXPECT_EQ(window(half_batch, j, seq), window(single_batches[4], 2 * j + 1, seq));
}

TEST_F(LoaderTest, ValidationDocumentsNeverReachTraining) {
  LoaderOptions o = options({{"a", 1.0}, {"b", 1.0}});
  o.fim_rate = 0.3;
  o.val_fraction = 0.25;
  PackedLoader train(o), validation(o, LoaderSplit::kValidation);
  for (int64_t d = 0; d < 2; ++d) {
    EXPECT_EQ(train.split_documents(d) + validation.split_documents(d),
              train.dataset(d).num_documents());
    EXPECT_EQ(train.split_tokens(d) + validation.split_tokens(d), train.dataset(d).num_tokens());
    EXPECT_GT(validation.split_documents(d), 0);
  }
  auto seen_docs = [&](PackedLoader& loader, int64_t batches) {
    std::set<std::pair<int, int>> seen;
    for (int64_t i = 0; i < batches; ++i) {
      const Batch b = next(loader, 4, 64);
      for (int32_t t : b.tokens)
        if (!is_special(t)) seen.insert(owner(t));
    }
    return seen;
  };
  const auto train_seen = seen_docs(train, 80);  // several epochs
  const auto validation_seen = seen_docs(validation, 30);
  int64_t expected_train = 0, expected_validation = 0;
  for (int64_t d = 0; d < 2; ++d) {
    expected_train += train.split_documents(d);
    expected_validation += validation.split_documents(d);
  }
  EXPECT_EQ(static_cast<int64_t>(train_seen.size()), expected_train);
  EXPECT_EQ(static_cast<int64_t>(validation_seen.size()), expected_validation);
  for (const auto& [d, i] : train_seen) EXPECT_FALSE(train.is_validation_document(d, i));
  for (const auto& [d, i] : validation_seen) EXPECT_TRUE(train.is_validation_document(d, i));

  // The split depends on the data only (not the seed or the rank), and its size on val_fraction.
  LoaderOptions other = options({{"c", 1.0}});
  other.val_fraction = 0.25;
  PackedLoader c_train(other);
  other.seed = 77;
  other.rank = 1;
  other.world = 2;
  PackedLoader c_other(other);
  for (int64_t i = 0; i < 2000; ++i)
    ASSERT_EQ(c_train.is_validation_document(0, i), c_other.is_validation_document(0, i));
  EXPECT_NEAR(1.0 - static_cast<double>(c_train.split_documents(0)) / 2000.0, 0.25, 0.04);
}

TEST_F(LoaderTest, DeterministicFromTheSeed) {
  LoaderOptions o = options({{"a", 1.0}, {"b", 0.5}});
  o.fim_rate = 0.3;
  PackedLoader first(o), second(o);
  o.seed += 1;
  PackedLoader third(o);
  bool differs = false;
  for (int i = 0; i < 10; ++i) {
    const Batch x = next(first, 3, 40);
    EXPECT_EQ(x, next(second, 3, 40));
    differs = differs || !(x == next(third, 3, 40));
  }
  EXPECT_TRUE(differs) << "another seed gives other batches";
}

TEST_F(LoaderTest, SegmentIdsAndPositionsMarkDocuments) {
  LoaderOptions o = options({{"a", 1.0}});
  o.fim_rate = 0.3;
  PackedLoader plain(o);
  int32_t t0 = 0, t1 = 0;
  plain.next_batch(&t0, &t1, 1, 1);
  expect_error([&] { plain.last_segment_ids(); }, {"document_masking"});
  o.document_masking = true;
  PackedLoader loader(o);
  const int64_t seq = 40, batch = 4;
  int64_t boundaries = 0;
  for (int i = 0; i < 10; ++i) {
    const Batch b = next(loader, batch, seq);
    ASSERT_EQ(b.segments.size(), static_cast<size_t>(batch * seq));
    for (int64_t r = 0; r < batch; ++r) {
      const size_t row = static_cast<size_t>(r * seq);
      EXPECT_EQ(b.segments[row], 0);
      if (b.positions[row] == 0) {
        EXPECT_TRUE(b.tokens[row] == kFimBegin || !is_special(b.tokens[row]));
      }
      for (int64_t t = 1; t < seq; ++t) {
        const size_t at = row + static_cast<size_t>(t);
        if (b.tokens[at - 1] == kEos) {
          boundaries += 1;
          EXPECT_EQ(b.segments[at], b.segments[at - 1] + 1);
          EXPECT_EQ(b.positions[at], 0);
        } else {
          EXPECT_EQ(b.segments[at], b.segments[at - 1]);
          EXPECT_EQ(b.positions[at], b.positions[at - 1] + 1);
        }
      }
    }
  }
  EXPECT_GT(boundaries, 10);
}

TEST_F(LoaderTest, Uint16DataWithBos) {
  TempDir dir;
  const Documents docs = random_documents(200, 0, 30, 10, 1000, 21);
  write_dataset(dir.path(), docs, test_tokenizer("small", 1000));
  LoaderOptions o;
  o.datasets = {{dir.path(), 1.0}};
  o.fim_rate = 0.5;
  o.fim_begin_id = kFimBegin;
  o.fim_hole_id = kFimHole;
  o.fim_end_id = kFimEnd;
  o.add_bos = true;
  PackedLoader loader(o);
  EXPECT_EQ(loader.vocab_size(), 1000);
  EXPECT_EQ(loader.dataset(0).token_bytes(), 2);
  const auto pieces = pieces_of(read_stream(loader, 20, 4, 64));
  ASSERT_GE(pieces.size(), docs.size());
  std::multiset<std::vector<int32_t>> decoded;
  for (size_t p = 0; p < docs.size(); ++p) decoded.insert(decode(pieces[p], true).doc);
  EXPECT_TRUE(decoded == std::multiset<std::vector<int32_t>>(docs.begin(), docs.end()));
}

TEST_F(LoaderTest, OptionErrors) {
  LoaderOptions o = options({{"a", 1.0}});
  o.fim_rate = 0.1;
  o.fim_hole_id = -1;
  expect_error([&] { PackedLoader{o}; }, {"fim_hole_id = -1"});
  o.fim_hole_id = kEos;
  expect_error([&] { PackedLoader{o}; }, {"four different ids"});
  o = options({{"a", 1.0}});
  expect_error([&] { PackedLoader(o, LoaderSplit::kValidation); }, {"val_fraction is 0"});
  o.rank = 2;
  o.world = 2;
  expect_error([&] { PackedLoader{o}; }, {"rank 2", "world size 2"});
  o = options({{"a", 0.0}});
  expect_error([&] { PackedLoader{o}; }, {"weights sum to 0"});
  o = options({{"a", 1.0}});
  o.expected_tokenizer_hash = "other";
  expect_error([&] { PackedLoader{o}; }, {"wrong tokenizer", "'tok'", "'other'"});
  TempDir dir;
  write_dataset(dir.path(), {{5, 6}}, test_tokenizer("another", kVocab));
  o = options({{"a", 1.0}});
  o.datasets.push_back({dir.path(), 1.0});
  expect_error([&] { PackedLoader{o}; }, {"share one tokenizer", "another"});
  o = options({{"missing", 1.0}});
  expect_error([&] { PackedLoader{o}; }, {"missing", "no such dataset"});
}

TEST(FeistelPermutation, IsABijectionOfAnySize) {
  for (uint64_t n : {1u, 2u, 3u, 4u, 5u, 17u, 64u, 100u, 1000u, 4097u}) {
    const FeistelPermutation order(n, 42, 7);
    std::vector<bool> hit(n, false);
    for (uint64_t i = 0; i < n; ++i) {
      const uint64_t x = order(i);
      ASSERT_LT(x, n);
      EXPECT_FALSE(hit[x]) << "n " << n << ": " << x << " twice";
      hit[x] = true;
    }
  }
  const FeistelPermutation a(1000, 42, 7), b(1000, 42, 8);
  int moved = 0, differ = 0;
  for (uint64_t i = 0; i < 1000; ++i) {
    moved += a(i) != i;
    differ += a(i) != b(i);
  }
  EXPECT_GT(moved, 900);
  EXPECT_GT(differ, 900);
}

TEST(DocumentPiece, PsmLayoutAndPartialCopies) {
  const std::vector<uint32_t> stored = {10, 11, 12, 13, 14, 15, 16, 17};
  const DocumentView doc(reinterpret_cast<const unsigned char*>(stored.data()), 4, 8);
  PieceTokens special;
  special.eos_id = kEos;
  special.bos_id = kBos;
  special.fim_begin_id = kFimBegin;
  special.fim_hole_id = kFimHole;
  special.fim_end_id = kFimEnd;
  const DocumentPiece piece(8, FimCut{true, 2, 5}, special);
  const std::vector<int32_t> expected = {kBos, kFimBegin, 10, 11, kFimHole, 15, 16, 17,
                                         kFimEnd, 12, 13, 14, kEos};
  ASSERT_EQ(piece.length(), static_cast<int64_t>(expected.size()));
  EXPECT_TRUE(piece.fim());
  for (int64_t offset = 0; offset < piece.length(); ++offset) {
    for (int64_t count = 1; offset + count <= piece.length(); ++count) {
      std::vector<int32_t> out(static_cast<size_t>(count));
      piece.copy(doc, offset, count, out.data());
      EXPECT_EQ(out, std::vector<int32_t>(expected.begin() + offset,
                                          expected.begin() + offset + count));
    }
  }
  const DocumentPiece plain(8, FimCut{}, PieceTokens{kEos, -1, -1, -1, -1});
  std::vector<int32_t> out(9);
  plain.copy(doc, 0, 9, out.data());
  EXPECT_EQ(out, std::vector<int32_t>({10, 11, 12, 13, 14, 15, 16, 17, kEos}));
  uint32_t words[4] = {0xFFFFFFFFu, 0, 0, 0};
  EXPECT_FALSE(draw_fim_cut(words, 8, 0.5).applied);
  EXPECT_TRUE(draw_fim_cut(words, 8, 1.0).applied);
  words[0] = 0;
  words[1] = 0xFFFFFFFFu;  // cut at 8
  words[2] = 0x40000000u;  // cut at floor(9 / 4) = 2
  const FimCut cut = draw_fim_cut(words, 8, 0.1);
  EXPECT_TRUE(cut.applied);
  EXPECT_EQ(cut.prefix_end, 2);
  EXPECT_EQ(cut.middle_end, 8);
}

}  // namespace
}  // namespace frugal
