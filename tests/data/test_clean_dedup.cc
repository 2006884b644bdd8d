// Deduplication: exact-match normalization, shingles, the LSH shape, MinHash estimates, the
// Deduplicator's decisions, and planted exact and near duplicates among ~200 distinct documents
// (real Gutenberg text when ../shared/data is present, generated text always) with recall and
// precision printed and checked, also through clean_corpus.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "data/clean/clean_corpus.h"
#include "data/clean/dedup.h"
#include "data/clean/unicode_text.h"
#include "io/text_file.h"
#include "clean_test_util.h"

namespace frugal::clean {
namespace {

using test::english_like_text;
using test::TestRng;

TEST(CleanDedup, ExactMatchNormalization) {
  EXPECT_EQ(normalize_for_exact_match("  Hello\t\tWORLD \n\n again\u3000"), "hello world again");
  EXPECT_EQ(exact_hash("The Cat\nsat."), exact_hash("  the   cat sat.  "));
  EXPECT_NE(exact_hash("The Cat sat."), exact_hash("The Cat sat!"));
  EXPECT_NE(exact_hash("the cat sat"), exact_hash("thecat sat"));
  // Only ASCII is case-folded.
  EXPECT_NE(exact_hash("\xC3\x89t\xC3\xA9"), exact_hash("\xC3\xA9t\xC3\xA9"));
}

TEST(CleanDedup, Shingles) {
  std::vector<uint64_t> shingles;
  shingle_hashes("The cat, the CAT! \"the\"", 1, shingles);
  EXPECT_EQ(shingles.size(), 2u);  // {the, cat}
  EXPECT_TRUE(std::is_sorted(shingles.begin(), shingles.end()));
  shingle_hashes("a b c a b", 2, shingles);
  EXPECT_EQ(shingles.size(), 3u);  // {a b, b c, c a}
  shingle_hashes("only two", 5, shingles);
  EXPECT_EQ(shingles.size(), 1u);  // fewer words than the shingle size: one shingle
  shingle_hashes("!!! ... ---", 1, shingles);
  EXPECT_TRUE(shingles.empty());
  // CJK characters are words: character bigrams.
  shingle_hashes("\u4E2D\u6587\u6587\u672C", 2, shingles);
  EXPECT_EQ(shingles.size(), 3u);
}

TEST(CleanDedup, LshShapeFavoursRecall) {
  const LshShape shape = choose_lsh_shape(0.8, 128);
  EXPECT_EQ(shape.bands, 18);
  EXPECT_EQ(shape.rows, 7);
  for (double threshold : {0.5, 0.7, 0.8, 0.9, 0.95}) {
    for (int num_perm : {64, 128, 256}) {
      const LshShape s = choose_lsh_shape(threshold, num_perm);
      EXPECT_LE(s.bands * s.rows, num_perm);
      EXPECT_GE(lsh_candidate_probability(threshold, s), 0.98) << threshold << " " << num_perm;
      const LshShape next{num_perm / (s.rows + 1), s.rows + 1};  // one more row misses the target
      if (next.bands > 0) {
        EXPECT_LT(lsh_candidate_probability(threshold, next), 0.98);
      }
      // Far below the threshold, few pairs become candidates.
      EXPECT_LT(lsh_candidate_probability(threshold - 0.4, s), 0.3);
    }
  }
}

TEST(CleanDedup, MinHashEstimatesJaccard) {
  const int n = 256;
  MinHasher hasher(n, 42);
  TestRng rng(5);
  double total_error = 0, max_error = 0;
  const int pairs = 30;
  for (int p = 0; p < pairs; ++p) {
    // A = [0, 1000), B = [shift, shift + 1000): Jaccard (1000 - shift) / (1000 + shift).
    const uint64_t base = rng.next();
    const int shift = static_cast<int>(rng.below(900));
    std::vector<uint64_t> a, b;
    for (int i = 0; i < 1000; ++i) a.push_back((base + i) * 0x9E3779B97F4A7C15ull);
    for (int i = shift; i < shift + 1000; ++i) b.push_back((base + i) * 0x9E3779B97F4A7C15ull);
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    std::vector<uint32_t> sa(n), sb(n);
    hasher.signature(a, sa.data());
    hasher.signature(b, sb.data());
    const double truth = (1000.0 - shift) / (1000.0 + shift);
    const double error = std::abs(estimate_jaccard(sa.data(), sb.data(), n) - truth);
    total_error += error;
    max_error = std::max(max_error, error);
  }
  std::printf("MinHash (256 functions): mean |error| %.4f, max %.4f over %d pairs\n",
              total_error / pairs, max_error, pairs);
  EXPECT_LT(total_error / pairs, 0.03);
  EXPECT_LT(max_error, 0.1);

  // Deterministic for a seed, different across seeds; empty set gives the all-ones signature.
  std::vector<uint64_t> set = {1, 2, 3};
  std::vector<uint32_t> s1(8), s2(8), s3(8);
  MinHasher(8, 7).signature(set, s1.data());
  MinHasher(8, 7).signature(set, s2.data());
  MinHasher(8, 8).signature(set, s3.data());
  EXPECT_EQ(s1, s2);
  EXPECT_NE(s1, s3);
  MinHasher(8, 7).signature({}, s1.data());
  EXPECT_EQ(s1, std::vector<uint32_t>(8, 0xFFFFFFFFu));
}

TEST(CleanDedup, DeduplicatorDecisions) {
  Deduplicator dedup(DedupOptions(), 1);
  const std::string a = english_like_text(1, 300);
  std::string near = a;  // change a few words
  for (const char* word : {" the ", " of ", " and "}) {
    const size_t at = near.find(word);
    ASSERT_NE(at, std::string::npos);
    near.replace(at, std::string(word).size(), " zanzibar ");
  }
  std::string shouted = a;
  for (char& c : shouted) c = static_cast<char>(std::toupper(c));

  const DedupDecision first = dedup.add(dedup.fingerprint(a));
  EXPECT_EQ(first.verdict, DedupVerdict::unique);
  EXPECT_EQ(first.index, 0);
  const DedupDecision exact = dedup.add(dedup.fingerprint("  " + shouted + "\n"));
  EXPECT_EQ(exact.verdict, DedupVerdict::exact_duplicate);
  EXPECT_EQ(exact.index, 0);
  const DedupDecision close = dedup.add(dedup.fingerprint(near));
  EXPECT_EQ(close.verdict, DedupVerdict::near_duplicate);
  EXPECT_EQ(close.index, 0);
  EXPECT_GE(close.similarity, 0.8);
  EXPECT_LT(close.similarity, 1.0 + 1e-12);
  const DedupDecision other = dedup.add(dedup.fingerprint(english_like_text(2, 300)));
  EXPECT_EQ(other.verdict, DedupVerdict::unique);
  EXPECT_EQ(other.index, 1);
  // No words, no shingles: never a near duplicate (but still exact-matched).
  EXPECT_EQ(dedup.add(dedup.fingerprint("!!! ---")).verdict, DedupVerdict::unique);
  EXPECT_EQ(dedup.add(dedup.fingerprint("??? ...")).verdict, DedupVerdict::unique);
  EXPECT_EQ(dedup.add(dedup.fingerprint("!!!   ---")).verdict, DedupVerdict::exact_duplicate);
  EXPECT_EQ(dedup.kept_documents(), 4);
  EXPECT_GT(dedup.candidate_checks(), 0);

  DedupOptions exact_only;
  exact_only.near = false;
  Deduplicator exact_dedup(exact_only, 1);
  exact_dedup.add(exact_dedup.fingerprint(a));
  EXPECT_EQ(exact_dedup.add(exact_dedup.fingerprint(near)).verdict, DedupVerdict::unique);
  EXPECT_EQ(exact_dedup.add(exact_dedup.fingerprint(shouted)).verdict,
            DedupVerdict::exact_duplicate);
}

TEST(CleanDedup, ManySmallDocumentsStayCompact) {
  Deduplicator dedup(DedupOptions(), 1);
  const int documents = 20000;
  int duplicates = 0;
  for (int i = 0; i < documents; ++i) {
    duplicates += dedup.add(dedup.fingerprint(english_like_text(10000 + i, 40))).verdict !=
                  DedupVerdict::unique;
  }
  const double bytes_per_document = static_cast<double>(dedup.memory_bytes()) / documents;
  std::printf("%d distinct 40-word documents: %d flagged, index %.0f bytes per document, %lld "
              "candidate pairs checked\n",
              documents, duplicates, bytes_per_document,
              static_cast<long long>(dedup.candidate_checks()));
  EXPECT_LE(duplicates, documents / 1000);
  EXPECT_LT(bytes_per_document, 1024);
}

// ---- planted duplicates ----

enum class Plant { original, exact_copy, near_5, near_10 };

struct PlantedDocument {
  std::string text;
  int cluster;
  Plant kind;
};

std::vector<std::string> split_paragraphs(const std::string& text) {
  std::vector<std::string> paragraphs;
  std::string current;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (trim_space(line).empty()) {
      if (!current.empty()) paragraphs.push_back(current);
      current.clear();
    } else {
      current += (current.empty() ? "" : "\n") + line;
    }
  }
  if (!current.empty()) paragraphs.push_back(current);
  return paragraphs;
}

std::vector<std::string> split_on_space(const std::string& text) {
  std::vector<std::string> words;
  std::istringstream in(text);
  std::string word;
  while (in >> word) words.push_back(word);
  return words;
}

// Replaces `rate` of the words by random vocabulary words and swaps two adjacent paragraphs.
std::string near_copy(const std::string& text, double rate, const std::vector<std::string>& vocab,
                      TestRng& rng) {
  std::vector<std::vector<std::string>> paragraphs;
  size_t total = 0;
  for (const std::string& p : split_paragraphs(text)) {
    paragraphs.push_back(split_on_space(p));
    total += paragraphs.back().size();
  }
  const size_t changes = static_cast<size_t>(std::lround(rate * static_cast<double>(total)));
  std::set<size_t> chosen;
  while (chosen.size() < changes) chosen.insert(rng.below(total));
  size_t index = 0;
  for (auto& paragraph : paragraphs) {
    for (std::string& word : paragraph) {
      if (chosen.count(index++)) {
        std::string replacement;
        do replacement = vocab[rng.below(vocab.size())];
        while (replacement == word);
        word = replacement;
      }
    }
  }
  if (paragraphs.size() >= 2) {
    const size_t at = rng.below(paragraphs.size() - 1);
    std::swap(paragraphs[at], paragraphs[at + 1]);
  }
  std::string out;
  for (const auto& paragraph : paragraphs) {
    if (!out.empty()) out += "\n\n";
    for (size_t i = 0; i < paragraph.size(); ++i) out += (i ? " " : "") + paragraph[i];
  }
  return out;
}

// Same words, different case and spacing: an exact duplicate after normalization.
std::string exact_variant(const std::string& text) {
  std::string out = "  ";
  for (char c : text) {
    if (c == ' ') out += "  ";
    else out += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  }
  return out + "\n\n";
}

std::vector<PlantedDocument> plant(const std::vector<std::string>& base, uint64_t seed) {
  std::vector<std::string> vocab;
  {
    std::set<std::string> words;
    for (const std::string& doc : base) {
      for (const std::string& w : split_on_space(doc)) words.insert(w);
    }
    vocab.assign(words.begin(), words.end());
  }
  TestRng rng(seed);
  std::vector<PlantedDocument> docs;
  for (size_t i = 0; i < base.size(); ++i) docs.push_back({base[i], static_cast<int>(i), Plant::original});
  auto add_copies = [&](int count, Plant kind) {
    for (int c = 0; c < count; ++c) {
      const int cluster = static_cast<int>(rng.below(base.size()));
      std::string text = kind == Plant::exact_copy
                             ? exact_variant(base[cluster])
                             : near_copy(base[cluster], kind == Plant::near_5 ? 0.05 : 0.10, vocab, rng);
      docs.push_back({std::move(text), cluster, kind});
    }
  };
  add_copies(30, Plant::exact_copy);
  add_copies(50, Plant::near_5);
  add_copies(20, Plant::near_10);
  // Shuffle, then put each original first among its cluster (the one dedup should keep).
  for (size_t i = docs.size() - 1; i > 0; --i) std::swap(docs[i], docs[rng.below(i + 1)]);
  for (size_t i = 0; i < docs.size(); ++i) {
    if (docs[i].kind != Plant::original) continue;
    for (size_t j = 0; j < i; ++j) {
      if (docs[j].cluster == docs[i].cluster) {
        std::swap(docs[i], docs[j]);
        break;
      }
    }
  }
  return docs;
}

struct PlantedScores {
  double precision, exact_recall, near5_recall, near10_recall;
  std::vector<bool> kept;
};

PlantedScores score(const std::vector<PlantedDocument>& docs, const std::string& label) {
  Deduplicator dedup(DedupOptions(), 1);
  std::vector<int> kept_cluster;  // cluster of each kept document, by kept index
  int flagged = 0, correct = 0, exact_found = 0, near5_found = 0, near10_found = 0;
  int exact_total = 0, near5_total = 0, near10_total = 0, originals_flagged = 0;
  PlantedScores s{};
  for (const PlantedDocument& doc : docs) {
    const DedupDecision d = dedup.add(dedup.fingerprint(doc.text));
    exact_total += doc.kind == Plant::exact_copy;
    near5_total += doc.kind == Plant::near_5;
    near10_total += doc.kind == Plant::near_10;
    s.kept.push_back(d.verdict == DedupVerdict::unique);
    if (d.verdict == DedupVerdict::unique) {
      kept_cluster.push_back(doc.cluster);
      continue;
    }
    ++flagged;
    correct += kept_cluster[d.index] == doc.cluster;
    originals_flagged += doc.kind == Plant::original;
    exact_found += doc.kind == Plant::exact_copy && d.verdict == DedupVerdict::exact_duplicate;
    near5_found += doc.kind == Plant::near_5;
    near10_found += doc.kind == Plant::near_10;
  }
  s.precision = flagged ? static_cast<double>(correct) / flagged : 1.0;
  s.exact_recall = static_cast<double>(exact_found) / exact_total;
  s.near5_recall = static_cast<double>(near5_found) / near5_total;
  s.near10_recall = static_cast<double>(near10_found) / near10_total;
  std::printf("%s: %zu documents, %d flagged (%d originals); precision %.3f; recall: exact %.3f "
              "(%d), near 5%% words changed %.3f (%d), near 10%% %.3f (%d, not required)\n",
              label.c_str(), docs.size(), flagged, originals_flagged, s.precision, s.exact_recall,
              exact_total, s.near5_recall, near5_total, s.near10_recall, near10_total);
  return s;
}

void check_planted(const std::vector<PlantedDocument>& docs, const std::string& label) {
  const PlantedScores s = score(docs, label);
  EXPECT_GE(s.precision, 0.95);
  EXPECT_EQ(s.exact_recall, 1.0);
  EXPECT_GE(s.near5_recall, 0.9);

  // The same through the pipeline (JSONL with ids, filters off, several threads and batches):
  // exactly the documents the Deduplicator kept come out, in order.
  test::TempDir dir;
  std::string jsonl;
  for (size_t i = 0; i < docs.size(); ++i) {
    jsonl += nlohmann::json{{"id", i}, {"text", docs[i].text}}.dump() + "\n";
  }
  test::write_bytes(dir.file("in/planted.jsonl"), jsonl);
  CleanOptions options;
  options.quality_rules = false;
  options.repetition_rules = false;
  options.threads = 3;
  options.batch_documents = 37;
  const CleanReport report = clean_corpus(options, {dir.file("in")}, dir.file("out.jsonl"));
  std::vector<size_t> expected, got;
  for (size_t i = 0; i < docs.size(); ++i) {
    if (s.kept[i]) expected.push_back(i);
  }
  std::istringstream out(read_text_file(dir.file("out.jsonl")));
  std::string line;
  while (std::getline(out, line)) got.push_back(nlohmann::json::parse(line)["id"].get<size_t>());
  EXPECT_EQ(got, expected);
  EXPECT_EQ(report.documents_out, static_cast<int64_t>(expected.size()));
  EXPECT_EQ(report.removed_by(Rule::exact_duplicate).documents +
                report.removed_by(Rule::near_duplicate).documents,
            static_cast<int64_t>(docs.size() - expected.size()));
}

TEST(CleanDedup, PlantedDuplicatesInGeneratedText) {
  std::vector<std::string> base;
  for (int i = 0; i < 200; ++i) base.push_back(english_like_text(1000 + i, 150 + (i * 37) % 250));
  check_planted(plant(base, 77), "generated text");
}

TEST(CleanDedup, PlantedDuplicatesInGutenbergText) {
  const std::string data = test::shared_data_dir();
  if (data.empty()) GTEST_SKIP() << "../shared/data is absent: real-text planted test skipped";
  const std::string corpus = read_text_file(data + "/gutenberg_en_val.txt.zst");
  // Distinct documents: runs of consecutive paragraphs (150-600 words) taken 10 paragraphs apart
  // after the first 30 of each book, at most 18 per book.
  std::vector<std::string> base;
  size_t begin = 0;
  while (begin < corpus.size() && base.size() < 200) {
    size_t end = corpus.find("\n<|endoftext|>\n", begin);
    if (end == std::string::npos) end = corpus.size();
    const std::vector<std::string> paragraphs = split_paragraphs(corpus.substr(begin, end - begin));
    size_t taken = 0;
    for (size_t p = 30; p < paragraphs.size() && taken < 18 && base.size() < 200;) {
      std::string doc;
      size_t words = 0;
      while (p < paragraphs.size() && words < 150) {
        const size_t w = split_on_space(paragraphs[p]).size();
        if (words + w > 600) break;
        doc += (doc.empty() ? "" : "\n\n") + paragraphs[p++];
        words += w;
      }
      if (words >= 150) {
        base.push_back(doc);
        ++taken;
      }
      p += 10;
    }
    begin = end + 15;
  }
  ASSERT_GE(base.size(), 150u);
  check_planted(plant(base, 78), "Gutenberg text");
}

}  // namespace
}  // namespace frugal::clean
