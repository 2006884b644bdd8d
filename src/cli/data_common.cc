// Bounded document reading and the tokenizer identity of token datasets (see data_common.h).
#include "cli/data_common.h"

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "data/clean/document_io.h"
#include "data/clean/markup.h"

namespace frugal {
namespace {

constexpr size_t kChunkBytes = size_t{1} << 20;

bool is_separator_line(std::string_view line) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return line == clean::kDocumentSeparator;
}

bool is_blank(std::string_view line) {
  return std::all_of(line.begin(), line.end(),
                     [](char c) { return c == ' ' || c == '\t' || c == '\r'; });
}

}  // namespace

BoundedLineReader::BoundedLineReader(std::string path, size_t max_line_bytes)
    : reader_(std::move(path)), max_line_bytes_(max_line_bytes) {}

bool BoundedLineReader::next(std::string_view& line, bool& too_long) {
  size_t scan_from = begin_;
  bool skipping = false;  // the line outgrew the limit: its bytes are dropped as they arrive
  for (;;) {
    const char* found = nullptr;
    if (scan_from < buffer_.size())
      found = static_cast<const char*>(
          std::memchr(buffer_.data() + scan_from, '\n', buffer_.size() - scan_from));
    if (found != nullptr || (end_of_data_ && (skipping || begin_ < buffer_.size()))) {
      const size_t end = found != nullptr ? static_cast<size_t>(found - buffer_.data())
                                          : buffer_.size();
      too_long = skipping || end - begin_ > max_line_bytes_;
      line = too_long ? std::string_view() : std::string_view(buffer_.data() + begin_, end - begin_);
      begin_ = found != nullptr ? end + 1 : buffer_.size();
      ++line_number_;
      return true;
    }
    if (end_of_data_) return false;
    if (skipping || buffer_.size() - begin_ > max_line_bytes_) {
      skipping = true;
      buffer_.clear();
    } else if (begin_ > 0) {
      buffer_.erase(0, begin_);
    }
    begin_ = 0;
    scan_from = buffer_.size();
    buffer_.resize(scan_from + kChunkBytes);
    const size_t n = reader_.read(buffer_.data() + scan_from, kChunkBytes);
    buffer_.resize(scan_from + n);
    if (n == 0) end_of_data_ = true;
  }
}

DocumentTextReader::DocumentTextReader(const std::vector<std::string>& inputs,
                                       const std::string& text_field, bool paragraphs,
                                       int64_t max_document_bytes)
    : files_(clean::list_input_files(inputs)),
      text_field_(text_field),
      paragraphs_(paragraphs),
      max_document_bytes_(max_document_bytes) {
  FRUGAL_CHECK(max_document_bytes_ > 0, "the document size limit must be positive (got {} bytes)",
               max_document_bytes_);
  for (const std::string& f : files_) {
    std::error_code error;
    const uint64_t size = std::filesystem::file_size(f, error);
    FRUGAL_CHECK(!error, "input {}: {}", f, error.message());
    total_bytes_ += size;
  }
}

DocumentTextReader::~DocumentTextReader() = default;

uint64_t DocumentTextReader::input_bytes_read() const {
  return finished_file_bytes_ + (lines_ ? lines_->file_bytes_read() : 0);
}

bool DocumentTextReader::next_document(std::string& text, bool& oversized, bool& jsonl) {
  const size_t limit = static_cast<size_t>(max_document_bytes_);
  while (file_index_ < files_.size()) {
    if (lines_ == nullptr)
      lines_ = std::make_unique<BoundedLineReader>(files_[file_index_], limit);
    jsonl = clean::input_format_of(files_[file_index_]) == clean::DocumentFormat::jsonl;
    text.clear();
    oversized = false;
    std::string_view line;
    bool too_long = false;
    bool has_lines = false;
    if (jsonl) {
      while (lines_->next(line, too_long)) {
        if (too_long) {
          oversized = true;
          return true;
        }
        if (is_blank(line)) continue;
        text.assign(line);
        return true;
      }
    } else {
      while (lines_->next(line, too_long)) {
        if (!too_long && (is_separator_line(line) || (paragraphs_ && is_blank(line)))) {
          if (has_lines) return true;
          continue;
        }
        if (too_long || oversized || text.size() + (has_lines ? 1 : 0) + line.size() > limit) {
          oversized = true;  // drop what was gathered; skip to the next separator
          std::string().swap(text);
        } else {
          if (has_lines) text.push_back('\n');
          text.append(line);
        }
        has_lines = true;
      }
    }
    finished_file_bytes_ += lines_->file_bytes_read();
    lines_.reset();
    ++file_index_;
    if (has_lines) return true;
  }
  return false;
}

bool DocumentTextReader::next_batch(std::vector<std::string>& texts, size_t max_bytes) {
  size_t added_bytes = 0;
  bool added = false;
  std::string text;
  bool oversized = false, jsonl = false;
  while (added_bytes < max_bytes && next_document(text, oversized, jsonl)) {
    added = true;  // a skipped document counts as progress: the caller keeps reading
    if (oversized) {
      ++oversized_;
      continue;
    }
    if (jsonl) {
      clean::JsonlRecord record = clean::parse_jsonl_record(text, text_field_);
      if (!record.record) {
        ++malformed_;
        continue;
      }
      text = std::move(record.text);
      if (static_cast<int64_t>(text.size()) > max_document_bytes_) {
        ++oversized_;
        continue;
      }
    }
    added_bytes += text.size();
    texts.push_back(std::move(text));
    text = std::string();
  }
  return added;
}

std::string describe_files(const std::vector<std::string>& files) {
  std::string out;
  const size_t shown = std::min<size_t>(files.size(), 3);
  for (size_t i = 0; i < shown; ++i) out += (i ? ", " : "") + files[i];
  if (files.size() > shown) out += fmt::format(" and {} more", files.size() - shown);
  return out;
}

std::string tokenizer_hash_hex(const Tokenizer& tokenizer) {
  return fmt::format("{:016x}", tokenizer.hash());
}

TokenizerIdentity tokenizer_identity(const Tokenizer& tokenizer) {
  TokenizerIdentity id;
  id.hash = tokenizer_hash_hex(tokenizer);
  id.vocab_size = tokenizer.vocab_size();
  id.eos_id = tokenizer.eos_id().value_or(-1);
  id.bos_id = tokenizer.bos_id().value_or(-1);
  const std::pair<const char*, SpecialRole> roles[] = {
      {"bos", SpecialRole::kBos},           {"eos", SpecialRole::kEos},
      {"pad", SpecialRole::kPad},           {"fim_begin", SpecialRole::kFimBegin},
      {"fim_hole", SpecialRole::kFimHole},  {"fim_end", SpecialRole::kFimEnd},
      {"user", SpecialRole::kUser},         {"assistant", SpecialRole::kAssistant}};
  for (auto& [name, role] : roles)
    if (auto token = tokenizer.special_id(role)) id.special_ids[name] = *token;
  return id;
}

}  // namespace frugal
