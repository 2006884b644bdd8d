// `frugal data` end to end through the binary, in a temporary directory, on small synthetic
// corpora written here (.txt with <|endoftext|> lines, .jsonl, .txt.zst, a folder):
//   - tokenizer-train -> a tokenizer.json that loads; tokenize -> a dataset whose documents
//     decode back to the input texts; stats (table and --json); clean removes planted exact
//     duplicates; `frugal train` trains on the dataset with the real tokenizer and loader.
//   - Bad inputs (binary garbage with NULs, an empty file, invalid UTF-8, a document larger than
//     --max-document-mb, a truncated .zst, WordPiece / Unigram / malformed tokenizer.json, another
//     tokenizer's dataset, existing outputs, unknown commands, missing options): each is either a
//     counted skip in the printed summary or a non-zero exit with exactly one "frugal: ..." line
//     on stderr naming the file, and nothing is written at --out (an existing dataset stays
//     byte-identical).
//   - With ../shared/data present: real text through tokenizer-train, tokenize and stats --verify.
#include <gtest/gtest.h>
#include <unistd.h>
#include <zstd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/cli_test_util.h"
#include "data/shards/dataset.h"
#include "data/tokenizer/tokenizer.h"

namespace {

namespace fs = std::filesystem;

using namespace ::frugal::testing;


std::string join_documents(const std::vector<std::string>& documents) {
  std::string text;
  for (size_t i = 0; i < documents.size(); ++i) text += (i ? "\n<|endoftext|>\n" : "") + documents[i];
  return text + "\n";
}

std::string jsonl_of(const std::vector<std::string>& documents) {
  std::string text;
  for (const std::string& d : documents) text += nlohmann::json{{"text", d}}.dump() + "\n";
  return text;
}

// English-like documents from a fixed word list (deterministic).
std::vector<std::string> make_documents(int count, uint32_t seed) {
  const char* words[] = {"the",   "cat",  "sat",    "on",     "a",     "mat",    "dog",  "ran",
                         "over",  "hill", "river",  "slowly", "bright", "morning", "and", "then",
                         "found", "old",  "bridge", "near",   "town",  "quiet",  "tree", "with"};
  std::mt19937 rng(seed);
  std::vector<std::string> documents;
  for (int d = 0; d < count; ++d) {
    std::string text;
    const int sentences = 2 + static_cast<int>(rng() % 4);
    for (int s = 0; s < sentences; ++s) {
      const int n = 6 + static_cast<int>(rng() % 10);
      for (int w = 0; w < n; ++w) text += std::string(w ? " " : "") + words[rng() % 24];
      text += s + 1 < sentences ? ".\n" : ".";
    }
    documents.push_back(text);
  }
  return documents;
}

class DataCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / fmt::format("frugal_test_data_cli_{}", ::getpid());
    fs::remove_all(root_);
    fs::create_directories(root_ / "corpus/folder");
    a_docs_ = make_documents(12, 1);
    write_bytes(root_ / "corpus/a.txt", join_documents(a_docs_));
    // 12 records and one malformed line (counted and skipped).
    write_bytes(root_ / "corpus/b.jsonl",
                jsonl_of(make_documents(6, 2)) + "{\"text\": \"unterminated\n" +
                    jsonl_of(make_documents(6, 3)));
    write_bytes(root_ / "corpus/c.txt.zst", zstd_compress(join_documents(make_documents(12, 4))));
    write_bytes(root_ / "corpus/folder/d.txt", join_documents(make_documents(6, 5)));
    write_bytes(root_ / "corpus/folder/e.jsonl.zst", zstd_compress(jsonl_of(make_documents(6, 6))));
    write_bytes(root_ / "corpus/folder/ignored.csv", "not,a,document\n");
    const std::string zst = zstd_compress(join_documents(make_documents(200, 12)));
    write_bytes(root_ / "truncated.txt.zst", zst.substr(0, zst.size() / 2));

