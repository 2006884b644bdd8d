// Split and ByteLevel pre-tokenization with the Hugging Face `tokenizers` semantics.
#include "data/tokenizer/pre_tokenizer.h"

#include <cstring>

#include "core/error.h"
#include "data/tokenizer/json_util.h"

namespace frugal::tok {
namespace {

using Matches = std::vector<std::pair<uint32_t, uint32_t>>;

struct Segment {
  uint32_t begin, end;
  bool is_match;
};

// Per-thread buffers reused across calls (no allocation per piece once warm).
struct Scratch {
  std::vector<Span> current, next;
  Matches matches;
  std::vector<Segment> segments, pieces;
};

Scratch& scratch() {
  thread_local Scratch instance;
  return instance;
}

SplitBehavior parse_behavior(const std::string& name, std::string_view file, std::string_view where) {
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  fail("{}: {}.behavior '{}' is not one of Removed, Isolated, MergedWithPrevious, "
       "MergedWithNext, Contiguous",
       file, where, name);
}

// Splits text (= arena[span]) at the regex matches following `behavior`; appends the non-empty
// pieces, offset by span.begin, to out.
void split_span(const Regex& regex, bool invert, SplitBehavior behavior, std::string_view text,
                uint32_t offset, std::vector<Span>& out) {
  if (text.empty()) return;
  Scratch& s = scratch();
  s.matches.clear();
  regex.find_all(text, s.matches);
  // Matches and the gaps between them cover the text.
  s.segments.clear();
  uint32_t previous = 0;
  for (const auto& [start, end] : s.matches) {
    if (previous != start) s.segments.push_back({previous, start, false});
    s.segments.push_back({start, end, true});
    previous = end;
  }
  const auto size = static_cast<uint32_t>(text.size());
  if (previous != size) s.segments.push_back({previous, size, false});
  if (invert)
    for (Segment& seg : s.segments) seg.is_match = !seg.is_match;

  // pieces: (range, keep); is_match is reused as "remove".
  std::vector<Segment>& pieces = s.pieces;
  pieces.clear();
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const Segment& seg : s.segments) pieces.push_back({seg.begin, seg.end, false});
      break;
    case SplitBehavior::kRemoved:
      pieces = s.segments;
      break;
    case SplitBehavior::kContiguous:
      for (const Segment& seg : s.segments) {
        if (seg.is_match == previous_match && !pieces.empty())
          pieces.back().end = seg.end;
        else
          pieces.push_back({seg.begin, seg.end, false});
        previous_match = seg.is_match;
      }
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (const Segment& seg : s.segments) {
        if (seg.is_match && !previous_match && !pieces.empty())
          pieces.back().end = seg.end;
        else
          pieces.push_back({seg.begin, seg.end, false});
        previous_match = seg.is_match;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      for (size_t k = s.segments.size(); k-- > 0;) {
        const Segment& seg = s.segments[k];
        if (seg.is_match && !previous_match && !pieces.empty())
          pieces.back().begin = seg.begin;
        else
          pieces.push_back({seg.begin, seg.end, false});
        previous_match = seg.is_match;
      }
      for (size_t a = 0, b = pieces.size(); a + 1 < b; ++a, --b) std::swap(pieces[a], pieces[b - 1]);
      break;
  }
  for (const Segment& piece : pieces)
    if (!piece.is_match && piece.end > piece.begin)
      out.push_back({offset + piece.begin, offset + piece.end});
}

}  // namespace

std::string split_behavior_name(SplitBehavior behavior) {
  switch (behavior) {
    case SplitBehavior::kRemoved: return "Removed";
    case SplitBehavior::kIsolated: return "Isolated";
    case SplitBehavior::kMergedWithPrevious: return "MergedWithPrevious";
    case SplitBehavior::kMergedWithNext: return "MergedWithNext";
    case SplitBehavior::kContiguous: return "Contiguous";
  }
  return "Isolated";
}

PreTokenizerConfig PreTokenizerConfig::gpt2() {
  PreTokenizerConfig config;
  config.byte_level = {/*add_prefix_space=*/false, /*trim_offsets=*/true, /*use_regex=*/true};
  return config;
}

PreTokenizerConfig PreTokenizerConfig::deepseek_v3() {
  PreTokenizerConfig config;
  config.splits.push_back({R"(\p{N}{1,3})", true, SplitBehavior::kIsolated, false});
  config.splits.push_back({"[一-龥\u3040-ゟ゠-ヿ]+", true, SplitBehavior::kIsolated, false});
  // "\r" and "\n" are the characters themselves, as JSON decodes them in DeepSeek's file.
  config.splits.push_back(
      {"[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?"
       "[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
       true, SplitBehavior::kIsolated, false});
  config.byte_level = {/*add_prefix_space=*/false, /*trim_offsets=*/true, /*use_regex=*/false};
  return config;
}

nlohmann::json PreTokenizerConfig::to_json() const {
  nlohmann::json byte_level_json = {{"type", "ByteLevel"},
                                    {"add_prefix_space", byte_level.add_prefix_space},
                                    {"trim_offsets", byte_level.trim_offsets},
                                    {"use_regex", byte_level.use_regex}};
  if (splits.empty()) return byte_level_json;
  nlohmann::json steps = nlohmann::json::array();
  for (const SplitConfig& split : splits) {
    nlohmann::json pattern = {{split.is_regex ? "Regex" : "String", split.pattern}};
    steps.push_back({{"type", "Split"},
                     {"pattern", pattern},
                     {"behavior", split_behavior_name(split.behavior)},
                     {"invert", split.invert}});
  }
  steps.push_back(byte_level_json);
  return {{"type", "Sequence"}, {"pretokenizers", steps}};
}

