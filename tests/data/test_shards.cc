// Token shards: writer/reader round trips (uint16 and uint32, several shards), the index, stats,
// and the validation errors of Dataset::open (truncated, corrupted, missing, inconsistent shards,
// wrong tokenizer), each naming the file at fault.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <iterator>

#include "data/shards/stats.h"
#include "token_data_fixtures.h"

#include "test_util.h"

namespace frugal {
namespace {

using namespace frugal::testing;

using ::frugal::testing::read_bytes;

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

nlohmann::json read_index(const std::string& dir) {
  return nlohmann::json::parse(read_bytes(dir + "/index.json"));
}

void write_index(const std::string& dir, const nlohmann::json& index) {
  write_bytes(dir + "/index.json", index.dump(2));
}

void expect_same_documents(const Dataset& dataset, const Documents& docs) {
  ASSERT_EQ(dataset.num_documents(), static_cast<int64_t>(docs.size()));
  int64_t tokens = 0;
  for (size_t d = 0; d < docs.size(); ++d) {
    const DocumentView view = dataset.doc(static_cast<int64_t>(d));
    ASSERT_EQ(view.size(), static_cast<int64_t>(docs[d].size())) << "document " << d;
    EXPECT_EQ(view.to_vector(), docs[d]) << "document " << d;
    EXPECT_EQ(dataset.doc_length(static_cast<int64_t>(d)), view.size());
    for (int64_t t = 0; t < view.size(); ++t) ASSERT_EQ(view[t], docs[d][static_cast<size_t>(t)]);
    tokens += view.size();
  }
  EXPECT_EQ(dataset.num_tokens(), tokens);
}

TEST(Shards, RoundTripUint16ManyShards) {
  TempDir dir;
  Documents docs = random_documents(300, 0, 250, 0, 50000, 1);
  docs[7].clear();  // an empty document survives
  const auto summary = write_dataset(dir.path(), docs, test_tokenizer("tok-A", 50000), 8192);
  const Dataset dataset = Dataset::open(dir.path());
  EXPECT_GT(dataset.num_shards(), 5);
  EXPECT_EQ(summary.shards, dataset.num_shards());
  EXPECT_EQ(std::string(dataset.dtype()), "uint16");
  EXPECT_EQ(dataset.token_bytes(), 2);
  EXPECT_EQ(dataset.tokenizer(), test_tokenizer("tok-A", 50000));
  expect_same_documents(dataset, docs);
  dataset.verify();

  // Every shard stays under the limit, and its size is the documented layout.
  int64_t first = 0;
  for (const ShardInfo& shard : dataset.shards()) {
    EXPECT_LE(shard.bytes, 8192) << shard.file;
    const int64_t token_end = 256 + 2 * shard.tokens;
    EXPECT_EQ(shard.bytes, (token_end + 7) / 8 * 8 + 8 * (shard.documents + 1)) << shard.file;
    EXPECT_EQ(static_cast<int64_t>(fs::file_size(dir.path(shard.file))), shard.bytes);
    EXPECT_EQ(shard.first_document, first);
    first += shard.documents;
  }
  EXPECT_EQ(dataset.shard_of(0), 0);
  EXPECT_EQ(dataset.shard_of(dataset.num_documents() - 1), dataset.num_shards() - 1);

  const nlohmann::json index = read_index(dir.path());
  EXPECT_EQ(index["format"], "frugal-token-shards");
  EXPECT_EQ(index["format_version"], 1);
  EXPECT_EQ(index["dtype"], "uint16");
  EXPECT_EQ(index["eos_id"], 0);
  EXPECT_EQ(index["bos_id"], 4);
  EXPECT_EQ(index["special_ids"]["fim_hole"], 2);
  EXPECT_EQ(index["total_documents"], 300);
  EXPECT_EQ(index["total_tokens"], dataset.num_tokens());
  EXPECT_EQ(index["creation"]["max_shard_bytes"], 8192);
  EXPECT_EQ(index["creation"]["source"], "unit test");
  EXPECT_EQ(dataset.index()["shards"].size(), static_cast<size_t>(dataset.num_shards()));
}

TEST(Shards, RoundTripUint32) {
  TempDir dir;
  const Documents docs = random_documents(50, 1, 400, 60000, 100000, 2);
  write_dataset(dir.path(), docs, test_tokenizer("tok-32", 100000), 4096);
  const Dataset dataset = Dataset::open(dir.path());
  EXPECT_EQ(std::string(dataset.dtype()), "uint32");
  EXPECT_GT(dataset.num_shards(), 2);
  expect_same_documents(dataset, docs);
  dataset.verify();
  for (const ShardInfo& shard : dataset.shards()) {
    const int64_t token_end = 256 + 4 * shard.tokens;
    EXPECT_EQ(shard.bytes, (token_end + 7) / 8 * 8 + 8 * (shard.documents + 1)) << shard.file;
  }
}

TEST(Shards, DtypeBoundaryAt65536) {
  TempDir small, large;
  write_dataset(small.path(), {{65535, 0, 1}}, test_tokenizer("t", 65536));
  write_dataset(large.path(), {{65536, 0, 1}}, test_tokenizer("t", 65537));
  const Dataset a = Dataset::open(small.path()), b = Dataset::open(large.path());
  EXPECT_EQ(std::string(a.dtype()), "uint16");
  EXPECT_EQ(std::string(b.dtype()), "uint32");
  EXPECT_EQ(a.doc(0)[0], 65535);
  EXPECT_EQ(b.doc(0)[0], 65536);
}

TEST(Shards, DocumentLargerThanTheLimitGetsItsOwnShard) {
  TempDir dir;
  Documents docs = {std::vector<int32_t>(10, 5), std::vector<int32_t>(3000, 6),
                    std::vector<int32_t>(10, 7)};
  write_dataset(dir.path(), docs, test_tokenizer("t", 100), 1024);
  const Dataset dataset = Dataset::open(dir.path());
  ASSERT_EQ(dataset.num_shards(), 3);
  EXPECT_EQ(dataset.shards()[1].documents, 1);
  EXPECT_EQ(dataset.shards()[1].tokens, 3000);
  expect_same_documents(dataset, docs);
}

TEST(Shards, WriterRefusesBadInput) {
  TempDir dir;
  expect_error([&] { write_dataset(dir.path("a"), {{1, 2, 100}}, test_tokenizer("t", 100)); },
               {dir.path("a"), "document 0", "token 100", "position 2"});
  expect_error([&] { ShardWriter(dir.path("b"), test_tokenizer("has space", 100)); },
               {"tokenizer hash"});
  expect_error([&] { ShardWriter(dir.path("c"), test_tokenizer(std::string(129, 'x'), 100)); },
               {"1 to 128 characters"});
  TokenizerIdentity bad_eos = test_tokenizer("t", 100);
  bad_eos.eos_id = 100;
  expect_error([&] { ShardWriter(dir.path("d"), bad_eos); }, {"eos_id 100"});
  TokenizerIdentity bad_special = test_tokenizer("t", 3);
  bad_special.bos_id = -1;
  expect_error([&] { ShardWriter(dir.path("e"), bad_special); }, {"special id 'fim_end' = 3"});
}

TEST(Shards, OverwriteReplacesTheWholeDataset) {
  TempDir dir;
  write_dataset(dir.path(), random_documents(100, 50, 100, 5, 90, 3), test_tokenizer("t", 100),
                2048);
  ASSERT_TRUE(fs::exists(dir.path("shard-00003.bin")));
  expect_error([&] { write_dataset(dir.path(), {{5}}, test_tokenizer("t", 100)); },
               {dir.path(), "already holds a dataset", "overwrite"});
  ShardWriterOptions options;
  options.overwrite = true;
  ShardWriter writer(dir.path(), test_tokenizer("t2", 100), options);
  writer.add_document(std::vector<int32_t>{5, 6});
  writer.finish();
  EXPECT_FALSE(fs::exists(dir.path("shard-00001.bin")));
  const Dataset dataset = Dataset::open(dir.path());
  EXPECT_EQ(dataset.num_documents(), 1);
  EXPECT_EQ(dataset.tokenizer_hash(), "t2");
}

TEST(Shards, UnfinishedWriterLeavesNoIndex) {
  TempDir dir;
  {
    ShardWriter writer(dir.path(), test_tokenizer("t", 100), {.max_shard_bytes = 1024});
    for (int i = 0; i < 100; ++i) writer.add_document(std::vector<int32_t>(50, 7));
    EXPECT_GT(writer.shards_written(), 1);  // shards exist, the index does not
  }
  expect_error([&] { Dataset::open(dir.path()); }, {dir.path("index.json"), "missing"});
  expect_error([&] { Dataset::open(dir.path("nowhere")); }, {"nowhere", "no such dataset"});
}

// A dataset of several shards for the corruption tests.
class CorruptedDataset : public ::testing::Test {
 protected:
  void SetUp() override {
    docs_ = random_documents(120, 20, 120, 5, 1000, 4);
    write_dataset(dir_.path(), docs_, test_tokenizer("tok-A", 1000), 2048);
    ASSERT_TRUE(fs::exists(dir_.path("shard-00002.bin")));
  }
  std::string shard(int i) const { return dir_.path(shard_file_name(i)); }
  void open_fails(const std::vector<std::string>& needles) {
    expect_error([&] { Dataset::open(dir_.path()); }, needles);
  }
  TempDir dir_;
  Documents docs_;
};

TEST_F(CorruptedDataset, TruncatedShard) {
  std::string bytes = read_bytes(shard(1));
  write_bytes(shard(1), bytes.substr(0, bytes.size() - 10));
  open_fails({shard(1), "truncated shard"});
  write_bytes(shard(1), bytes.substr(0, 100));  // not even a header
  open_fails({shard(1), "truncated shard", "shorter than the 256-byte header"});
  write_bytes(shard(1), bytes + "xyz");
  open_fails({shard(1), "3 unexpected bytes"});
}

TEST_F(CorruptedDataset, CorruptedHeader) {
  std::string bytes = read_bytes(shard(2));
  std::string damaged = bytes;
  damaged[20] ^= 0x01;  // token count
  write_bytes(shard(2), damaged);
  open_fails({shard(2), "corrupted header"});
  damaged = bytes;
  damaged[0] = 'X';
  write_bytes(shard(2), damaged);
  open_fails({shard(2), "bad magic"});
}

TEST_F(CorruptedDataset, CorruptedOffsetsAndPayload) {
  const Dataset good = Dataset::open(dir_.path());
  const ShardInfo info = good.shards()[0];
  std::string bytes = read_bytes(shard(0));
  // Document 3's end offset (offset entry 4) beyond the shard's tokens.
  std::string damaged = bytes;
  const size_t offsets_at = bytes.size() - 8 * static_cast<size_t>(info.documents + 1);
  const uint64_t huge = 1u << 30;
  std::memcpy(damaged.data() + offsets_at + 8 * 4, &huge, 8);
  write_bytes(shard(0), damaged);
  open_fails({shard(0), "corrupted document offsets", "document 3"});
  // A flipped token: open() does not read tokens, verify() notices.
  damaged = bytes;
  damaged[300] ^= 0x40;
  write_bytes(shard(0), damaged);
  const Dataset opened = Dataset::open(dir_.path());
  expect_error([&] { opened.verify(); }, {shard(0), "payload checksum"});
}

TEST_F(CorruptedDataset, MissingShard) {
  fs::remove(shard(2));
  open_fails({shard(2), "missing shard", "index.json"});
}

TEST_F(CorruptedDataset, ShardOfAnotherTokenizer) {
  TempDir other;
  write_dataset(other.path(), docs_, test_tokenizer("tok-B", 1000), 2048);
  fs::copy_file(other.path(shard_file_name(1)), shard(1), fs::copy_options::overwrite_existing);
  open_fails({shard(1), "wrong tokenizer", "tok-B", "tok-A"});
}

TEST_F(CorruptedDataset, ShardFromAnotherWrite) {
  TempDir other;
  Documents changed = docs_;
  changed[0][0] += 1;  // same sizes, other content
  write_dataset(other.path(), changed, test_tokenizer("tok-A", 1000), 2048);
  fs::copy_file(other.path(shard_file_name(0)), shard(0), fs::copy_options::overwrite_existing);
  open_fails({shard(0), "payload checksum", "replaced"});
}

TEST_F(CorruptedDataset, IndexInconsistentWithShards) {
  const nlohmann::json index = read_index(dir_.path());
  nlohmann::json edited = index;
  edited["shards"][1]["tokens"] = edited["shards"][1]["tokens"].get<int64_t>() + 1;
  write_index(dir_.path(), edited);
  open_fails({shard(1), "the header holds", "index.json lists"});

  edited = index;
  edited["total_documents"] = 5;
  write_index(dir_.path(), edited);
  open_fails({dir_.path("index.json"), "differ from the sum"});

  edited = index;
  edited["dtype"] = "uint32";
  write_index(dir_.path(), edited);
  open_fails({dir_.path("index.json"), "dtype 'uint32' does not match vocab_size 1000"});

  edited = index;
  edited["tokenizer_hash"] = "tok-C";
  write_index(dir_.path(), edited);
  open_fails({shard(0), "wrong tokenizer", "tok-A", "tok-C"});

  edited = index;
  edited.erase("eos_id");
  write_index(dir_.path(), edited);
  open_fails({dir_.path("index.json"), "missing key 'eos_id'"});

  write_bytes(dir_.path("index.json"), "{ not json");
  open_fails({dir_.path("index.json"), "not valid JSON"});

  write_index(dir_.path(), index);
  EXPECT_EQ(Dataset::open(dir_.path()).num_documents(), 120);
}

TEST(Shards, CheckTokenizerNamesBothHashes) {
  TempDir dir;
  write_dataset(dir.path(), {{5, 6}}, test_tokenizer("tok-A", 100));
  const Dataset dataset = Dataset::open(dir.path());
  dataset.check_tokenizer("tok-A");
  expect_error([&] { dataset.check_tokenizer("tok-Z"); },
               {dir.path(), "wrong tokenizer", "'tok-A'", "'tok-Z'"});
}

TEST(Shards, ContentIdFollowsContentNotLocation) {
  TempDir a, b, c;
  const Documents docs = random_documents(30, 1, 50, 5, 100, 5);
  write_dataset(a.path(), docs, test_tokenizer("t", 100), 1024);
  write_dataset(b.path(), docs, test_tokenizer("t", 100), 1024);
  Documents other = docs;
  other[3].push_back(9);
  write_dataset(c.path(), other, test_tokenizer("t", 100), 1024);
  EXPECT_EQ(Dataset::open(a.path()).content_id(), Dataset::open(b.path()).content_id());
  EXPECT_NE(Dataset::open(a.path()).content_id(), Dataset::open(c.path()).content_id());
}

TEST(Shards, Stats) {
  TempDir dir;
  write_dataset(dir.path(), {{5}, {5, 6, 7, 8, 9, 10, 11, 12, 13, 14}, {5, 6}, {5, 6, 7}},
                test_tokenizer("tok-S", 100), 1024);
  const DatasetStats stats = compute_stats(Dataset::open(dir.path()));
  EXPECT_EQ(stats.documents, 4);
  EXPECT_EQ(stats.tokens, 16);
  EXPECT_DOUBLE_EQ(stats.mean_doc_tokens, 4.0);
  EXPECT_DOUBLE_EQ(stats.median_doc_tokens, 2.5);
  EXPECT_EQ(stats.min_doc_tokens, 1);
  EXPECT_EQ(stats.max_doc_tokens, 10);
  EXPECT_EQ(stats.shards, 1);
  EXPECT_EQ(stats.dtype, "uint16");
  EXPECT_EQ(stats.tokenizer_hash, "tok-S");
  EXPECT_EQ(stats.bytes, static_cast<int64_t>(fs::file_size(dir.path("shard-00000.bin"))));
  const nlohmann::json json = stats_json(stats);
  EXPECT_EQ(json["median_doc_tokens"], 2.5);
  EXPECT_EQ(json["max_doc_tokens"], 10);
  EXPECT_EQ(json["tokenizer_hash"], "tok-S");
  const std::string table = stats_table(stats);
  EXPECT_NE(table.find("median_doc_tokens    2.5"), std::string::npos) << table;
  EXPECT_NE(table.find("documents            4"), std::string::npos) << table;

  TempDir odd;
  write_dataset(odd.path(), {{5, 6, 7}, {5}, {5, 6, 7, 8, 9}}, test_tokenizer("t", 100));
  EXPECT_DOUBLE_EQ(compute_stats(Dataset::open(odd.path())).median_doc_tokens, 3.0);
}

}  // namespace
}  // namespace frugal
