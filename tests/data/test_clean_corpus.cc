// Streaming I/O and the clean_corpus pipeline: line reading across chunks, .zst in and out,
// .txt document splitting and round trip, JSONL with malformed lines, folders, determinism across
// thread counts and batch sizes, exact byte accounting, truncated/empty/garbage input.
#include <gtest/gtest.h>

#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "data/clean/clean_corpus.h"
#include "data/clean/document_io.h"
#include "data/clean/unicode_text.h"
#include "io/text_file.h"
#include "io/text_stream.h"
#include "clean_test_util.h"

namespace frugal::clean {
namespace {

using test::english_like_text;
using test::error_message;
using test::TempDir;
using test::write_bytes;
using test::zstd_compress;

std::vector<std::string> read_lines(const std::string& path) {
  LineReader reader(path);
  std::vector<std::string> lines;
  std::string_view line;
  while (reader.next(line)) lines.emplace_back(line);
  return lines;
}

std::vector<std::string> read_documents(const std::string& path,
                                        TextDocuments mode = TextDocuments::separator) {
  DocumentReader reader({path}, mode);
  std::vector<RawDocument> batch;
  while (reader.read_batch(batch, 1 << 20, 1000)) {
  }
  std::vector<std::string> docs;
  for (RawDocument& d : batch) docs.push_back(std::move(d.content));
  return docs;
}

void check_accounting(const CleanReport& r) {
  EXPECT_EQ(r.documents_in, r.documents_out + r.documents_removed());
  EXPECT_EQ(r.bytes_in,
            r.bytes_out + r.bytes_removed_by_rules() + r.bytes_removed_by_transforms());
}

// Report JSON without the fields that depend on the machine and the run.
nlohmann::json stable_json(const CleanReport& r) {
  nlohmann::json j = r.to_json();
  j.erase("threads");
  j.erase("seconds");
  j.erase("output");
  return j;
}

TEST(CleanStream, LinesAcrossChunksPlainAndZstd) {
  TempDir dir;
  std::string text = "first\r\n\nthird\n" + std::string(3 << 20, 'x') + "\nafter the long line\nlast";
  write_bytes(dir.file("a.txt"), text);
  write_bytes(dir.file("a.txt.zst"), zstd_compress(text));
  const std::vector<std::string> expected = {"first\r", "", "third", std::string(3 << 20, 'x'),
                                             "after the long line", "last"};
  EXPECT_EQ(read_lines(dir.file("a.txt")), expected);
  EXPECT_EQ(read_lines(dir.file("a.txt.zst")), expected);
  // Concatenated frames and a final newline.
  write_bytes(dir.file("b.zst"), zstd_compress("one\ntw") + zstd_compress("o\n"));
  EXPECT_EQ(read_lines(dir.file("b.zst")), (std::vector<std::string>{"one", "two"}));
  write_bytes(dir.file("empty.txt"), "");
  EXPECT_TRUE(read_lines(dir.file("empty.txt")).empty());
}

TEST(CleanStream, BadZstdNamesTheFile) {
  TempDir dir;
  const std::string compressed = zstd_compress(english_like_text(3, 20000));
  write_bytes(dir.file("cut.txt.zst"), compressed.substr(0, compressed.size() / 2));
  const std::string truncated = error_message([&] { read_lines(dir.file("cut.txt.zst")); });
  EXPECT_NE(truncated.find(dir.file("cut.txt.zst")), std::string::npos) << truncated;
  EXPECT_NE(truncated.find("truncated"), std::string::npos) << truncated;
  write_bytes(dir.file("zero.zst"), "");
  EXPECT_NE(error_message([&] { read_lines(dir.file("zero.zst")); }).find("empty file"),
            std::string::npos);
  write_bytes(dir.file("junk.zst"), "this is not zstd at all");
  EXPECT_NE(error_message([&] { read_lines(dir.file("junk.zst")); }).find("corrupt zstd"),
            std::string::npos);
  EXPECT_NE(error_message([&] { read_lines(dir.file("missing.txt")); }).find("cannot open"),
            std::string::npos);
}

TEST(CleanStream, WriterCompressesAndCommitsAtomically) {
  TempDir dir;
  const std::string text = english_like_text(4, 50000);
  {
    TextStreamWriter writer(dir.file("o.txt.zst"), 5);
    for (size_t i = 0; i < text.size(); i += 1000) writer.write(std::string_view(text).substr(i, 1000));
    EXPECT_FALSE(std::filesystem::exists(dir.file("o.txt.zst")));  // nothing before commit
    writer.commit();
    EXPECT_EQ(writer.bytes_written(), text.size());
  }
  EXPECT_EQ(read_text_file(dir.file("o.txt.zst")), text);
  EXPECT_LT(std::filesystem::file_size(dir.file("o.txt.zst")), text.size() / 2);
  {
    TextStreamWriter abandoned(dir.file("never.txt"));
    abandoned.write("x");
  }
  EXPECT_FALSE(std::filesystem::exists(dir.file("never.txt")));
}

TEST(CleanDocuments, TextSplittingAndRoundTrip) {
  TempDir dir;
  write_bytes(dir.file("a.txt"),
              "<|endoftext|>\nA\n<|endoftext|>\nB1\nB2\n<|endoftext|>\r\n<|endoftext|>\n\nC\n");
  EXPECT_EQ(read_documents(dir.file("a.txt")), (std::vector<std::string>{"A", "B1\nB2", "\nC"}));
  write_bytes(dir.file("plain.txt"), "no separators\n\nat all\n");
  EXPECT_EQ(read_documents(dir.file("plain.txt")),
            (std::vector<std::string>{"no separators\n\nat all"}));
  EXPECT_EQ(read_documents(dir.file("plain.txt"), TextDocuments::paragraph),
            (std::vector<std::string>{"no separators", "at all"}));
  // Whatever the documents, writing then reading gives them back.
  const std::vector<std::string> docs = {"one", "two\n", "", "\nthree\n\n", "four\r\nfive"};
  DocumentWriter writer(dir.file("round.txt.zst"), 3);
  for (const std::string& d : docs) writer.write(d);
  writer.commit();
  EXPECT_EQ(read_documents(dir.file("round.txt.zst")), docs);
}

TEST(CleanDocuments, InputListing) {
  TempDir dir;
  write_bytes(dir.file("in/b.txt"), "b");
  write_bytes(dir.file("in/a/z.jsonl.zst"), zstd_compress("{\"text\": \"z\"}\n"));
  write_bytes(dir.file("in/a/y.txt.zst"), zstd_compress("y"));
  write_bytes(dir.file("in/.hidden.txt"), "h");
  write_bytes(dir.file("in/.git/x.txt"), "x");
  write_bytes(dir.file("in/notes.md"), "m");
  write_bytes(dir.file("in/out.jsonl"), "previous output");
  write_bytes(dir.file("extra.dat"), "given by name");
  const std::vector<std::string> files =
      list_input_files({dir.file("extra.dat"), dir.file("in")}, dir.file("in/out.jsonl"));
  EXPECT_EQ(files, (std::vector<std::string>{dir.file("extra.dat"), dir.file("in/a/y.txt.zst"),
                                             dir.file("in/a/z.jsonl.zst"), dir.file("in/b.txt")}));
  EXPECT_EQ(input_format_of("x.jsonl.zst"), DocumentFormat::jsonl);
  EXPECT_EQ(input_format_of("x.json"), DocumentFormat::text);
  EXPECT_NE(error_message([&] { list_input_files({dir.file("nope")}); }).find("does not exist"),
            std::string::npos);
  std::filesystem::create_directories(dir.file("empty"));
  EXPECT_NE(error_message([&] { list_input_files({dir.file("empty")}); }).find("holds no"),
            std::string::npos);
  EXPECT_NE(error_message([&] { output_format_of("out.csv"); }).find("must end in"),
            std::string::npos);
}

TEST(CleanCorpus, JsonlWithMalformedLines) {
  TempDir dir;
  const std::string good1 = english_like_text(31, 80), good2 = english_like_text(32, 80);
  std::string jsonl;
  jsonl += nlohmann::json{{"id", 1}, {"text", good1}, {"meta", {{"src", "a"}}}}.dump() + "\n";
  jsonl += "{\"id\": 2, \"text\": \"unterminated\n";           // line 2: not JSON
  jsonl += "\n   \n";                                           // lines 3-4: blank, skipped
  jsonl += "[1, 2, 3]\n";                                       // line 5: not an object
  jsonl += "{\"id\": 6}\n";                                     // line 6: no text
  jsonl += "{\"id\": 7, \"text\": 42}\n";                       // line 7: not a string
  jsonl += "{\"zeta\": 0, \"text\": " + nlohmann::json(good2).dump() + ", \"alpha\": 1}\n";
  write_bytes(dir.file("in.jsonl.zst"), zstd_compress(jsonl));
  std::vector<std::string> seen;
  CleanOptions options;
  options.on_warning = [&](const std::string& w) { seen.push_back(w); };
  const CleanReport report = clean_corpus(options, {dir.file("in.jsonl.zst")}, dir.file("out.jsonl"));
  EXPECT_EQ(report.malformed_lines, 4);
  EXPECT_EQ(report.documents_in, 2);
  EXPECT_EQ(report.documents_out, 2);
  ASSERT_EQ(seen.size(), 4u);
  EXPECT_EQ(report.warnings, seen);
  const std::string file = dir.file("in.jsonl.zst");
  EXPECT_EQ(seen[0].rfind(file + ":2: malformed JSON", 0), 0u) << seen[0];
  EXPECT_EQ(seen[1], file + ":5: not a JSON object");
  EXPECT_EQ(seen[2], file + ":6: no field \"text\"");
  EXPECT_EQ(seen[3], file + ":7: field \"text\" is not a string");
  // Other fields and their order are kept.
  const std::vector<std::string> out = read_lines(dir.file("out.jsonl"));
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(nlohmann::json::parse(out[0]),
            (nlohmann::json{{"id", 1}, {"text", good1}, {"meta", {{"src", "a"}}}}));
  EXPECT_EQ(out[1].find("{\"zeta\":0,\"text\":"), 0u) << out[1];
  check_accounting(report);
  // Another text field name.
  write_bytes(dir.file("body.jsonl"), nlohmann::json{{"body", good1}}.dump() + "\n");
  options.jsonl_text_field = "body";
  EXPECT_EQ(clean_corpus(options, {dir.file("body.jsonl")}, dir.file("b.txt")).documents_out, 1);
  EXPECT_EQ(read_text_file(dir.file("b.txt")), good1 + "\n");
}

TEST(CleanCorpus, InvalidUtf8InJsonlAndText) {
  TempDir dir;
  const std::string good = english_like_text(41, 80);
  std::string quoted = nlohmann::json(good + " caf").dump();
  quoted.insert(quoted.size() - 1, "\xE9");  // a Latin-1 byte: invalid UTF-8
  const std::string line = "{\"text\": " + quoted + "}\n";
  write_bytes(dir.file("in.jsonl"), line);
  write_bytes(dir.file("in.txt"), good + " na\xEFve");
  CleanOptions options;
  CleanReport report = clean_corpus(options, {dir.file("in.jsonl"), dir.file("in.txt")},
                                    dir.file("out.jsonl"));
  EXPECT_EQ(report.documents_out, 1);  // the two documents are the same after repair
  EXPECT_EQ(report.removed_by(Rule::near_duplicate).documents, 1);
  EXPECT_EQ(report.transformed_by(Transform::utf8_repair).documents, 2);
  EXPECT_EQ(report.transformed_by(Transform::utf8_repair).bytes, -4);
  EXPECT_NE(read_text_file(dir.file("out.jsonl")).find("caf\xEF\xBF\xBD"), std::string::npos);
  check_accounting(report);
  options.invalid_utf8 = Utf8Policy::drop;
  report = clean_corpus(options, {dir.file("in.jsonl"), dir.file("in.txt")}, dir.file("out.jsonl"));
  EXPECT_EQ(report.documents_out, 0);
  EXPECT_EQ(report.removed_by(Rule::invalid_utf8).documents, 2);
  check_accounting(report);
}

// A corpus touching every stage: good documents, exact and near duplicates, markup, URLs,
// documents failing quality and repetition rules, garbage bytes, in .txt, .txt.zst and .jsonl.
void write_mixed_corpus(const TempDir& dir) {
  std::vector<std::string> docs;
  for (int i = 0; i < 40; ++i) docs.push_back(english_like_text(500 + i, 60 + (i * 13) % 200));
  docs.push_back(docs[3]);                                   // exact duplicate
  docs.push_back("  " + docs[5] + "\n");                    // exact after normalization
  std::string near = docs[7];
  near.replace(near.find(' '), 1, " inserted ");
  docs.push_back(near);                                      // near duplicate
  docs.push_back("<html><body><p>" + english_like_text(600, 90) + "</p><script>x()</script></body>"
                 "</html> see https://example.org and mail a@b.org &amp; more");
  docs.push_back("too short");
  std::string bullets;
  for (int i = 0; i < 30; ++i) bullets += "- " + english_like_text(700 + i, 6) + "\n";
  docs.push_back(bullets);
  docs.push_back(english_like_text(800, 60));
  std::string repeated;
  for (int i = 0; i < 6; ++i) repeated += english_like_text(900 + i % 3, 20) + "\n";
  docs.push_back(repeated);
  test::TestRng rng(9);
  std::string garbage;
  for (int i = 0; i < 5000; ++i) garbage.push_back(static_cast<char>(rng.next()));
  docs.push_back(garbage);
  std::string text_a, text_b, jsonl;
  for (size_t i = 0; i < docs.size(); ++i) {
    if (i % 3 == 0) text_a += (text_a.empty() ? "" : "\n<|endoftext|>\n") + docs[i];
    else if (i % 3 == 1) text_b += (text_b.empty() ? "" : "\n<|endoftext|>\n") + docs[i];
    else jsonl += nlohmann::json{{"n", i}, {"text", repair_utf8(docs[i])}}.dump() + "\n";
  }
  write_bytes(dir.file("in/a.txt"), text_a + "\n");
  write_bytes(dir.file("in/sub/b.txt.zst"), zstd_compress(text_b));
  write_bytes(dir.file("in/c.jsonl"), jsonl);
}

TEST(CleanCorpus, MixedCorpusAccountingAndFormats) {
  TempDir dir;
  write_mixed_corpus(dir);
  CleanOptions options;
  options.remove_urls = true;
  options.remove_emails = true;
  const CleanReport report = clean_corpus(options, {dir.file("in")}, dir.file("out.txt.zst"));
  EXPECT_EQ(report.input_files.size(), 3u);
  EXPECT_EQ(report.documents_in, 49);
  check_accounting(report);
  EXPECT_EQ(report.removed_by(Rule::exact_duplicate).documents, 2);
  EXPECT_EQ(report.removed_by(Rule::near_duplicate).documents, 1);
  EXPECT_GE(report.removed_by(Rule::too_few_words).documents, 1);
  EXPECT_EQ(report.removed_by(Rule::bullet_lines).documents, 1);
  EXPECT_EQ(report.removed_by(Rule::duplicate_lines).documents, 1);
  EXPECT_EQ(report.transformed_by(Transform::markup).documents, 1);
  EXPECT_EQ(report.transformed_by(Transform::urls).documents, 1);
  EXPECT_EQ(report.transformed_by(Transform::emails).documents, 1);
  const std::vector<std::string> out = read_documents(dir.file("out.txt.zst"));
  ASSERT_EQ(static_cast<int64_t>(out.size()), report.documents_out);
  int64_t bytes = 0;
  for (const std::string& d : out) {
    EXPECT_TRUE(is_valid_utf8(d));
    EXPECT_EQ(d.find("<script>"), std::string::npos);
    EXPECT_EQ(d.find("https://"), std::string::npos);
    bytes += static_cast<int64_t>(d.size());
  }
  EXPECT_EQ(bytes, report.bytes_out);
  // The table and the JSON name what happened.
  const std::string table = report.to_table();
  EXPECT_NE(table.find("exact_duplicate"), std::string::npos) << table;
  EXPECT_NE(table.find("bullet_lines"), std::string::npos);
  const nlohmann::json json = report.to_json();
  EXPECT_EQ(json["removed"]["near_duplicate"]["documents"], 1);
  EXPECT_EQ(json["documents_out"], report.documents_out);
  EXPECT_EQ(json["dedup"]["lsh_bands"], 18);
  std::printf("%s", table.c_str());
}

TEST(CleanCorpus, DeterministicAcrossThreadsAndBatches) {
  TempDir dir;
  write_mixed_corpus(dir);
  std::string first_output;
  nlohmann::json first_report;
  for (int threads : {1, 2, 4}) {
    for (size_t batch_bytes : {size_t{1}, size_t{3000}, size_t{32} << 20}) {
      CleanOptions options;
      options.threads = threads;
      options.batch_bytes = batch_bytes;
      int batches = 0;
      const CleanReport report = clean_corpus(options, {dir.file("in")}, dir.file("out.jsonl"),
                                              [&](const CleanReport&) { ++batches; });
      EXPECT_EQ(report.threads, threads);
      if (batch_bytes == 1) {
        EXPECT_EQ(batches, report.documents_in);
      }
      const std::string output = read_text_file(dir.file("out.jsonl"));
      if (first_output.empty()) {
        first_output = output;
        first_report = stable_json(report);
        continue;
      }
      EXPECT_EQ(output, first_output) << threads << " threads, batch " << batch_bytes;
      EXPECT_EQ(stable_json(report), first_report) << threads << " threads, batch " << batch_bytes;
    }
  }
  EXPECT_FALSE(first_output.empty());
}

TEST(CleanCorpus, TruncatedZstdFailsAndKeepsTheOldOutput) {
  TempDir dir;
  std::string text;
  for (int i = 0; i < 200; ++i) text += english_like_text(i, 300) + "\n<|endoftext|>\n";
  const std::string compressed = zstd_compress(text);
  write_bytes(dir.file("cut.txt.zst"), compressed.substr(0, compressed.size() - 100));
  write_bytes(dir.file("out.txt"), "previous output");
  CleanOptions options;
  options.batch_bytes = 10000;  // the error comes after batches were written
  const std::string message = error_message(
      [&] { clean_corpus(options, {dir.file("cut.txt.zst")}, dir.file("out.txt")); });
  EXPECT_NE(message.find(dir.file("cut.txt.zst")), std::string::npos) << message;
  EXPECT_NE(message.find("truncated"), std::string::npos) << message;
  EXPECT_EQ(read_text_file(dir.file("out.txt")), "previous output");
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    EXPECT_EQ(entry.path().string().find(".tmp."), std::string::npos) << entry.path();
  }
}

TEST(CleanCorpus, EmptyInputs) {
  TempDir dir;
  write_bytes(dir.file("empty.txt"), "");
  write_bytes(dir.file("separators.txt"), "<|endoftext|>\n<|endoftext|>\n");
  write_bytes(dir.file("blank.jsonl"), "\n\n");
  write_bytes(dir.file("frame.txt.zst"), zstd_compress(""));
  const CleanReport report =
      clean_corpus(CleanOptions(), {dir.file("empty.txt"), dir.file("separators.txt"),
                                    dir.file("blank.jsonl"), dir.file("frame.txt.zst")},
                   dir.file("out.txt"));
  EXPECT_EQ(report.documents_in, 0);
  EXPECT_EQ(report.documents_out, 0);
  EXPECT_EQ(report.bytes_in, 0);
  EXPECT_TRUE(std::filesystem::exists(dir.file("out.txt")));
  EXPECT_EQ(read_text_file(dir.file("out.txt")), "");
  // Whitespace-only documents are documents, dropped as empty.
  write_bytes(dir.file("spaces.txt"), "   \n\t\n<|endoftext|>\n \n");
  const CleanReport spaces = clean_corpus(CleanOptions(), {dir.file("spaces.txt")}, dir.file("o.txt"));
  EXPECT_EQ(spaces.documents_in, 2);
  EXPECT_EQ(spaces.removed_by(Rule::empty).documents, 2);
  check_accounting(spaces);
  // No input, or a bad output name: errors, no file.
  EXPECT_NE(error_message([&] { clean_corpus(CleanOptions(), {}, dir.file("x.txt")); })
                .find("no input"),
            std::string::npos);
  EXPECT_NE(error_message([&] {
              clean_corpus(CleanOptions(), {dir.file("empty.txt")}, dir.file("out.parquet"));
            }).find("must end in"),
            std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir.file("out.parquet")));
}

