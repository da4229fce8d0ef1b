#include "core/json_text.h"

#include <cstdint>

namespace ckptstream {
namespace {

constexpr char kHexDigits[] = "0123456789abcdef";

void append_u_escape(std::string& out, std::uint32_t unit) {
  out += "\\u";
  for (int shift = 12; shift >= 0; shift -= 4) out += kHexDigits[(unit >> shift) & 0xF];
}

// The short escapes both writers share; returns 0 for characters that have none.
char short_escape(unsigned char c) {
  switch (c) {
    case '"':
      return '"';
    case '\\':
      return '\\';
    case '\b':
      return 'b';
    case '\f':
      return 'f';
    case '\n':
      return 'n';
    case '\r':
      return 'r';
    case '\t':
      return 't';
    default:
      return 0;
  }
}

// Decodes the UTF-8 sequence starting at text[i] (already validated) and advances i past it.
std::uint32_t decode_utf8(std::string_view text, std::size_t& i) {
  auto byte = [&](std::size_t k) {
    return static_cast<std::uint32_t>(static_cast<unsigned char>(text[k]));
  };
  std::uint32_t lead = byte(i);
  if (lead < 0x80) {
    i += 1;
    return lead;
  }
  int extra = lead >= 0xF0 ? 3 : lead >= 0xE0 ? 2 : 1;
  std::uint32_t code = lead & (0x3Fu >> extra);
  for (int k = 1; k <= extra; ++k)
    code = (code << 6) | (byte(i + static_cast<std::size_t>(k)) & 0x3F);
  i += static_cast<std::size_t>(extra) + 1;
  return code;
}

}  // namespace

bool is_valid_utf8(std::string_view text) {
  std::size_t i = 0;
  while (i < text.size()) {
    auto lead = static_cast<unsigned char>(text[i]);
    if (lead < 0x80) {
      ++i;
      continue;
    }
    std::size_t extra;
    std::uint32_t min_code;
    if (lead >= 0xC2 && lead <= 0xDF) {
      extra = 1;
      min_code = 0x80;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
      extra = 2;
      min_code = 0x800;
    } else if (lead >= 0xF0 && lead <= 0xF4) {
      extra = 3;
      min_code = 0x10000;
    } else {
      return false;
    }
    if (text.size() - i <= extra) return false;
    for (std::size_t k = 1; k <= extra; ++k)
      if ((static_cast<unsigned char>(text[i + k]) & 0xC0) != 0x80) return false;
    std::size_t at = i;
    std::uint32_t code = decode_utf8(text, at);
    if (code < min_code || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return false;
    i = at;
  }
  return true;
}

void append_serde_json_string(std::string& out, std::string_view text) {
  out += '"';
  for (char ch : text) {
    auto c = static_cast<unsigned char>(ch);
    if (char e = short_escape(c)) {
      out += '\\';
      out += e;
    } else if (c < 0x20) {
      append_u_escape(out, c);
    } else {
      out += ch;
    }
  }
  out += '"';
}

void append_python_json_string(std::string& out, std::string_view text) {
  out += '"';
  std::size_t i = 0;
  while (i < text.size()) {
    std::uint32_t code = decode_utf8(text, i);
    if (code < 0x80) {
      auto c = static_cast<unsigned char>(code);
      if (char e = short_escape(c)) {
        out += '\\';
        out += e;
      } else if (c < 0x20 || c == 0x7F) {
        append_u_escape(out, code);
      } else {
        out += static_cast<char>(c);
      }
    } else if (code < 0x10000) {
      append_u_escape(out, code);
    } else {
      std::uint32_t v = code - 0x10000;
      append_u_escape(out, 0xD800 | (v >> 10));
      append_u_escape(out, 0xDC00 | (v & 0x3FF));
    }
  }
  out += '"';
}

void append_json_text(std::string& out, std::string_view text) {
  if (is_valid_utf8(text)) {
    append_serde_json_string(out, text);
    return;
  }
  out += '"';
  for (char ch : text) {
    auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20 || c >= 0x7F) {
      append_u_escape(out, c);
    } else {
      out += ch;
    }
  }
  out += '"';
}

std::string json_quote(std::string_view text) {
  std::string out;
  append_json_text(out, text);
  return out;
}

}  // namespace ckptstream
