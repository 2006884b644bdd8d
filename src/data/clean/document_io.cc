// Document input (files, folders; .txt/.jsonl, optionally .zst) and output (see document_io.h).
#include "data/clean/document_io.h"

#include <algorithm>
#include <filesystem>
#include <system_error>

#include "core/error.h"
#include "data/clean/markup.h"
#include "data/clean/unicode_text.h"

namespace frugal::clean {
namespace {

namespace fs = std::filesystem;

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_document_file_name(const std::string& name) {
  return ends_with(name, ".txt") || ends_with(name, ".jsonl") || ends_with(name, ".txt.zst") ||
         ends_with(name, ".jsonl.zst");
}

bool is_separator_line(std::string_view line) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return line == kDocumentSeparator;
}

bool is_blank(std::string_view line) {
  return std::all_of(line.begin(), line.end(),
                     [](char c) { return c == ' ' || c == '\t' || c == '\r'; });
}

std::string same_file_key(const std::string& path) {
  std::error_code error;
  const fs::path canonical = fs::weakly_canonical(path, error);
  return error ? path : canonical.string();
}

}  // namespace

DocumentFormat input_format_of(const std::string& path) {
  return ends_with(path, ".jsonl") || ends_with(path, ".jsonl.zst") ? DocumentFormat::jsonl
                                                                     : DocumentFormat::text;
}

DocumentFormat output_format_of(const std::string& path) {
  FRUGAL_CHECK(is_document_file_name(path),
               "output {}: the name must end in .txt, .jsonl, .txt.zst or .jsonl.zst", path);
  return input_format_of(path);
}

std::vector<std::string> list_input_files(const std::vector<std::string>& inputs,
                                          const std::string& output_path) {
  FRUGAL_CHECK(!inputs.empty(), "no input files or folders given");
  const std::string output_key = output_path.empty() ? std::string() : same_file_key(output_path);
  std::vector<std::string> files;
  for (const std::string& input : inputs) {
    std::error_code error;
    const fs::file_status status = fs::status(input, error);
    FRUGAL_CHECK(!error && fs::exists(status), "input {} does not exist", input);
    if (!fs::is_directory(status)) {
      files.push_back(input);
      continue;
    }
    std::vector<std::string> found;
    fs::recursive_directory_iterator it(input, fs::directory_options::follow_directory_symlink,
                                        error);
    FRUGAL_CHECK(!error, "cannot list folder {}: {}", input, error.message());
    for (; it != fs::recursive_directory_iterator(); it.increment(error)) {
      FRUGAL_CHECK(!error, "cannot list folder {}: {}", input, error.message());
      const std::string name = it->path().filename().string();
      if (!name.empty() && name[0] == '.') {
        if (it->is_directory()) it.disable_recursion_pending();
        continue;
      }
      if (!it->is_regular_file() || !is_document_file_name(name)) continue;
      const std::string path = it->path().string();
      if (!output_key.empty() && same_file_key(path) == output_key) continue;
      found.push_back(path);
    }
    FRUGAL_CHECK(!found.empty(), "input folder {} holds no .txt, .jsonl, .txt.zst or .jsonl.zst "
                 "file", input);
    std::sort(found.begin(), found.end());
    files.insert(files.end(), found.begin(), found.end());
  }
  return files;
}

DocumentReader::DocumentReader(std::vector<std::string> files, TextDocuments text_documents)
    : files_(std::move(files)), text_documents_(text_documents) {}

DocumentReader::~DocumentReader() = default;

bool DocumentReader::next(RawDocument& document) {
  while (file_index_ < files_.size()) {
    if (lines_ == nullptr) lines_ = std::make_unique<LineReader>(files_[file_index_]);
    const DocumentFormat format = input_format_of(files_[file_index_]);
    document.content.clear();
    document.file_index = static_cast<uint32_t>(file_index_);
    document.format = format;
    std::string_view line;
    if (format == DocumentFormat::jsonl) {
      while (lines_->next(line)) {
        if (is_blank(line)) continue;
        document.content.assign(line);
        document.line = lines_->line_number();
        return true;
      }
    } else {
      bool has_lines = false;
      const bool paragraphs = text_documents_ == TextDocuments::paragraph;
      while (lines_->next(line)) {
        if (is_separator_line(line) || (paragraphs && is_blank(line))) {
          if (has_lines) return true;
          continue;
        }
        if (has_lines) {
          document.content.push_back('\n');
        } else {
          document.line = lines_->line_number();
        }
        document.content.append(line);
        has_lines = true;
      }
      if (has_lines) {
        lines_.reset();
        ++file_index_;
        return true;
      }
    }
    lines_.reset();
    ++file_index_;
  }
  return false;
}

bool DocumentReader::read_batch(std::vector<RawDocument>& batch, size_t max_bytes,
                                size_t max_documents) {
  size_t bytes = 0, added = 0;
  RawDocument document;
  while (added < max_documents && bytes < max_bytes && next(document)) {
    bytes += document.content.size();
    batch.push_back(std::move(document));
    document = RawDocument();
    ++added;
  }
  return added > 0;
}

JsonlRecord parse_jsonl_record(std::string_view line, const std::string& text_field) {
  JsonlRecord result;
  std::string repaired;
  if (!is_valid_utf8(line)) {
    repaired = repair_utf8(line, &result.invalid_utf8);
    result.repair_bytes_removed =
        static_cast<int64_t>(line.size()) - static_cast<int64_t>(repaired.size());
    line = repaired;
  }
  nlohmann::ordered_json record;
  try {
    record = nlohmann::ordered_json::parse(line.begin(), line.end());
  } catch (const nlohmann::json::exception& e) {
    result.error = std::string("malformed JSON: ") + e.what();
    return result;
  }
  if (!record.is_object()) {
    result.error = "not a JSON object";
    return result;
  }
  auto field = record.find(text_field);
  if (field == record.end()) {
    result.error = "no field \"" + text_field + "\"";
    return result;
  }
  if (!field->is_string()) {
    result.error = "field \"" + text_field + "\" is not a string";
    return result;
  }
  result.text = std::move(field->get_ref<std::string&>());
  *field = "";
  result.record = std::move(record);
  return result;
}

std::string serialize_jsonl(nlohmann::ordered_json* record, const std::string& text_field,
                            std::string_view text) {
  constexpr auto kReplace = nlohmann::ordered_json::error_handler_t::replace;
  if (record == nullptr) {
    nlohmann::ordered_json object = nlohmann::ordered_json::object();
    object[text_field] = std::string(text);
    return object.dump(-1, ' ', false, kReplace);
  }
  (*record)[text_field] = std::string(text);
  return record->dump(-1, ' ', false, kReplace);
}

DocumentWriter::DocumentWriter(const std::string& path, int zstd_level)
    : format_(output_format_of(path)), writer_(path, zstd_level) {}

void DocumentWriter::write(std::string_view document) {
  if (format_ == DocumentFormat::jsonl) {
    writer_.write(document);
    writer_.write("\n");
  } else {
    if (documents_ > 0) {
      writer_.write("\n");
      writer_.write(kDocumentSeparator);
      writer_.write("\n");
    }
    writer_.write(document);
  }
  ++documents_;
}

void DocumentWriter::commit() {
  if (format_ == DocumentFormat::text && documents_ > 0) writer_.write("\n");
  writer_.commit();
}

}  // namespace frugal::clean