TEST(CleanCorpus, BinaryGarbageIsRepairedOrDropped) {
  TempDir dir;
  test::TestRng rng(123);
  std::string garbage;
  for (int i = 0; i < 300000; ++i) garbage.push_back(static_cast<char>(rng.next() >> 11));
  write_bytes(dir.file("garbage.txt"), garbage);
  write_bytes(dir.file("garbage.jsonl"), garbage);
  CleanOptions options;
  options.text_documents = TextDocuments::paragraph;
  CleanReport report =
      clean_corpus(options, {dir.file("garbage.txt"), dir.file("garbage.jsonl")}, dir.file("o.txt"));
  EXPECT_GT(report.documents_in, 0);
  EXPECT_GT(report.malformed_lines, 0);
  EXPECT_EQ(report.documents_out, 0);
  check_accounting(report);
  // With every filter off the repaired garbage comes out as valid UTF-8.
  options.quality_rules = options.repetition_rules = false;
  options.dedup.exact = options.dedup.near = false;
  options.disabled_rules = {Rule::empty};
  report = clean_corpus(options, {dir.file("garbage.txt")}, dir.file("o.txt"));
  EXPECT_GT(report.documents_out, 0);
  check_accounting(report);
  EXPECT_TRUE(is_valid_utf8(read_text_file(dir.file("o.txt"))));
  options.invalid_utf8 = Utf8Policy::drop;
  report = clean_corpus(options, {dir.file("garbage.txt")}, dir.file("o.txt"));
  EXPECT_EQ(report.documents_out + report.removed_by(Rule::invalid_utf8).documents,
            report.documents_in);
  EXPECT_GT(report.removed_by(Rule::invalid_utf8).documents, 0);
}

