// Unicode Normalization Form C (canonical decomposition, canonical ordering, canonical
// composition; UAX #15), the "NFC" normalizer of the Hugging Face `tokenizers` library.
//
// Tables come from tools/gen_unicode_nfc.py (Unicode version: nfc_unicode_version()); Hangul
// syllables are composed and decomposed algorithmically. Text containing no character that can
// change under NFC (the usual case, checked first) is returned unchanged without further work.
// Input must be valid UTF-8.
#pragma once

#include <string>
#include <string_view>

namespace frugal::tok {

std::string nfc(std::string_view text);
// True when nfc(text) == text is certain from the quick check (no character that may change).
bool nfc_quick_check(std::string_view text);
const char* nfc_unicode_version();

}  // namespace frugal::tok