    Result r = run("data tokenizer-train corpus/a.txt corpus/b.jsonl corpus/c.txt.zst corpus/folder "
                   "--vocab-size 330 --out tok.json --threads 1");
    ASSERT_EQ(r.code, 0) << r.err;
    r = run("data tokenize corpus --tokenizer tok.json --out ds --threads 1");
    ASSERT_EQ(r.code, 0) << r.err;
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  static Result run(const std::string& args) { return run_frugal(root_, args); }

  static std::string train_args(const std::string& dataset, const std::string& tokenizer,
                                int64_t vocab, const std::string& out_dir) {
    return fmt::format(
        "train '{}/configs/tiny.toml' --data.train_path={} --data.tokenizer={} "
        "--model.vocab_size={} --model.bos_token_id=0 --model.eos_token_id=1 --train.out_dir={} "
        "--train.steps=2 --train.seq_len=32 --train.micro_batch=2 --train.batch_sequences=4 "
        "--train.eval_every=2 --train.eval_batches=1 --train.log_every=1 --train.threads=1",
        FRUGAL_SOURCE_DIR, dataset, tokenizer, vocab, out_dir);
  }

  static void expect_one_error_line(const Result& r, const std::string& needle,
                                    const std::string& what) {
    EXPECT_NE(r.code, 0) << what;
    auto lines = lines_of(r.err);
    ASSERT_EQ(lines.size(), 1u) << what << ": stderr was:\n" << r.err;
    EXPECT_EQ(lines[0].rfind("frugal: ", 0), 0u) << what << ": " << lines[0];
    EXPECT_NE(lines[0].find(needle), std::string::npos) << what << ": " << lines[0];
  }

  // No staging directory of a failed tokenize is left next to the outputs.
  static void expect_no_leftovers(const std::string& what) {
    for (auto& entry : fs::directory_iterator(root_))
      EXPECT_EQ(entry.path().filename().string().find(".partial-"), std::string::npos)
          << what << " left " << entry.path();
  }

  static fs::path root_;
  static std::vector<std::string> a_docs_;
};

fs::path DataCli::root_;
std::vector<std::string> DataCli::a_docs_;

