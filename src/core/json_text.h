// JSON text written by hand (headers, indexes, manifests, reports), escaped as the two reference
// writers do, so that our headers and index files are byte for byte those of
// `safetensors.torch.save_file` and transformers' `save_pretrained`:
//  - serde_json (Rust, used by the safetensors writer) escapes only `"`, `\` and the control
//    characters U+0000..U+001F (\b \t \n \f \r in short form, the rest as \u00xx with lowercase
//    hex); everything else, U+007F and non-ASCII included, is copied as UTF-8.
//  - Python's json.dumps(ensure_ascii=True) also escapes U+007F and every non-ASCII code point as
//    \uxxxx (lowercase hex), code points above U+FFFF as a UTF-16 surrogate pair.
#pragma once

#include <string>
#include <string_view>

namespace ckptstream {

// True if `text` is well-formed UTF-8 (no overlong forms, no surrogates, at most U+10FFFF).
bool is_valid_utf8(std::string_view text);

// Appends `text` (valid UTF-8) as a quoted JSON string, escaped as serde_json does.
void append_serde_json_string(std::string& out, std::string_view text);

// Appends `text` (valid UTF-8) as a quoted JSON string, escaped as Python's json.dumps does with
// ensure_ascii=True.
void append_python_json_string(std::string& out, std::string_view text);

// Appends any bytes as a quoted JSON string: valid UTF-8 escaped as serde_json does; anything
// else (a name or path that is not UTF-8) with every byte outside printable ASCII as \u00XX, so
// that the output is always valid JSON. The one writer of every JSON text ckptstream prints.
void append_json_text(std::string& out, std::string_view text);

// `text` as a JSON string literal, quotes included (append_json_text).
std::string json_quote(std::string_view text);

}  // namespace ckptstream
