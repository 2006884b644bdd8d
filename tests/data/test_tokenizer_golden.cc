// Parity with the Hugging Face `tokenizers` library on the files of
// tools/make_tokenizer_golden.py, committed under tests/golden/tokenizers/: every
// <case>.tokenizer.json is loaded with its <case>.samples.json and every sample must encode to
// exactly tokenizers' ids (with and without add_special_tokens) and decode to tokenizers' text;
// decode(encode(x)) == x wherever tokenizers round-trips too. With ../shared/data present, the
// eval slice must give tokenizers' token count exactly, and retraining each case with train_bpe
// on the same documents must reach tokenizers' bytes/token within 2% (the number of identical
// leading merges is printed). Skips with a message when the folder has no golden files.
#include <gtest/gtest.h>

#include <chrono>
#include <set>

#include "data/tokenizer/bpe_trainer.h"
#include "io/text_file.h"
#include "tokenizer_test_util.h"

namespace frugal {
namespace {

namespace fs = std::filesystem;
using Ids = std::vector<int32_t>;

struct GoldenCase {
  std::string name;
  std::string tokenizer_path;
  nlohmann::json samples;
};

std::vector<GoldenCase> golden_cases() {
  std::vector<GoldenCase> cases;
  const fs::path dir = fs::path(FRUGAL_SOURCE_DIR) / "tests" / "golden" / "tokenizers";
  if (!fs::is_directory(dir)) return cases;
  const std::string suffix = ".tokenizer.json";
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string file = entry.path().filename().string();
    if (file.size() <= suffix.size() || file.compare(file.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    GoldenCase c;
    c.name = file.substr(0, file.size() - suffix.size());
    c.tokenizer_path = entry.path().string();
    const fs::path samples = dir / (c.name + ".samples.json");
    FRUGAL_CHECK(fs::exists(samples), "{} has no {}", c.tokenizer_path, samples.string());
    c.samples = nlohmann::json::parse(read_text_file(samples.string()));
    cases.push_back(std::move(c));
  }
  std::sort(cases.begin(), cases.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return cases;
}

Ids ids_of(const nlohmann::json& array) { return array.get<Ids>(); }

TEST(TokenizerGolden, SamplesMatchTokenizersLibrary) {
  const std::vector<GoldenCase> cases = golden_cases();
  if (cases.empty())
    GTEST_SKIP() << "no tests/golden/tokenizers/*.tokenizer.json: run tools/make_tokenizer_golden.py "
                    "where `tokenizers` is installed and commit its output there";
  for (const GoldenCase& c : cases) {
    const Tokenizer tokenizer = Tokenizer::from_file(c.tokenizer_path);
    const nlohmann::json& samples = c.samples.at("samples");
    std::set<std::string> differs;
    for (const auto& name : c.samples.value("decode_differs_from_text", nlohmann::json::array()))
      differs.insert(name.get<std::string>());
    std::vector<std::string> texts;
    size_t checked = 0;
    for (const nlohmann::json& s : samples) {
      const std::string text = s.at("text").get<std::string>();
      const std::string where = c.name + "/" + s.at("name").get<std::string>();
      texts.push_back(text);
      const Ids ids = tokenizer.encode(text, false);
      const Ids ids_special = tokenizer.encode(text, true);
      EXPECT_EQ(ids, ids_of(s.at("ids"))) << where;
      EXPECT_EQ(ids_special, ids_of(s.at("ids_with_special"))) << where;
      EXPECT_EQ(tokenizer.decode(ids_of(s.at("ids"))), s.at("decoded").get<std::string>()) << where;
      EXPECT_EQ(tokenizer.decode(ids_of(s.at("ids_with_special"))),
                s.at("decoded_with_special").get<std::string>()) << where;
      EXPECT_EQ(tokenizer.decode(ids_of(s.at("ids_with_special")), true),
                s.at("decoded_skip_special").get<std::string>()) << where;
      if (!differs.count(s.at("name").get<std::string>())) {
        EXPECT_EQ(tokenizer.decode(ids), text) << where << ": decode(encode(x)) != x";
      }
      ++checked;
    }
    const auto batch = tokenizer.encode_batch(std::span<const std::string>(texts), false, 2);
    for (size_t i = 0; i < texts.size(); ++i) EXPECT_EQ(batch[i], ids_of(samples[i].at("ids"))) << c.name;
    // Saving and reloading keeps the hash and the encoding.
    test::TempDir dir;
    tokenizer.save(dir.file("copy.json"));
    const Tokenizer copy = Tokenizer::from_file(dir.file("copy.json"));
    EXPECT_EQ(copy.hash(), tokenizer.hash()) << c.name;
    EXPECT_EQ(copy.encode_batch(std::span<const std::string>(texts), true, 1),
              tokenizer.encode_batch(std::span<const std::string>(texts), true, 1)) << c.name;
    std::printf("%-18s %zu samples checked (tokenizers %s)\n", c.name.c_str(), checked,
                c.samples.value("tokenizers_version", std::string("?")).c_str());
  }
}

// Documents of a training/eval file spec, built exactly as the golden script does.
std::vector<std::string> spec_documents(const std::string& data, const nlohmann::json& files) {
  std::vector<std::string> docs;
  for (const nlohmann::json& f : files) {
    std::string raw = read_text_file(data + "/" + f.at("name").get<std::string>());
    const auto prefix = f.at("prefix_bytes").get<size_t>();
    if (prefix > 0 && raw.size() > prefix) {
      raw.resize(prefix);
      const size_t newline = raw.rfind('\n');
      if (newline != std::string::npos) raw.resize(newline + 1);
    }
    for (std::string& d : split_corpus_documents(tok::sanitize_utf8(raw))) docs.push_back(std::move(d));
  }
  return docs;
}

std::vector<std::pair<std::string, std::string>> merges_of(const nlohmann::json& tokenizer_json) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const nlohmann::json& m : tokenizer_json.at("model").at("merges")) {
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ');
      out.emplace_back(s.substr(0, space), s.substr(space + 1));
    } else {
      out.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    }
  }
  return out;
}

TEST(TokenizerGolden, EvalCountsAndRetrainingMatchTokenizersLibrary) {
  const std::vector<GoldenCase> cases = golden_cases();
  if (cases.empty()) GTEST_SKIP() << "no tests/golden/tokenizers/*.tokenizer.json";
  const std::string data = test::shared_data_dir();
  if (data.empty()) GTEST_SKIP() << "../shared/data not found: eval and retraining checks skipped";
  for (const GoldenCase& c : cases) {
    const nlohmann::json& eval = c.samples.at("eval");
    const nlohmann::json eval_files = nlohmann::json::array(
        {{{"name", eval.at("file")}, {"prefix_bytes", eval.at("prefix_bytes")}}});
    const std::vector<std::string> eval_docs = spec_documents(data, eval_files);
    const Tokenizer golden = Tokenizer::from_file(c.tokenizer_path);
    size_t bytes = 0, tokens = 0;
    for (const auto& ids : golden.encode_batch(std::span<const std::string>(eval_docs), false, 0))
      tokens += ids.size();
    for (const std::string& d : eval_docs) bytes += d.size();
    EXPECT_EQ(bytes, eval.at("bytes").get<size_t>()) << c.name;
    EXPECT_EQ(tokens, eval.at("tokens").get<size_t>()) << c.name << ": eval token count differs";

    const nlohmann::json& training = c.samples.at("training");
    const std::vector<std::string> docs = spec_documents(data, training.at("files"));
    const nlohmann::json golden_json = nlohmann::json::parse(read_text_file(c.tokenizer_path));
    BpeTrainOptions options;
    options.vocab_size = training.at("vocab_size").get<int64_t>();
    options.min_frequency = training.at("min_frequency").get<int64_t>();
    options.special_tokens = training.at("special_tokens").get<std::vector<std::string>>();
    options.roles = SpecialTokenNames();
    options.roles.bos = options.special_tokens.at(0);
    options.nfc = training.at("nfc").get<bool>();
    options.pre_tokenizer = tok::PreTokenizerConfig::from_json(golden_json.at("pre_tokenizer"), c.tokenizer_path);
    const auto start = std::chrono::steady_clock::now();
    const Tokenizer ours = train_bpe(std::span<const std::string>(docs), options);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    size_t our_tokens = 0;
    for (const auto& ids : ours.encode_batch(std::span<const std::string>(eval_docs), false, 0))
      our_tokens += ids.size();
    const double ours_bpt = static_cast<double>(bytes) / static_cast<double>(our_tokens);
    const double theirs_bpt = eval.at("bytes_per_token").get<double>();
    const auto their_merges = merges_of(golden_json);
    const auto our_merges = merges_of(nlohmann::json::parse(ours.to_json_string()));
    size_t same = 0;
    while (same < their_merges.size() && same < our_merges.size() && their_merges[same] == our_merges[same])
      ++same;
    std::printf("%-18s retrained in %.1f s: bytes/token %.4f (tokenizers %.4f), identical leading "
                "merges %zu of %zu\n", c.name.c_str(), seconds, ours_bpt, theirs_bpt, same,
                their_merges.size());
    EXPECT_NEAR(ours_bpt / theirs_bpt, 1.0, 0.02) << c.name;
  }
}

}  // namespace
}  // namespace frugal