PreTokenizerConfig PreTokenizerConfig::from_json(const nlohmann::json& value, std::string_view file) {
  const auto unsupported_family = [&](const std::string& type) {
    fail("{}: pre_tokenizer type '{}' is not supported: frugal reads byte-level BPE tokenizers "
         "whose pre_tokenizer is ByteLevel or a Sequence of Split steps ending in ByteLevel",
         file, type);
  };
  FRUGAL_CHECK(!value.is_null(), "{}: pre_tokenizer is null: frugal needs a ByteLevel "
               "pre-tokenizer (byte-level BPE)", file);
  std::vector<std::pair<nlohmann::json, std::string>> steps;  // (step, key path)
  const std::string type = json_type(value, file, "pre_tokenizer");
  if (type == "Sequence") {
    const nlohmann::json& list = json_member(value, "pretokenizers", file, "pre_tokenizer");
    FRUGAL_CHECK(list.is_array(), "{}: pre_tokenizer.pretokenizers must be an array", file);
    for (size_t i = 0; i < list.size(); ++i)
      steps.emplace_back(list[i], fmt::format("pre_tokenizer.pretokenizers[{}]", i));
  } else {
    steps.emplace_back(value, "pre_tokenizer");
  }
  PreTokenizerConfig config;
  bool have_byte_level = false;
  for (const auto& [step, where] : steps) {
    const std::string step_type = json_type(step, file, where);
    FRUGAL_CHECK(!have_byte_level, "{}: {} ('{}') follows ByteLevel: frugal needs ByteLevel to be "
                 "the last pre-tokenizer", file, where, step_type);
    if (step_type == "Split") {
      SplitConfig split;
      const nlohmann::json& pattern = json_member(step, "pattern", file, where);
      FRUGAL_CHECK(pattern.is_object() && pattern.size() == 1,
                   "{}: {}.pattern must be {{\"Regex\": ...}} or {{\"String\": ...}}", file, where);
      if (pattern.contains("Regex")) {
        split.pattern = json_string(pattern, "Regex", file, where + ".pattern");
      } else if (pattern.contains("String")) {
        split.pattern = json_string(pattern, "String", file, where + ".pattern");
        split.is_regex = false;
      } else {
        fail("{}: {}.pattern must be {{\"Regex\": ...}} or {{\"String\": ...}}", file, where);
      }
      split.behavior = parse_behavior(json_string(step, "behavior", file, where), file, where);
      split.invert = json_bool(step, "invert", false, file, where);
      config.splits.push_back(std::move(split));
    } else if (step_type == "ByteLevel") {
      config.byte_level.add_prefix_space = json_bool(step, "add_prefix_space", true, file, where);
      config.byte_level.trim_offsets = json_bool(step, "trim_offsets", true, file, where);
      config.byte_level.use_regex = json_bool(step, "use_regex", true, file, where);
      have_byte_level = true;
    } else {
      unsupported_family(step_type.empty() ? "(none)" : step_type);
    }
  }
  FRUGAL_CHECK(have_byte_level, "{}: pre_tokenizer has no ByteLevel step: frugal reads byte-level "
               "BPE tokenizers only", file);
  return config;
}

PreTokenizer::PreTokenizer(const PreTokenizerConfig& config, std::string_view file)
    : config_(config) {
  for (size_t i = 0; i < config.splits.size(); ++i) {
    const SplitConfig& split = config.splits[i];
    const std::string what = fmt::format("{}: pre-tokenizer Split #{}", file, i);
    CompiledSplit compiled;
    compiled.regex = split.is_regex
                         ? std::make_unique<Regex>(split.pattern, what)
                         : std::make_unique<Regex>(Regex::escape(split.pattern), what, false);
    compiled.behavior = split.behavior;
    compiled.invert = split.invert;
    splits_.push_back(std::move(compiled));
  }
  if (config.byte_level.use_regex) gpt2_ = std::make_unique<Regex>(kGpt2Pattern, "GPT-2 pattern");
}

void PreTokenizer::run(std::string& arena, Span piece, std::vector<Span>& out) const {
  Scratch& s = scratch();
  // Split steps use s.current/s.next; split_span uses the other scratch buffers only.
  std::vector<Span> current, next;
  current.swap(s.current);
  next.swap(s.next);
  current.clear();
  if (piece.size() > 0) current.push_back(piece);
  for (const CompiledSplit& split : splits_) {
    next.clear();
    for (const Span& span : current)
      split_span(*split.regex, split.invert, split.behavior,
                 std::string_view(arena).substr(span.begin, span.size()), span.begin, next);
    current.swap(next);
  }
  for (Span span : current) {
    if (config_.byte_level.add_prefix_space && arena[span.begin] != ' ') {
      const size_t old_size = arena.size();
      arena.resize(old_size + 1 + span.size());
      arena[old_size] = ' ';
      std::memcpy(arena.data() + old_size + 1, arena.data() + span.begin, span.size());
      span = {static_cast<uint32_t>(old_size), static_cast<uint32_t>(arena.size())};
    }
    if (gpt2_)
      split_span(*gpt2_, false, SplitBehavior::kIsolated,
                 std::string_view(arena).substr(span.begin, span.size()), span.begin, out);
    else
      out.push_back(span);
  }
  current.swap(s.current);
  next.swap(s.next);
}

}  // namespace frugal::tok
