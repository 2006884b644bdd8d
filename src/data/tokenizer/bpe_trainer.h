// Byte-level BPE training with the algorithm of the Hugging Face `tokenizers` BpeTrainer, so a
// corpus trained here and there gives the same merges (up to ties between identical heap
// entries, which only arise when a merge re-creates an existing token string).
//
//   1. Pre-token counts: every document is sanitised (invalid UTF-8 -> U+FFFD), normalized (NFC
//      when asked) and pre-tokenized; identical pre-tokens are counted (in parallel). Added /
//      special tokens are not split out of the training text (tokenizers does not either).
//   2. Vocabulary start: the special tokens with the first ids (0, 1, ...) in the given order,
//      then the 256 byte-level characters sorted by code point ('!' .. '~', '¡' .. 'ÿ', 'Ā' ..).
//   3. Pair counts over all words (weighted by word count), and for each pair the words that
//      contain it; a max-heap orders pairs by count, ties by the smaller (left id, right id).
//   4. Repeatedly: pop the top pair; if its count is stale, push it back with the current count;
//      stop when the vocabulary is full, the heap is empty, or the count is below max(1,
//      min_frequency); else append the merge (the new token is the concatenation; an existing
//      token string keeps its id), merge it in every word listed for the pair (in parallel) and
//      update the pair counts incrementally from the changes of those words only; pairs that
//      gained occurrences are pushed with their new word lists.
// vocab_size counts the special tokens, as tokenizers does.
//
// The result is a Tokenizer: BPE model, the configured pre-tokenizer, normalizer NFC or none,
// ByteLevel decoder, the special tokens as added special tokens (normalized=false), and (with
// add_bos and a BOS name) a TemplateProcessing post-processor that puts BOS before the text.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "data/tokenizer/pre_tokenizer.h"
#include "data/tokenizer/tokenizer.h"

namespace frugal {

struct BpeTrainOptions {
  int64_t vocab_size = 32000;  // including the special tokens
  int64_t min_frequency = 0;   // pairs seen fewer times are never merged
  // Added as special tokens with ids 0, 1, ... in this order (DeepSeek's eight by default).
  std::vector<std::string> special_tokens = SpecialTokenNames::deepseek().list();
  // Which special tokens play BOS, EOS, PAD, FIM and the chat roles (names must be listed above).
  SpecialTokenNames roles = SpecialTokenNames::deepseek();
  tok::PreTokenizerConfig pre_tokenizer = tok::PreTokenizerConfig::deepseek_v3();
  bool nfc = false;                         // normalizer NFC (else none)
  bool add_bos = true;                      // post-processor "<bos> $A" (needs roles.bos)
  std::optional<int64_t> max_token_length;  // in characters (= bytes), as tokenizers' option
  int threads = 0;                          // 0: all
  bool verbose = false;                     // progress on stderr
};

Tokenizer train_bpe(std::span<const std::string_view> documents, const BpeTrainOptions& options);
Tokenizer train_bpe(std::span<const std::string> documents, const BpeTrainOptions& options);

}  // namespace frugal
