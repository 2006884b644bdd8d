// A document as the loader emits it (a "piece"): optional BOS, the document's tokens - plain or
// rearranged by fill-in-the-middle (FIM) - and a closing EOS.
//
//   plain:  [BOS] doc[0, L) EOS
//   FIM:    [BOS] FIM_BEGIN doc[0, i) FIM_HOLE doc[j, L) FIM_END doc[i, j) EOS     (PSM order)
//
// i <= j are two cut points drawn uniformly from [0, L] (sorted), so prefix, middle and suffix
// may be empty and prefix + middle + suffix is the document unchanged. This is the PSM form of
// DeepSeek-V3 (spec 6.1): `<|fim_begin|> prefix <|fim_hole|> suffix <|fim_end|> middle
// <|eos_token|>`. DeepSeek applies FIM to the document text before tokenization; here it is
// applied to the token ids of pre-tokenized shards, cutting between tokens - the practical
// equivalent when documents are stored already tokenized (no re-tokenization at the cut points).
//
// A piece is described by at most 8 segments (a single special token or a token range of the
// document), so skipping over it needs only its length and copying a part of it reads only that
// part of the document.
#pragma once

#include <array>
#include <cstdint>

#include "data/shards/dataset.h"

namespace frugal {

struct PieceTokens {
  int32_t eos_id = -1;
  int32_t bos_id = -1;  // -1: no BOS
  int32_t fim_begin_id = -1, fim_hole_id = -1, fim_end_id = -1;
};

// Where FIM cuts a document of `length` tokens, drawn from three random 32-bit words:
// applied when words[0] / 2^32 < rate; the cuts are floor(words[k] * (length + 1) / 2^32), k = 1, 2.
struct FimCut {
  bool applied = false;
  int64_t prefix_end = 0;  // i
  int64_t middle_end = 0;  // j
};
FimCut draw_fim_cut(const uint32_t words[4], int64_t length, double rate);

class DocumentPiece {
 public:
  DocumentPiece() = default;
  DocumentPiece(int64_t doc_length, const FimCut& cut, const PieceTokens& special);

  int64_t length() const { return length_; }
  bool fim() const { return fim_; }
  // out[0, count) = piece tokens [offset, offset + count); offset + count <= length().
  void copy(const DocumentView& doc, int64_t offset, int64_t count, int32_t* out) const;

 private:
  struct Segment {
    int32_t special;      // >= 0: this single token; -1: document tokens [begin, end)
    int64_t begin, end;
    int64_t size() const { return special >= 0 ? 1 : end - begin; }
  };
  void add_special(int32_t id) { segments_[count_++] = {id, 0, 0}; }
  void add_range(int64_t begin, int64_t end) { segments_[count_++] = {-1, begin, end}; }

  std::array<Segment, 8> segments_{};
  int count_ = 0;
  int64_t length_ = 0;
  bool fim_ = false;
};

}  // namespace frugal