TEST(CleanCorpus, RealDataSmoke) {
  const std::string data = test::shared_data_dir();
  if (data.empty()) GTEST_SKIP() << "../shared/data is absent: real-data smoke test skipped";
  TempDir dir;
  // English: the validation books, one document each.
  CleanOptions en;
  en.quality.max_words = 1000000;  // books are long; the Gopher bound is for web pages
  const CleanReport books =
      clean_corpus(en, {data + "/gutenberg_en_val.txt.zst"}, dir.file("val.jsonl.zst"));
  std::printf("%s", books.to_table().c_str());
  EXPECT_EQ(books.documents_in, 13);
  EXPECT_GE(books.documents_out, 10);
  EXPECT_EQ(books.removed_by(Rule::near_duplicate).documents, 0);
  check_accounting(books);
  // Chinese: English rules drop most documents; the zh language keeps most of them.
  CleanOptions zh;
  zh.language = Language::zh;
  const CleanReport chinese =
      clean_corpus(zh, {data + "/zh_modern_sample.txt.zst"}, dir.file("zh.txt"));
  const CleanReport as_english =
      clean_corpus(CleanOptions(), {data + "/zh_modern_sample.txt.zst"}, dir.file("zh_en.txt"));
  std::printf("zh_modern_sample: kept %lld of %lld documents with language zh, %lld with en\n",
              static_cast<long long>(chinese.documents_out),
              static_cast<long long>(chinese.documents_in),
              static_cast<long long>(as_english.documents_out));
  EXPECT_GT(chinese.documents_out, chinese.documents_in * 3 / 4);
  EXPECT_LT(as_english.documents_out, as_english.documents_in / 2);
  EXPECT_EQ(chinese.shingle_size, 2);
}

}  // namespace
}  // namespace frugal::clean