TEST_F(DataCli, TokenizerTrainTokenizeStats) {
  // The tokenizer of SetUpTestSuite: loads, has the requested size and DeepSeek's special ids.
  const frugal::Tokenizer tokenizer = frugal::Tokenizer::from_file((root_ / "tok.json").string());
  EXPECT_EQ(tokenizer.vocab_size(), 330);
  EXPECT_EQ(tokenizer.bos_id(), 0);
  EXPECT_EQ(tokenizer.eos_id(), 1);
  // Training again reports what it read: 12 + 12 + 12 + 6 + 6 documents, 1 malformed line.
  Result r = run("data tokenizer-train corpus --vocab-size 330 --out tok_again.json --threads 1");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_NE(r.out.find("read 48 documents"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("from 5 files"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("skipped 1 malformed JSONL line"), std::string::npos) << r.out;
  EXPECT_EQ(read_bytes(root_ / "tok_again.json"), read_bytes(root_ / "tok.json"))
      << "training on the folder and on the files listed one by one differ";
  // A vocabulary larger than the text supports stops early and says so.
  r = run("data tokenizer-train corpus/a.txt --vocab-size 5000 --out tok_short.json --threads 1");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("not --vocab-size 5000: no pair left to merge"), std::string::npos) << r.out;

  // The dataset: 48 documents in input order; the first decodes to the first input document.
  frugal::Dataset dataset = frugal::Dataset::open((root_ / "ds").string());
  dataset.verify();
  EXPECT_EQ(dataset.num_documents(), 48);
  EXPECT_EQ(dataset.tokenizer_hash(), fmt::format("{:016x}", tokenizer.hash()));
  EXPECT_STREQ(dataset.dtype(), "uint16");
  EXPECT_EQ(tokenizer.decode(dataset.doc(0).to_vector()), a_docs_[0]);
  EXPECT_EQ(tokenizer.decode(dataset.doc(11).to_vector()), a_docs_[11]);

  r = run("data tokenize corpus/a.txt --tokenizer tok.json --out ds_a --threads 1");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_NE(r.out.find("tokens stored as uint16"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("wrote ds_a: 12 documents"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("skipped"), std::string::npos) << r.out;

  r = run("data stats ds");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("documents            48"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(fmt::format("tokens               {}", dataset.num_tokens())),
            std::string::npos)
      << r.out;
  r = run("data stats ds --json --verify");
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json stats = nlohmann::json::parse(r.out);
  EXPECT_EQ(stats["documents"], 48);
  EXPECT_EQ(stats["tokens"], dataset.num_tokens());
  EXPECT_EQ(stats["vocab_size"], 330);
  EXPECT_EQ(stats["tokenizer_hash"], dataset.tokenizer_hash());
}

TEST_F(DataCli, TrainUsesTheTokenizerAndDataset) {
  Result r = run(train_args("ds", "tok.json", 330, "run_tok"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_NE(r.out.find("data: 1 token dataset(s), 48 documents"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("step 2/2 | loss "), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(root_ / "run_tok/checkpoint-00000002/model.safetensors"));
}

TEST_F(DataCli, TrainRefusesAnotherTokenizer) {
  Result r = run("data tokenizer-train corpus --vocab-size 320 --out tok_other.json --threads 1");
  ASSERT_EQ(r.code, 0) << r.err;
  const frugal::Tokenizer other = frugal::Tokenizer::from_file((root_ / "tok_other.json").string());
  const std::string other_hash = fmt::format("{:016x}", other.hash());
  const std::string dataset_hash = frugal::Dataset::open((root_ / "ds").string()).tokenizer_hash();
  ASSERT_NE(other_hash, dataset_hash);

  r = run(train_args("ds", "tok_other.json", 330, "run_refused"));
  expect_one_error_line(r, "tok_other.json", "another tokenizer");
  EXPECT_NE(r.err.find(other_hash), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(dataset_hash), std::string::npos) << r.err;
  EXPECT_EQ(r.out, "");
  r = run(train_args("ds", "bytes", 330, "run_refused"));
  expect_one_error_line(r, "data.tokenizer", "bytes tokenizer on a token dataset");
  EXPECT_EQ(r.out, "");
  r = run(train_args("ds", "tok.json", 300, "run_refused"));
  expect_one_error_line(r, "model.vocab_size", "model vocabulary smaller than the tokenizer's");
  EXPECT_FALSE(fs::exists(root_ / "run_refused"));
}

TEST_F(DataCli, CleanRemovesPlantedExactDuplicates) {
  // Distinct documents of random letter words (no near duplicates), three planted copies.
  std::mt19937 rng(7);
  std::vector<std::string> documents;
  for (int d = 0; d < 20; ++d) {
    std::string text;
    for (int w = 0; w < 100; ++w) {
      text += w ? " " : "";
      for (int c = 2 + static_cast<int>(rng() % 6); c > 0; --c) text += static_cast<char>('a' + rng() % 26);
    }
    documents.push_back(text + ".");
  }
  std::vector<std::string> with_copies = documents;
  for (int i : {3, 7, 3}) with_copies.push_back(documents[i]);
  write_bytes(root_ / "dups.txt", join_documents(with_copies));

  Result r = run("data clean dups.txt --out cleaned.txt --language other --threads 1 "
                 "--report clean_report.json");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("exact_duplicate"), std::string::npos) << r.out;
  const nlohmann::json report = nlohmann::json::parse(read_bytes(root_ / "clean_report.json"));
  EXPECT_EQ(report["documents_in"], 23);
  EXPECT_EQ(report["documents_out"], 20);
  EXPECT_EQ(report["removed"]["exact_duplicate"]["documents"], 3);
  EXPECT_EQ(read_bytes(root_ / "cleaned.txt"), join_documents(documents));

  // An existing output is kept unless --overwrite.
  const std::string before = read_bytes(root_ / "cleaned.txt");
  r = run("data clean corpus/a.txt --out cleaned.txt --language other");
  expect_one_error_line(r, "cleaned.txt", "clean into an existing file");
  EXPECT_EQ(read_bytes(root_ / "cleaned.txt"), before);
}

TEST_F(DataCli, RepairableAndSkippedInputsAreCounted) {
  // Random bytes with NULs and invalid UTF-8: tokenized as U+FFFD and counted.
  std::mt19937 rng(11);
  std::string garbage(20000, '\0');
  for (char& c : garbage) c = static_cast<char>(rng() % 4 == 0 ? 0 : rng() % 256);
  write_bytes(root_ / "garbage.txt", garbage);
  Result r = run("data tokenize garbage.txt --tokenizer tok.json --out ds_garbage --threads 1");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_NE(r.out.find("1 documents had invalid UTF-8"), std::string::npos) << r.out;
  frugal::Dataset::open((root_ / "ds_garbage").string()).verify();
  r = run("data tokenizer-train garbage.txt --vocab-size 300 --out tok_garbage.json --threads 1");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("1 with invalid UTF-8"), std::string::npos) << r.out;

  // Invalid UTF-8 in ordinary text: U+FFFD in the decoded document.
  write_bytes(root_ / "latin1.txt", "caf\xe9 and na\xefve text\n");
  r = run("data tokenize latin1.txt --tokenizer tok.json --out ds_latin1 --threads 1");
  ASSERT_EQ(r.code, 0) << r.err;
  const frugal::Tokenizer tokenizer = frugal::Tokenizer::from_file((root_ / "tok.json").string());
  EXPECT_EQ(tokenizer.decode(frugal::Dataset::open((root_ / "ds_latin1").string()).doc(0).to_vector()),
            "caf\xef\xbf\xbd and na\xef\xbf\xbdve text");

  // A 3 MB line (text) and a 3 MB record (JSONL) next to normal documents, with a 1 MB limit.
  write_bytes(root_ / "huge_line.txt", std::string(3 << 20, 'x'));
  write_bytes(root_ / "huge_record.jsonl",
              nlohmann::json{{"text", std::string(3 << 20, 'y')}}.dump() + "\n" +
                  jsonl_of(make_documents(2, 9)));
  r = run("data tokenize corpus/a.txt huge_line.txt huge_record.jsonl --tokenizer tok.json "
          "--out ds_huge --max-document-mb 1 --threads 1");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("wrote ds_huge: 14 documents"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("skipped 2 documents larger than --max-document-mb"), std::string::npos)
      << r.out;
  r = run("data tokenizer-train corpus/a.txt huge_line.txt huge_record.jsonl --vocab-size 300 "
          "--out tok_huge.json --max-document-mb 1 --threads 1");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("read 14 documents"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("skipped 2 documents larger than --max-document-mb"), std::string::npos)
      << r.out;
  // Text documents over the limit made of many short lines are skipped too.
  std::string many_lines;
  while (many_lines.size() < (size_t{3} << 20)) many_lines += "a short line of text\n";
  write_bytes(root_ / "long_document.txt", many_lines + "<|endoftext|>\nshort one\n");
  r = run("data tokenize long_document.txt --tokenizer tok.json --out ds_long --max-document-mb 1 "
          "--threads 1");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("wrote ds_long: 1 documents"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("skipped 1 document larger than --max-document-mb"), std::string::npos)
      << r.out;
}

TEST_F(DataCli, BadInputsGiveOneLineAndWriteNothing) {
  write_bytes(root_ / "empty.txt", "");
  write_bytes(root_ / "only_huge.txt", std::string(3 << 20, 'x'));
  write_bytes(root_ / "binary.jsonl", std::string("\x01\x00\xff{\x00garbage\n\x7f\x80\n", 16));
  // tokenizer.json files of unsupported model types, and a malformed one.
  nlohmann::json json = nlohmann::json::parse(read_bytes(root_ / "tok.json"));
  json["model"] = {{"type", "WordPiece"}, {"unk_token", "[UNK]"}, {"vocab", {{"[UNK]", 0}}}};
  write_bytes(root_ / "wordpiece.json", json.dump());
  json["model"] = {{"type", "Unigram"}, {"unk_id", 0}, {"vocab", {{"<unk>", 0.0}}}};
  write_bytes(root_ / "unigram.json", json.dump());
  write_bytes(root_ / "malformed.json", read_bytes(root_ / "tok.json").substr(0, 300));

  struct Case {
    std::string args, needle;
  };
  const std::string tokenize = "data tokenize --out bad_out --threads 1 ";
  const std::string train = "data tokenizer-train --vocab-size 300 --out bad_out --threads 1 ";
  const std::vector<Case> cases = {
      {tokenize + "empty.txt --tokenizer tok.json", "empty.txt"},
      {tokenize + "only_huge.txt --tokenizer tok.json --max-document-mb 1", "only_huge.txt"},
      {tokenize + "binary.jsonl --tokenizer tok.json", "binary.jsonl"},
      {tokenize + "truncated.txt.zst --tokenizer tok.json", "truncated.txt.zst"},
      // A failure after good input leaves no partial dataset behind.
      {tokenize + "corpus/a.txt truncated.txt.zst --tokenizer tok.json", "truncated.txt.zst"},
      {tokenize + "corpus/a.txt --tokenizer wordpiece.json", "wordpiece.json: model type 'WordPiece'"},
      {tokenize + "corpus/a.txt --tokenizer unigram.json", "unigram.json: model type 'Unigram'"},
      {tokenize + "corpus/a.txt --tokenizer malformed.json", "malformed.json"},
      {tokenize + "corpus/a.txt --tokenizer missing.json", "missing.json"},
      {tokenize + "missing.txt --tokenizer tok.json", "missing.txt"},
      {tokenize + "corpus/a.txt --tokenizer tok.json --max-document-mb 0", "--max-document-mb"},
      {tokenize + "corpus/a.txt", "--tokenizer"},
      {"data tokenize corpus/a.txt --tokenizer tok.json", "--out"},
      {"data tokenize --tokenizer tok.json --out bad_out", "input"},
      {train + "empty.txt", "empty.txt"},
      {train + "only_huge.txt --max-document-mb 1", "only_huge.txt"},
      {train + "binary.jsonl", "binary.jsonl"},
      {train + "truncated.txt.zst", "truncated.txt.zst"},
      {"data tokenizer-train corpus --vocab-size 100 --out bad_out", "--vocab-size 100"},
      {"data tokenizer-train corpus --out bad_out", "--vocab-size"},
      {"data tokenizer-train corpus --vocab-size 300", "--out"},
      {"data tokenizer-train corpus --vocab-size 300 --out bad_out --pre-tokenizer bert", "bert"},
      {"data clean truncated.txt.zst --out bad_out.txt", "truncated.txt.zst"},
      {"data clean corpus/a.txt", "--out"},
      {"data stats", "one dataset directory"},
      {"data stats corpus", "corpus"},
      {"data bogus", "bogus"},
      {"data tokenize corpus/a.txt --tokenizer tok.json --out bad_out --bogus", "--bogus"},
  };
  for (const Case& c : cases) {
    Result r = run(c.args);
    expect_one_error_line(r, c.needle, c.args);
    EXPECT_FALSE(fs::exists(root_ / "bad_out")) << c.args << " wrote its output";
    EXPECT_FALSE(fs::exists(root_ / "bad_out.txt")) << c.args << " wrote its output";
    expect_no_leftovers(c.args);
  }
  // Folders created for --out are removed again.
  Result nested = run("data tokenize corpus/a.txt truncated.txt.zst --tokenizer tok.json "
                      "--out nested/deeper/bad_out");
  expect_one_error_line(nested, "truncated.txt.zst", "nested --out");
  EXPECT_FALSE(fs::exists(root_ / "nested"));
  Result bare = run("data");
  EXPECT_EQ(bare.code, 2);
  EXPECT_NE(bare.err.find("usage: frugal data"), std::string::npos) << bare.err;
}

TEST_F(DataCli, ExistingOutputsAreKept) {
  Result r = run("data tokenize corpus/a.txt --tokenizer tok.json --out ds_kept --threads 1");
  ASSERT_EQ(r.code, 0) << r.err;
  write_bytes(root_ / "ds_kept/notes.txt", "the user's own file\n");
  const auto before = snapshot(root_ / "ds_kept");

  r = run("data tokenize corpus/b.jsonl --tokenizer tok.json --out ds_kept --threads 1");
  expect_one_error_line(r, "ds_kept", "tokenize into an existing dataset");
  EXPECT_NE(r.err.find("--overwrite"), std::string::npos) << r.err;
  EXPECT_TRUE(snapshot(root_ / "ds_kept") == before);
  // With --overwrite, a failing input still leaves the old dataset whole.
  r = run("data tokenize corpus/b.jsonl truncated.txt.zst --tokenizer tok.json "
          "--out ds_kept --overwrite --threads 1");
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(snapshot(root_ / "ds_kept") == before);
  expect_no_leftovers("failed --overwrite");
  // A successful --overwrite replaces the dataset and keeps other files.
  r = run("data tokenize corpus/b.jsonl --tokenizer tok.json --out ds_kept --overwrite --threads 1");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(frugal::Dataset::open((root_ / "ds_kept").string()).num_documents(), 12);
  EXPECT_EQ(read_bytes(root_ / "ds_kept/notes.txt"), "the user's own file\n");

  const std::string tokenizer_before = read_bytes(root_ / "tok.json");
  r = run("data tokenizer-train corpus --vocab-size 300 --out tok.json --threads 1");
  expect_one_error_line(r, "tok.json", "tokenizer-train onto an existing file");
  EXPECT_NE(r.err.find("--overwrite"), std::string::npos) << r.err;
  EXPECT_EQ(read_bytes(root_ / "tok.json"), tokenizer_before);
}

// Real text from ../shared/data (absent in a fresh clone): a tokenizer learned on Shakespeare
// encodes TinyStories (blank lines separate the stories) and the dataset verifies.
TEST_F(DataCli, SharedCorpora) {
  const fs::path data = fs::path(FRUGAL_SOURCE_DIR) / ".." / "shared" / "data";
  const fs::path shakespeare = data / "tinyshakespeare.txt.zst";
  const fs::path stories = data / "tinystories_valid_sample.txt.zst";
  if (!fs::exists(shakespeare) || !fs::exists(stories))
    GTEST_SKIP() << "no " << data << " (the shared corpora are not part of the repository)";
  Result r = run(fmt::format("data tokenizer-train '{}' --vocab-size 1000 --out tok_real.json "
                             "--threads 1",
                             shakespeare.string()));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("read 1 documents, 1.1 MB"), std::string::npos) << r.out;
  r = run(fmt::format("data tokenize '{}' --tokenizer tok_real.json --out ds_real --paragraphs "
                      "--threads 1",
                      stories.string()));
  ASSERT_EQ(r.code, 0) << r.err;
  frugal::Dataset dataset = frugal::Dataset::open((root_ / "ds_real").string());
  dataset.verify();
  EXPECT_GT(dataset.num_documents(), 1000);  // paragraphs of about 1,000 stories
  // A BPE of 1000 ids compresses English to well under one token per byte.
  const double bytes_per_token = 794375.0 / static_cast<double>(dataset.num_tokens());
  EXPECT_GT(bytes_per_token, 2.0);
  EXPECT_LT(bytes_per_token, 6.0);
  const frugal::Tokenizer tokenizer = frugal::Tokenizer::from_file((root_ / "tok_real.json").string());
  EXPECT_EQ(tokenizer.decode(dataset.doc(0).to_vector()).rfind("Spot. Spot saw the shiny car", 0), 0u);
}

}  // namespace
