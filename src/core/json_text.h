// Small helpers for writing JSON text by hand (reports, plans, manifests) where the exact bytes
// matter and a DOM would be overkill.
#pragma once

#include <string>
#include <string_view>

namespace ckptstream {

// `text` as a JSON string literal, quotes included. Escapes '"', '\\' and control characters;
// other UTF-8 passes through unchanged.
std::string json_quote(std::string_view text);

}  // namespace ckptstream
