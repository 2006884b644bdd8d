// Plain and FIM (PSM) document pieces (see document_piece.h).
#include "data/loader/document_piece.h"

#include <algorithm>
#include <utility>

namespace frugal {

namespace {
// floor(word * (length + 1) / 2^32): uniform in [0, length].
int64_t scale_word(uint32_t word, int64_t length) {
  const unsigned __int128 product =
      static_cast<unsigned __int128>(word) * static_cast<unsigned __int128>(length + 1);
  return static_cast<int64_t>(product >> 32);
}
}  // namespace

FimCut draw_fim_cut(const uint32_t words[4], int64_t length, double rate) {
  FimCut cut;
  cut.applied = static_cast<double>(words[0]) * 0x1.0p-32 < rate;
  if (!cut.applied) return cut;
  int64_t a = scale_word(words[1], length), b = scale_word(words[2], length);
  if (a > b) std::swap(a, b);
  cut.prefix_end = a;
  cut.middle_end = b;
  return cut;
}

DocumentPiece::DocumentPiece(int64_t doc_length, const FimCut& cut, const PieceTokens& special) {
  if (special.bos_id >= 0) add_special(special.bos_id);
  if (cut.applied) {
    fim_ = true;
    add_special(special.fim_begin_id);
    add_range(0, cut.prefix_end);                  // prefix
    add_special(special.fim_hole_id);
    add_range(cut.middle_end, doc_length);         // suffix
    add_special(special.fim_end_id);
    add_range(cut.prefix_end, cut.middle_end);     // middle
  } else {
    add_range(0, doc_length);
  }
  add_special(special.eos_id);
  for (int s = 0; s < count_; ++s) length_ += segments_[static_cast<size_t>(s)].size();
}

void DocumentPiece::copy(const DocumentView& doc, int64_t offset, int64_t count,
                         int32_t* out) const {
  int64_t segment_start = 0;
  for (int s = 0; s < count_ && count > 0; ++s) {
    const Segment& segment = segments_[static_cast<size_t>(s)];
    const int64_t size = segment.size();
    if (offset < segment_start + size) {
      const int64_t inner = offset - segment_start;
      const int64_t n = std::min(count, size - inner);
      if (segment.special >= 0) {
        out[0] = segment.special;
      } else {
        doc.copy_to(segment.begin + inner, n, out);
      }
      out += n;
      offset += n;
      count -= n;
    }
    segment_start += size;
  }
}

}  // namespace frugal
