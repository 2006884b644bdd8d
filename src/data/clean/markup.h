// Text transforms: markup stripping with entity decoding, URL and e-mail removal, and removal of
// the document-separator token. Each returns the new text; input is valid UTF-8 (the UTF-8
// transform runs first), output is valid UTF-8.
//
// strip_markup (one left-to-right pass, so decoded entities are never re-read as markup):
//   - comments <!-- ... -->, declarations <!DOCTYPE ...>, processing instructions <?...?>: removed;
//     <![CDATA[ x ]]> -> x;
//   - <script ...> ... </script> and <style ...> ... </style>: removed with their content (to the
//     end of the text when the closing tag is missing);
//   - a tag is '<', optional '/', a name [A-Za-z][A-Za-z0-9:._-]*, then whitespace, '/' or '>',
//     attributes (quotes respected), '>' within 4096 bytes. In MarkupMode::html the name must be
//     an HTML element; in MarkupMode::xml any name. Paragraph-level HTML tags (p, div, h1, table,
//     ul, ...) end the paragraph (a blank line), line-level ones (br, li, tr, title, ...) end the
//     line, td/th and non-HTML tags (xml mode) become a space, other HTML tags disappear;
//   - entities: &amp; &lt; &gt; &quot; &apos; &nbsp; (as a space) and about 30 other common named
//     ones, &#NNN; and &#xHH; (U+0000, surrogates and values above U+10FFFF become U+FFFD);
//     unknown or unterminated entities stay as written;
//   - when any tag, comment or block was removed, whitespace is tidied: spaces and tabs collapsed,
//     lines trimmed, runs of blank lines reduced to one blank line.
//   Anything that is not well-formed markup ("a < b", "<stdio.h>" in html mode) stays as text.
//   Markdown and wiki markup are left as they are.
// remove_urls: http://, https://, ftp:// and www. (case-insensitive, at a word start) up to the
//   next whitespace or one of <>"; trailing .,;:!?'" and an unbalanced ')' or ']' stay in the text.
// remove_emails: local@domain.tld with local part [A-Za-z0-9._%+-]+ and a dotted domain whose last
//   label has at least two letters.
// When a removal leaves two spaces side by side, one is dropped.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "data/clean/clean_options.h"

namespace frugal::clean {

constexpr std::string_view kDocumentSeparator = "<|endoftext|>";

// `removed` (when given) receives the number of tags, comments, blocks and entities changed.
std::string strip_markup(std::string_view text, MarkupMode mode, size_t* removed = nullptr);
// Entity decoding alone (strip_markup does it as part of its pass).
std::string decode_entities(std::string_view text, size_t* decoded = nullptr);
std::string remove_urls(std::string_view text, size_t* removed = nullptr);
std::string remove_emails(std::string_view text, size_t* removed = nullptr);
std::string remove_separator_tokens(std::string_view text, size_t* removed = nullptr);

}  // namespace frugal::clean
