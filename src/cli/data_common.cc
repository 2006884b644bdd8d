#include "cli/data_common.h"

#include <filesystem>

namespace frugal {

DocumentTextReader::DocumentTextReader(const std::vector<std::string>& inputs,
                                       const std::string& text_field, bool paragraphs)
    : files_(clean::list_input_files(inputs)),
      reader_(files_, paragraphs ? clean::TextDocuments::paragraph : clean::TextDocuments::separator),
      text_field_(text_field) {
  for (const std::string& f : files_) total_bytes_ += std::filesystem::file_size(f);
}

bool DocumentTextReader::next_batch(std::vector<std::string>& texts, size_t max_bytes) {
  std::vector<clean::RawDocument> raw;
  if (!reader_.read_batch(raw, max_bytes, size_t{1} << 20)) return false;
  for (clean::RawDocument& doc : raw) {
    if (doc.format == clean::DocumentFormat::text) {
      texts.push_back(std::move(doc.content));
      continue;
    }
    clean::JsonlRecord record = clean::parse_jsonl_record(doc.content, text_field_);
    if (!record.record) {
      ++malformed_;
      continue;
    }
    texts.push_back(std::move(record.text));
  }
  return true;
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
