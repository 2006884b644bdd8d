// Cleaning transforms and filter rules on crafted documents: UTF-8 validation/repair, entity
// decoding, markup stripping, URL/e-mail/separator removal, each Gopher quality and repetition
// rule passing and failing, the language switch, rule order and byte accounting.
#include <gtest/gtest.h>

#include <string>

#include "data/clean/document_filter.h"
#include "data/clean/markup.h"
#include "data/clean/quality_rules.h"
#include "data/clean/unicode_text.h"
#include "clean_test_util.h"

namespace frugal::clean {
namespace {

using test::english_like_text;

const std::string kFffd = "\xEF\xBF\xBD";

// Options with every rule but the ones under test turned off.
CleanOptions only(std::initializer_list<Rule> rules) {
  CleanOptions options;
  for (int r = 0; r < kRuleCount; ++r) {
    if (std::find(rules.begin(), rules.end(), static_cast<Rule>(r)) == rules.end()) {
      options.disabled_rules.push_back(static_cast<Rule>(r));
    }
  }
  return options;
}

Words words_of(std::string_view text) {
  Words words;
  split_words(text, words);
  return words;
}

TEST(CleanUtf8, ValidatesStrictly) {
  EXPECT_TRUE(is_valid_utf8("plain ascii"));
  EXPECT_TRUE(is_valid_utf8("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80 \xE4\xB8\xAD"));
  EXPECT_TRUE(is_valid_utf8(std::string("nul \0 inside", 12)));
  EXPECT_FALSE(is_valid_utf8("overlong \xC0\xAF"));
  EXPECT_FALSE(is_valid_utf8("overlong \xE0\x80\xAF"));
  EXPECT_FALSE(is_valid_utf8("surrogate \xED\xA0\x80"));
  EXPECT_FALSE(is_valid_utf8("too big \xF4\x90\x80\x80"));
  EXPECT_FALSE(is_valid_utf8("truncated \xE2\x82"));
  EXPECT_FALSE(is_valid_utf8("lone continuation \x80"));
  EXPECT_FALSE(is_valid_utf8("\xFF"));
}

TEST(CleanUtf8, RepairsMaximalSubparts) {
  size_t replaced = 0;
  // A truncated 3-byte sequence is one maximal subpart: one U+FFFD for two bytes.
  EXPECT_EQ(repair_utf8("a\xE2\x82z", &replaced), "a" + kFffd + "z");
  EXPECT_EQ(replaced, 1u);
  // F0 80 80: F0 cannot be followed by 80, so each byte is its own subpart.
  EXPECT_EQ(repair_utf8("\xF0\x80\x80", &replaced), kFffd + kFffd + kFffd);
  EXPECT_EQ(replaced, 3u);
  EXPECT_EQ(repair_utf8("ok \xC3\xA9", &replaced), "ok \xC3\xA9");
  EXPECT_EQ(replaced, 0u);
  const std::string garbage = "x\xFF\xFE\xC0\xAF\xED\xA0\x80y\xE4\xB8";
  const std::string repaired = repair_utf8(garbage);
  EXPECT_TRUE(is_valid_utf8(repaired));
  EXPECT_EQ(repair_utf8(repaired), repaired);  // idempotent
}

TEST(CleanUtf8, DocumentPolicyRepairOrDrop) {
  const std::string text = english_like_text(1, 80) + " bad \xFF byte";
  CleanOptions options;
  const CleanedDocument repaired = clean_document(text, options);
  EXPECT_TRUE(repaired.kept());
  EXPECT_TRUE(is_valid_utf8(repaired.text));
  EXPECT_NE(repaired.text.find("bad " + kFffd + " byte"), std::string::npos);
  const TransformEffect& effect = repaired.transforms[static_cast<int>(Transform::utf8_repair)];
  EXPECT_TRUE(effect.changed);
  EXPECT_EQ(effect.bytes_removed, -2);  // one byte became three

  options.invalid_utf8 = Utf8Policy::drop;
  const CleanedDocument dropped = clean_document(text, options);
  EXPECT_EQ(dropped.rule, Rule::invalid_utf8);
  EXPECT_EQ(dropped.dropped_bytes, static_cast<int64_t>(text.size()));
  // A valid document is not affected by the drop policy.
  EXPECT_TRUE(clean_document(english_like_text(1, 80), options).kept());
}

TEST(CleanMarkup, DecodesEntities) {
  size_t decoded = 0;
  EXPECT_EQ(decode_entities("a &amp; b &lt;c&gt; &quot;q&quot; &apos;", &decoded),
            "a & b <c> \"q\" '");
  EXPECT_EQ(decoded, 6u);
  EXPECT_EQ(decode_entities("&#65;&#x42;&#X43; &#x1F600; &#233;"), "ABC \xF0\x9F\x98\x80 \xC3\xA9");
  EXPECT_EQ(decode_entities("x&nbsp;y &mdash; &hellip;"), "x y \xE2\x80\x94 \xE2\x80\xA6");
  // Decoded once: "&amp;lt;" is the text "&lt;".
  EXPECT_EQ(decode_entities("&amp;lt;"), "&lt;");
  // Invalid code points become U+FFFD; unknown, unterminated and bare ampersands stay.
  EXPECT_EQ(decode_entities("&#0;&#xD800;&#x110000;"), kFffd + kFffd + kFffd);
  EXPECT_EQ(decode_entities("AT&T &foo; &amp &#; &#x;"), "AT&T &foo; &amp &#; &#x;");
}

TEST(CleanMarkup, StripsTagsScriptsAndComments) {
  size_t removed = 0;
  EXPECT_EQ(strip_markup("<p>Hello <b>world</b></p><script>var x = 1 < 2;</script>"
                         "<style>p { color: red }</style>Bye &amp; thanks",
                         MarkupMode::html, &removed),
            "Hello world\n\nBye & thanks");
  EXPECT_EQ(removed, 7u);  // 4 tags, 2 script/style blocks, 1 entity
  EXPECT_EQ(strip_markup("<!DOCTYPE html><html><head><title>T</title></head><body>"
                         "<!-- a comment -->Text<br/>more<![CDATA[ raw <x> ]]></body></html>",
                         MarkupMode::html),
            "T\n\nText\nmore raw <x>");
  // Quoted '>' inside an attribute does not end the tag.
  EXPECT_EQ(strip_markup("<a href=\"x>y\" title='a>b'>link</a> text", MarkupMode::html),
            "link text");
  // An unclosed script block is removed to the end.
  EXPECT_EQ(strip_markup("keep<script>never closed", MarkupMode::html), "keep");
  // Table cells become spaces, lists become lines.
  EXPECT_EQ(strip_markup("<ul><li>one</li><li>two</li></ul><table><tr><td>a</td><td>b</td></tr>"
                         "</table>",
                         MarkupMode::html),
            "one\ntwo\n\na b");
}

TEST(CleanMarkup, LeavesPlainTextAndMarkdown) {
  const std::string code = "#include <stdio.h>\nif (a < b && c > d) return;";
  EXPECT_EQ(strip_markup(code, MarkupMode::html), "#include <stdio.h>\nif (a < b && c > d) return;");
  const std::string markdown = "# Title\n\n**bold** and _it_ [link](http://x.org) `code`\n\n"
                               "== Wiki ==\n'''bold''' [[Page|label]] {{template}}";
  EXPECT_EQ(strip_markup(markdown, MarkupMode::html), markdown);
  // Non-HTML tags are markup in xml mode only.
  EXPECT_EQ(strip_markup("<note id='1'>Buy <item>milk</item></note>", MarkupMode::html),
            "<note id='1'>Buy <item>milk</item></note>");
  EXPECT_EQ(strip_markup("<note id='1'>Buy <item>milk</item></note>", MarkupMode::xml), "Buy milk");
  EXPECT_EQ(strip_markup("a &amp; b <p>", MarkupMode::off), "a &amp; b <p>");
}

TEST(CleanMarkup, RemovesUrls) {
  size_t removed = 0;
  EXPECT_EQ(remove_urls("see https://example.com/a?b=1. Next www.test.org, and (http://x.org/y).",
                        &removed),
            "see . Next , and ().");
  EXPECT_EQ(removed, 3u);
  EXPECT_EQ(remove_urls("go to HTTP://A.COM/path now"), "go to now");
  EXPECT_EQ(remove_urls("wiki https://en.wikipedia.org/wiki/C_(language) end"), "wiki end");
  EXPECT_EQ(remove_urls("ftp://files.example.org/x.tar.gz"), "");
  // Not URLs: no word start, nothing after the prefix, plain words.
  EXPECT_EQ(remove_urls("xhttp://a.b and http:// and www. and wwwhat", &removed),
            "xhttp://a.b and http:// and www. and wwwhat");
  EXPECT_EQ(removed, 0u);
}

TEST(CleanMarkup, RemovesEmails) {
  size_t removed = 0;
  EXPECT_EQ(remove_emails("Contact john.doe+x@mail.example.com or a@b.c today", &removed),
            "Contact or a@b.c today");
  EXPECT_EQ(removed, 1u);
  EXPECT_EQ(remove_emails("x@y.org,z@w.net."), ",.");
  EXPECT_EQ(remove_emails("@handle user@localhost a@@b.com", &removed),
            "@handle user@localhost a@@b.com");
  EXPECT_EQ(removed, 0u);
}

TEST(CleanMarkup, RemovesSeparatorTokens) {
  size_t removed = 0;
  EXPECT_EQ(remove_separator_tokens("a<|endoftext|>b\n<|endoftext|>\nc", &removed), "ab\n\nc");
  EXPECT_EQ(removed, 2u);
  EXPECT_EQ(remove_separator_tokens("<|endoftext", &removed), "<|endoftext");
  EXPECT_EQ(removed, 0u);
}

TEST(CleanWords, SplitsOnWhitespaceAndCjk) {
  const Words words = words_of("Hello,  wörld\t\u00A0x\n\u4E2D\u6587abc \u3002");
  ASSERT_EQ(words.words.size(), 7u);
  EXPECT_EQ(words.words[0], "Hello,");
  EXPECT_EQ(words.words[1], "w\xC3\xB6rld");
  EXPECT_EQ(words.char_lengths[1], 5u);
  EXPECT_EQ(words.words[2], "x");
  EXPECT_EQ(words.words[3], "\u4E2D");
  EXPECT_EQ(words.words[4], "\u6587");
  EXPECT_EQ(words.words[5], "abc");
  EXPECT_EQ(words.words[6], "\u3002");  // CJK punctuation is a word of its own too
  std::string normalized;
  normalize_word("\"The,\"", normalized);
  EXPECT_EQ(normalized, "the");
  normalize_word("...", normalized);
  EXPECT_EQ(normalized, "");
  normalize_word("\xC2\xABW\xC3\x96RLD\xC2\xBB", normalized);  // «WÖRLD»: ASCII-only lowercase
  EXPECT_EQ(normalized, "w\xC3\x96rld");
}

TEST(CleanQuality, GoodDocumentPasses) {
  const std::string good = english_like_text(7, 150);
  EXPECT_EQ(first_failing_rule(good, CleanOptions()), Rule::none);
  const QualityMetrics m = measure_quality(good, words_of(good), QualityOptions());
  EXPECT_EQ(m.non_symbol_words, 150);
  EXPECT_GT(m.mean_word_length, 3.0);
  EXPECT_GE(m.stop_words, 2);
  EXPECT_DOUBLE_EQ(m.alpha_word_fraction, 1.0);
}

TEST(CleanQuality, WordCountBounds) {
  CleanOptions options;
  EXPECT_EQ(first_failing_rule("Hello there, the world and friends.", options), Rule::too_few_words);
  options.quality.max_words = 100;
  EXPECT_EQ(first_failing_rule(english_like_text(2, 101), options), Rule::too_many_words);
  EXPECT_EQ(first_failing_rule(english_like_text(2, 100), options), Rule::none);
  // Punctuation-only tokens are not words.
  std::string padded = english_like_text(3, 49);
  for (int i = 0; i < 20; ++i) padded += " --";
  EXPECT_EQ(first_failing_rule(padded, options), Rule::too_few_words);
}

TEST(CleanQuality, MeanWordLength) {
  std::string short_words = "the and of";
  for (int i = 0; i < 60; ++i) short_words += std::string(" ") + static_cast<char>('a' + i % 26);
  EXPECT_EQ(first_failing_rule(short_words, CleanOptions()), Rule::mean_word_length);
  std::string long_words = "the and of";
  for (int i = 0; i < 60; ++i) long_words += " incomprehensibilities" + std::to_string(i);
  EXPECT_EQ(first_failing_rule(long_words, CleanOptions()), Rule::mean_word_length);
}

TEST(CleanQuality, SymbolRatio) {
  const std::string base = english_like_text(4, 90);  // 90 words
  std::string hashes = base, ellipses = base;
  for (int i = 0; i < 9; ++i) hashes += " #";  // 9 / 90 = 0.1: still allowed
  EXPECT_EQ(first_failing_rule(hashes, CleanOptions()), Rule::none);
  hashes += " #tag";  // 10 / 91 > 0.1
  EXPECT_EQ(first_failing_rule(hashes, CleanOptions()), Rule::symbol_ratio);
  for (int i = 0; i < 7; ++i) ellipses += " well... and\xE2\x80\xA6 so";  // 14 / 111
  EXPECT_EQ(first_failing_rule(ellipses, CleanOptions()), Rule::symbol_ratio);
}

TEST(CleanQuality, BulletAndEllipsisLines) {
  std::string bullets, some_bullets;
  for (int i = 0; i < 20; ++i) {
    bullets += "- " + english_like_text(100 + i, 8) + "\n";
    some_bullets += (i % 2 ? "\xE2\x80\xA2 " : "") + english_like_text(200 + i, 8) + "\n";
  }
  EXPECT_EQ(first_failing_rule(bullets, CleanOptions()), Rule::bullet_lines);
  EXPECT_EQ(first_failing_rule(some_bullets, CleanOptions()), Rule::none);
  const QualityMetrics m = measure_quality(some_bullets, words_of(some_bullets), QualityOptions());
  EXPECT_DOUBLE_EQ(m.bullet_line_fraction, 0.5);

  std::string trailing;  // 4 of 10 lines end in an ellipsis
  for (int i = 0; i < 10; ++i) {
    std::string line = english_like_text(300 + i, 10);
    line.pop_back();  // the final '.'
    trailing += line + (i < 4 ? "..." : ".") + "\n";
  }
  EXPECT_EQ(first_failing_rule(trailing, CleanOptions()), Rule::ellipsis_lines);
}

TEST(CleanQuality, AlphaWordsAndStopWords) {
  std::string numbers = english_like_text(5, 60);
  for (int i = 0; i < 30; ++i) numbers += " " + std::to_string(1000 + i * 37);
  EXPECT_EQ(first_failing_rule(numbers, CleanOptions()), Rule::alpha_words);

  std::string no_stop;  // made-up words only
  for (int i = 0; i < 80; ++i) no_stop += test::made_up_word(1000 + i * 7) + (i % 10 == 9 ? ". " : " ");
  EXPECT_EQ(first_failing_rule(no_stop, CleanOptions()), Rule::stop_words);
  CleanOptions other;
  other.language = Language::other;  // non-English: no stop-word rule
  EXPECT_EQ(first_failing_rule(no_stop, other), Rule::none);
  CleanOptions disabled;
  disabled.disabled_rules = {Rule::stop_words};
  EXPECT_EQ(first_failing_rule(no_stop, disabled), Rule::none);
}

TEST(CleanQuality, ChineseNeedsTheLanguageSwitch) {
  const std::string chinese =
      "今天天气很好，我们一起去公园散步。公园里有很多花，红的、黄的、白的，非常漂亮。"
      "小朋友们在草地上玩耍，老人们坐在长椅上聊天。湖边有几只鸭子，慢慢地游来游去。"
      "傍晚的时候，太阳落山了，天边出现了美丽的晚霞。我们拍了很多照片，然后高高兴兴地回家。";
  EXPECT_EQ(first_failing_rule(chinese, CleanOptions()), Rule::mean_word_length);
  CleanOptions zh;
  zh.language = Language::zh;
  EXPECT_EQ(first_failing_rule(chinese, zh), Rule::none);
  // Characters count as words: too short in characters is still too short.
  EXPECT_EQ(first_failing_rule("今天天气很好。", zh), Rule::too_few_words);
  // Repetition rules work on characters.
  std::string repeated = chinese;
  for (int i = 0; i < 3; ++i) repeated += "傍晚的时候，太阳落山了，天边出现了美丽的晚霞。";
  EXPECT_NE(first_failing_rule(repeated, zh), Rule::none);
}

TEST(CleanRepetition, LineAndParagraphFractions) {
  const LineDuplication d = measure_line_duplication("a\nb\na\n\n  c\nd\n\nc \r\nd\n");
  EXPECT_DOUBLE_EQ(d.line_fraction, 3.0 / 7.0);            // a, c, d repeat
  EXPECT_DOUBLE_EQ(d.line_char_fraction, 3.0 / 7.0);
  EXPECT_DOUBLE_EQ(d.paragraph_fraction, 1.0 / 3.0);       // "c\nd" repeats
  EXPECT_DOUBLE_EQ(d.paragraph_char_fraction, 3.0 / 11.0);
  const LineDuplication none = measure_line_duplication("one\ntwo\n\nthree");
  EXPECT_EQ(none.line_fraction, 0.0);
  EXPECT_EQ(none.paragraph_fraction, 0.0);
}

TEST(CleanRepetition, NgramFractions) {
  // 2-grams: "a b" x3 (covering 6 of 8 one-char words), "b a" x2.
  EXPECT_DOUBLE_EQ(top_ngram_char_fraction(words_of("a b a b a b c d"), 2), 6.0 / 8.0);
  // Overlapping occurrences are counted once: "a a" covers all 5 words.
  EXPECT_DOUBLE_EQ(top_ngram_char_fraction(words_of("a a a a a"), 2), 1.0);
  EXPECT_DOUBLE_EQ(top_ngram_char_fraction(words_of("no repeated pairs here at all"), 2), 0.0);
  // The second "x1..x5" repeats the first: 5 words of 2 chars out of 22 chars.
  const Words w = words_of("x1 x2 x3 x4 x5 y x1 x2 x3 x4 x5 z");
  EXPECT_DOUBLE_EQ(duplicate_ngram_char_fraction(w, 5), 10.0 / 22.0);
  EXPECT_DOUBLE_EQ(duplicate_ngram_char_fraction(w, 6), 0.0);
  // A run repeated three times: repeats (not the first occurrence) cover 2 of 3 copies.
  EXPECT_DOUBLE_EQ(duplicate_ngram_char_fraction(words_of("p q r s t p q r s t p q r s t"), 5),
                   10.0 / 15.0);
}

TEST(CleanRepetition, RulesFire) {
  const std::string base = english_like_text(11, 120);
  // Lines: 10 distinct lines, then 5 of them again (5/15 > 0.30).
  std::string lines;
  for (int i = 0; i < 10; ++i) lines += english_like_text(400 + i, 9) + "\n";
  for (int i = 0; i < 5; ++i) lines += english_like_text(400 + i, 9) + "\n";
  EXPECT_EQ(first_failing_rule(lines, CleanOptions()), Rule::duplicate_lines);
  // Paragraphs of two lines each; two of six repeat. Only paragraph rules enabled.
  std::string paragraphs;
  for (int i = 0; i < 6; ++i) {
    const int p = i < 4 ? i : i - 4;
    paragraphs += english_like_text(500 + p, 9) + "\n" + english_like_text(600 + p, 9) + "\n\n";
  }
  EXPECT_EQ(first_failing_rule(paragraphs, only({Rule::duplicate_paragraphs})),
            Rule::duplicate_paragraphs);
  EXPECT_EQ(first_failing_rule(paragraphs, only({Rule::duplicate_paragraph_chars})),
            Rule::duplicate_paragraph_chars);
  EXPECT_EQ(first_failing_rule(paragraphs, only({Rule::duplicate_line_chars})),
            Rule::duplicate_line_chars);
  // One bigram everywhere: top 2-gram.
  std::string bigram = base;
  for (int i = 0; i < 30; ++i) bigram += " alpha beta";
  EXPECT_EQ(first_failing_rule(bigram, CleanOptions()), Rule::top_2gram);
  // A passage of 40 words (one paragraph) repeated once: duplicated 5-grams cover 40 of 200 words.
  std::string repeat = english_like_text(12, 40);
  for (size_t p = repeat.find("\n\n"); p != std::string::npos; p = repeat.find("\n\n")) {
    repeat.replace(p, 2, " ");
  }
  const std::string passage = repeat + " " + base + " " + repeat;
  EXPECT_EQ(first_failing_rule(passage, CleanOptions()), Rule::duplicate_5gram);
  EXPECT_EQ(first_failing_rule(base, CleanOptions()), Rule::none);
  // With the repetition rules off, the same documents pass.
  CleanOptions off;
  off.repetition_rules = false;
  EXPECT_EQ(first_failing_rule(passage, off), Rule::none);
  EXPECT_EQ(first_failing_rule(lines, off), Rule::none);
}

TEST(CleanDocument, TransformsThenRulesWithExactAccounting) {
  CleanOptions options;
  options.remove_urls = true;
  options.remove_emails = true;
  const std::string body = english_like_text(21, 100);
  const std::string raw = "<html><body><p>" + body + "</p><p>Mail me@example.org or see "
                          "https://example.org/page &amp; more.</p><|endoftext|>\xFF</body></html>";
  const CleanedDocument doc = clean_document(raw, options);
  ASSERT_TRUE(doc.kept()) << rule_name(doc.rule);
  EXPECT_EQ(doc.text, body + "\n\nMail or see & more.\n\n" + kFffd);
  int64_t removed = 0;
  for (const TransformEffect& effect : doc.transforms) {
    EXPECT_TRUE(effect.changed);
    removed += effect.bytes_removed;
  }
  EXPECT_EQ(static_cast<int64_t>(raw.size()), static_cast<int64_t>(doc.text.size()) + removed);

  // A document emptied by the transforms is dropped by "empty", with its remaining bytes.
  const CleanedDocument empty = clean_document("<p> </p><script>x()</script>", options);
  EXPECT_EQ(empty.rule, Rule::empty);
  EXPECT_EQ(empty.dropped_bytes, static_cast<int64_t>(empty.text.size()));
  // First failing rule wins: too few words beats the stop-word rule.
  EXPECT_EQ(clean_document("zebra", options).rule, Rule::too_few_words);
}

TEST(CleanOptionsNames, ParseAndValidate) {
  for (int r = 0; r < kRuleCount; ++r) {
    EXPECT_EQ(parse_rule(rule_name(static_cast<Rule>(r))), static_cast<Rule>(r));
  }
  EXPECT_NE(test::error_message([] { parse_rule("no_such_rule"); }).find("too_few_words"),
            std::string::npos);
  EXPECT_EQ(parse_language("cjk"), Language::zh);
  EXPECT_EQ(parse_markup_mode("xml"), MarkupMode::xml);
  EXPECT_EQ(parse_utf8_policy("drop"), Utf8Policy::drop);
  CleanOptions bad;
  bad.dedup.threshold = 1.5;
  EXPECT_NE(test::error_message([&] { validate_options(bad); }).find("threshold"),
            std::string::npos);
  bad = CleanOptions();
  bad.quality.min_words = 10;
  bad.quality.max_words = 5;
  EXPECT_NE(test::error_message([&] { validate_options(bad); }).find("max_words"),
            std::string::npos);
  bad = CleanOptions();
  bad.dedup.bands = 20;
  bad.dedup.rows = 7;
  EXPECT_NE(test::error_message([&] { validate_options(bad); }).find("num_perm"),
            std::string::npos);
  EXPECT_NO_THROW(validate_options(CleanOptions()));
}

}  // namespace
}  // namespace frugal::clean
