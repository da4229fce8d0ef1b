#include "pickle/unpickler.h"

#include <bit>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

namespace ckptstream::pickle {
namespace {

enum Op : std::uint8_t {
  kMark = '(',
  kStop = '.',
  kPop = '0',
  kPopMark = '1',
  kDup = '2',
  kFloat = 'F',
  kInt = 'I',
  kBinInt = 'J',
  kBinInt1 = 'K',
  kLong = 'L',
  kBinInt2 = 'M',
  kNone = 'N',
  kPersId = 'P',
  kBinPersId = 'Q',
  kReduce = 'R',
  kString = 'S',
  kBinString = 'T',
  kShortBinString = 'U',
  kUnicode = 'V',
  kBinUnicode = 'X',
  kAppend = 'a',
  kBuild = 'b',
  kGlobal = 'c',
  kDict = 'd',
  kEmptyDict = '}',
  kAppends = 'e',
  kGet = 'g',
  kBinGet = 'h',
  kInst = 'i',
  kLongBinGet = 'j',
  kList = 'l',
  kEmptyList = ']',
  kObj = 'o',
  kPut = 'p',
  kBinPut = 'q',
  kLongBinPut = 'r',
  kSetItem = 's',
  kTuple = 't',
  kEmptyTuple = ')',
  kSetItems = 'u',
  kBinFloat = 'G',
  kProto = 0x80,
  kNewObj = 0x81,
  kExt1 = 0x82,
  kExt2 = 0x83,
  kExt4 = 0x84,
  kTuple1 = 0x85,
  kTuple2 = 0x86,
  kTuple3 = 0x87,
  kNewTrue = 0x88,
  kNewFalse = 0x89,
  kLong1 = 0x8a,
  kLong4 = 0x8b,
  kBinBytes = 'B',
  kShortBinBytes = 'C',
  kShortBinUnicode = 0x8c,
  kBinUnicode8 = 0x8d,
  kBinBytes8 = 0x8e,
  kEmptySet = 0x8f,
  kAddItems = 0x90,
  kFrozenSet = 0x91,
  kNewObjEx = 0x92,
  kStackGlobal = 0x93,
  kMemoize = 0x94,
  kFrame = 0x95,
  kByteArray8 = 0x96,
  kNextBuffer = 0x97,
  kReadOnlyBuffer = 0x98,
};

constexpr std::size_t kMaxIntDigits = 10000;  // protocol-0 integer literals

void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string latin1_to_utf8(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (char c : in) append_utf8(out, static_cast<std::uint8_t>(c));
  return out;
}

// UTF-8 text whose code points are all < 256, as those bytes (Python's str.encode('latin1')).
std::optional<std::string> utf8_to_latin1(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (std::size_t i = 0; i < in.size();) {
    auto c = static_cast<std::uint8_t>(in[i]);
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
      ++i;
    } else if ((c & 0xE0) == 0xC0 && i + 1 < in.size()) {
      unsigned cp = ((c & 0x1Fu) << 6) | (static_cast<std::uint8_t>(in[i + 1]) & 0x3Fu);
      if (cp > 0xFF) return std::nullopt;
      out.push_back(static_cast<char>(cp));
      i += 2;
    } else {
      return std::nullopt;
    }
  }
  return out;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Python's raw-unicode-escape (protocol-0 UNICODE): latin-1 bytes, except \uXXXX / \UXXXXXXXX.
std::optional<std::string> decode_raw_unicode_escape(std::string_view in) {
  std::string out;
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '\\' && i + 1 < in.size() && (in[i + 1] == 'u' || in[i + 1] == 'U')) {
      std::size_t n = in[i + 1] == 'u' ? 4 : 8;
      if (i + 2 + n > in.size()) return std::nullopt;
      std::uint32_t cp = 0;
      for (std::size_t j = 0; j < n; ++j) {
        int d = hex_digit(in[i + 2 + j]);
        if (d < 0) return std::nullopt;
        cp = (cp << 4) | static_cast<std::uint32_t>(d);
      }
      if (cp > 0x10FFFF) return std::nullopt;
      append_utf8(out, cp);
      i += 1 + n;
    } else {
      append_utf8(out, static_cast<std::uint8_t>(in[i]));
    }
  }
  return out;
}

// A Python 2 string literal as written by repr() (protocol-0 STRING), as raw bytes.
std::optional<std::string> decode_string_literal(std::string_view in) {
  if (in.size() < 2 || in.front() != in.back() || (in.front() != '\'' && in.front() != '"'))
    return std::nullopt;
  in = in.substr(1, in.size() - 2);
  std::string out;
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '\\') {
      out.push_back(in[i]);
      continue;
    }
    if (++i >= in.size()) return std::nullopt;
    char c = in[i];
    switch (c) {
      case 'n':
        out.push_back('\n');
        break;
      case 't':
        out.push_back('\t');
        break;
      case 'r':
        out.push_back('\r');
        break;
      case 'a':
        out.push_back('\a');
        break;
      case 'b':
        out.push_back('\b');
        break;
      case 'f':
        out.push_back('\f');
        break;
      case 'v':
        out.push_back('\v');
        break;
      case '\n':
        break;
      case 'x': {
        if (i + 2 >= in.size()) return std::nullopt;
        int h = hex_digit(in[i + 1]), l = hex_digit(in[i + 2]);
        if (h < 0 || l < 0) return std::nullopt;
        out.push_back(static_cast<char>(h * 16 + l));
        i += 2;
        break;
      }
      default:
        if (c >= '0' && c <= '7') {
          int v = 0, n = 0;
          while (n < 3 && i < in.size() && in[i] >= '0' && in[i] <= '7') {
            v = v * 8 + (in[i] - '0');
            ++i;
            ++n;
          }
          --i;
          out.push_back(static_cast<char>(v & 0xFF));
        } else {
          out.push_back(c);  // \\ \' \" and unknown escapes keep the character
        }
    }
  }
  return out;
}

// Two's-complement little-endian bytes -> Int when they fit int64, else BigInt.
ValuePtr make_long(std::string bytes) {
  std::size_t n = bytes.size();
  if (n == 0) return Value::int_value(0);
  bool negative = (static_cast<std::uint8_t>(bytes[n - 1]) & 0x80) != 0;
  auto fill = static_cast<char>(negative ? 0xFF : 0x00);
  bool fits = true;
  for (std::size_t i = 8; i < n; ++i) fits = fits && bytes[i] == fill;
  if (n > 8) fits = fits && ((static_cast<std::uint8_t>(bytes[7]) & 0x80) != 0) == negative;
  if (!fits) {
    auto v = std::make_shared<Value>(Kind::kBigInt);
    v->text = std::move(bytes);
    return v;
  }
  std::uint64_t u = negative ? ~std::uint64_t{0} : 0;
  for (std::size_t i = 0; i < std::min<std::size_t>(n, 8); ++i) {
    u &= ~(std::uint64_t{0xFF} << (8 * i));
    u |= std::uint64_t{static_cast<std::uint8_t>(bytes[i])} << (8 * i);
  }
  return Value::int_value(static_cast<std::int64_t>(u));
}

// A decimal integer literal (protocol-0 INT / LONG) of any size.
std::optional<ValuePtr> parse_decimal(std::string_view s) {
  bool negative = false;
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) {
    negative = s[0] == '-';
    s.remove_prefix(1);
  }
  if (s.empty() || s.size() > kMaxIntDigits) return std::nullopt;
  std::vector<std::uint8_t> mag;  // little-endian magnitude
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    unsigned carry = static_cast<unsigned>(c - '0');
    for (auto& b : mag) {
      unsigned x = b * 10u + carry;
      b = static_cast<std::uint8_t>(x);
      carry = x >> 8;
    }
    if (carry) mag.push_back(static_cast<std::uint8_t>(carry));
  }
  mag.push_back(0);  // room for the sign bit
  if (negative) {
    unsigned carry = 1;
    for (auto& b : mag) {
      unsigned x = static_cast<std::uint8_t>(~b) + carry;
      b = static_cast<std::uint8_t>(x);
      carry = x >> 8;
    }
  }
  return make_long(std::string(mag.begin(), mag.end()));
}

bool is_builtins(const std::string& module) {
  return module == "builtins" || module == "__builtin__";
}

class Machine {
 public:
  Machine(std::span<const std::byte> data, std::size_t offset) : data_(data), pos_(offset) {}

  Result<Unpickled> run() {
    if (pos_ > data_.size()) return fail_at(pos_, "start offset past the end of the data");
    while (true) {
      op_offset_ = pos_;
      if (pos_ >= data_.size()) return fail("truncated stream (no STOP opcode)");
      auto op = static_cast<std::uint8_t>(data_[pos_++]);
      if (op == kStop) {
        CKPT_ASSIGN_OR_RETURN(ValuePtr top, pop());
        return Unpickled{std::move(top), pos_};
      }
      CKPT_TRY(step(op));
    }
  }

 private:
  Error fail_at(std::size_t at, const std::string& what) const {
    return invalid_input("pickle: " + what + " at offset " + std::to_string(at));
  }
  Error fail(const std::string& what) const { return fail_at(op_offset_, what); }

  // ---- reading inline arguments -------------------------------------------------------------
  Status need(std::uint64_t n) const {
    if (n > data_.size() - pos_)
      return fail("truncated stream (argument of " + std::to_string(n) + " bytes, " +
                  std::to_string(data_.size() - pos_) + " left)");
    return {};
  }
  Result<std::uint64_t> read_le(int width) {
    CKPT_TRY(need(static_cast<std::uint64_t>(width)));
    std::uint64_t v = 0;
    for (int i = width - 1; i >= 0; --i)
      v = (v << 8) | static_cast<std::uint8_t>(data_[pos_ + static_cast<std::size_t>(i)]);
    pos_ += static_cast<std::size_t>(width);
    return v;
  }
  Result<std::string> read_bytes(std::uint64_t n) {
    CKPT_TRY(need(n));
    std::string s(reinterpret_cast<const char*>(data_.data() + pos_), static_cast<std::size_t>(n));
    pos_ += static_cast<std::size_t>(n);
    return s;
  }
  Result<std::string> read_line() {
    const auto* begin = reinterpret_cast<const char*>(data_.data() + pos_);
    const void* nl = std::memchr(begin, '\n', data_.size() - pos_);
    if (!nl) return fail("truncated stream (unterminated text argument)");
    std::size_t len = static_cast<std::size_t>(static_cast<const char*>(nl) - begin);
    pos_ += len + 1;
    return std::string(begin, len);
  }
  Result<std::string> read_sized(int width) {
    CKPT_ASSIGN_OR_RETURN(std::uint64_t n, read_le(width));
    return read_bytes(n);
  }

  // ---- the stacks ----------------------------------------------------------------------------
  std::size_t frame_base() const { return marks_.empty() ? 0 : marks_.back(); }
  void push(ValuePtr v) { stack_.push_back(std::move(v)); }
  Result<ValuePtr> pop() {
    if (stack_.size() <= frame_base()) return fail("stack underflow");
    ValuePtr v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  Result<ValuePtr> top() {
    if (stack_.size() <= frame_base()) return fail("stack underflow");
    return stack_.back();
  }
  Result<std::vector<ValuePtr>> pop_mark() {
    if (marks_.empty()) return fail("MARK missing");
    std::size_t base = marks_.back();
    marks_.pop_back();
    std::vector<ValuePtr> items(std::make_move_iterator(stack_.begin() + static_cast<long>(base)),
                                std::make_move_iterator(stack_.end()));
    stack_.resize(base);
    return items;
  }
  Status memo_put(std::uint64_t index) {
    CKPT_ASSIGN_OR_RETURN(ValuePtr v, top());
    memo_[index] = std::move(v);
    return {};
  }
  Status memo_get(std::uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) return fail("memo index " + std::to_string(index) + " not found");
    push(it->second);
    return {};
  }

  // ---- calls ---------------------------------------------------------------------------------
  static ValuePtr object(ValuePtr callable, ValuePtr args, ValuePtr kwargs = nullptr) {
    auto v = std::make_shared<Value>(Kind::kObject);
    v->callable = std::move(callable);
    v->args = std::move(args);
    v->kwargs = std::move(kwargs);
    return v;
  }

  // The few constructors that are plain values; nullptr when `callable(args)` is something else.
  static ValuePtr known_call(const Value& callable, const Value& args) {
    if (callable.kind != Kind::kGlobal || args.kind != Kind::kTuple) return nullptr;
    const std::string& mod = callable.module;
    const std::string& name = callable.name;
    const auto& a = args.items;
    if (mod == "collections" && (name == "OrderedDict" || name == "Counter")) {
      auto d = std::make_shared<Value>(Kind::kDict);
      d->module = mod;
      d->name = name;
      if (a.empty()) return d;
      if (a.size() == 1 && a[0]->kind == Kind::kDict) {
        for (const auto& [k, x] : a[0]->entries) d->set_item(k, x);
        return d;
      }
      if (a.size() == 1 && a[0]->is_sequence()) {
        for (const auto& pair : a[0]->items) {
          if (!pair->is_sequence() || pair->items.size() != 2) return nullptr;
          d->set_item(pair->items[0], pair->items[1]);
        }
        return d;
      }
      return nullptr;
    }
    if (mod == "_codecs" && name == "encode") {
      if (a.size() == 2 && a[0]->kind == Kind::kString && a[1]->kind == Kind::kString &&
          (a[1]->text == "latin1" || a[1]->text == "latin-1")) {
        if (auto bytes = utf8_to_latin1(a[0]->text)) return Value::bytes_value(std::move(*bytes));
      }
      return nullptr;
    }
    if (is_builtins(mod) && (name == "bytes" || name == "bytearray")) {
      if (a.empty()) return Value::bytes_value("");
      if (a.size() == 1 && a[0]->kind == Kind::kBytes) return Value::bytes_value(a[0]->text);
      if (a.size() == 2 && a[0]->kind == Kind::kString && a[1]->kind == Kind::kString &&
          (a[1]->text == "latin1" || a[1]->text == "latin-1")) {
        if (auto bytes = utf8_to_latin1(a[0]->text)) return Value::bytes_value(std::move(*bytes));
      }
      if (a.size() == 1 && a[0]->is_sequence()) {
        std::string out;
        for (const auto& x : a[0]->items) {
          auto i = x->as_int();
          if (!i || *i < 0 || *i > 255) return nullptr;
          out.push_back(static_cast<char>(*i));
        }
        return Value::bytes_value(std::move(out));
      }
      return nullptr;
    }
    if (is_builtins(mod) && (name == "set" || name == "frozenset")) {
      Kind kind = name == "set" ? Kind::kSet : Kind::kFrozenSet;
      if (a.empty()) return Value::container(kind);
      if (a.size() == 1 &&
          (a[0]->is_sequence() || a[0]->kind == Kind::kSet || a[0]->kind == Kind::kFrozenSet))
        return Value::container(kind, a[0]->items);
      return nullptr;
    }
    if (mod == "torch" && name == "Size") {
      if (a.size() == 1 && a[0]->is_sequence()) return Value::container(Kind::kTuple, a[0]->items);
      return nullptr;
    }
    if (is_builtins(mod) && name == "getattr") {
      if (a.size() == 2 && a[0]->kind == Kind::kGlobal && a[1]->kind == Kind::kString)
        return Value::global(a[0]->module, a[0]->name + "." + a[1]->text);
      return nullptr;
    }
    if ((mod == "copyreg" || mod == "copy_reg") && name == "_reconstructor") {
      // copyreg._reconstructor(cls, base, state): base.__new__(cls[, state]); BUILD follows.
      if (a.size() == 3 && a[0]->kind == Kind::kGlobal) {
        auto args_tuple = Value::container(Kind::kTuple);
        if (a[2]->kind != Kind::kNone) args_tuple->items.push_back(a[2]);
        return object(a[0], std::move(args_tuple));
      }
      return nullptr;
    }
    return nullptr;
  }

  Status reduce() {
    CKPT_ASSIGN_OR_RETURN(ValuePtr args, pop());
    CKPT_ASSIGN_OR_RETURN(ValuePtr callable, pop());
    ValuePtr known = known_call(*callable, *args);
    push(known ? known : object(std::move(callable), std::move(args)));
    return {};
  }

  Status new_object(ValuePtr cls, ValuePtr args, ValuePtr kwargs) {
    if (args->kind != Kind::kTuple) return fail("NEWOBJ arguments are not a tuple");
    if (kwargs == nullptr || kwargs->entries.empty()) {
      if (ValuePtr known = known_call(*cls, *args)) {
        push(known);
        return {};
      }
    }
    push(object(std::move(cls), std::move(args), std::move(kwargs)));
    return {};
  }

  Status build() {
    CKPT_ASSIGN_OR_RETURN(ValuePtr state, pop());
    CKPT_ASSIGN_OR_RETURN(ValuePtr target, top());
    if (target->state && target->state->kind == Kind::kDict && state->kind == Kind::kDict &&
        target->state != state) {
      for (const auto& [k, x] : state->entries) target->state->set_item(k, x);
    } else {
      target->state = std::move(state);
    }
    return {};
  }

  Status append_items(std::vector<ValuePtr> values) {
    CKPT_ASSIGN_OR_RETURN(ValuePtr list, top());
    if (list->kind != Kind::kList && list->kind != Kind::kObject)
      return fail(std::string("APPEND to a ") + kind_name(list->kind));
    for (auto& v : values) list->items.push_back(std::move(v));
    return {};
  }

  Status set_items(std::vector<ValuePtr> values) {
    if (values.size() % 2 != 0) return fail("SETITEMS with an odd number of items");
    CKPT_ASSIGN_OR_RETURN(ValuePtr dict, top());
    if (dict->kind != Kind::kDict && dict->kind != Kind::kObject)
      return fail(std::string("SETITEM on a ") + kind_name(dict->kind));
    for (std::size_t i = 0; i < values.size(); i += 2)
      dict->set_item(std::move(values[i]), std::move(values[i + 1]));
    return {};
  }

  Status add_items(std::vector<ValuePtr> values) {
    CKPT_ASSIGN_OR_RETURN(ValuePtr set, top());
    if (set->kind != Kind::kSet && set->kind != Kind::kObject)
      return fail(std::string("ADDITEMS to a ") + kind_name(set->kind));
    for (auto& v : values) set->items.push_back(std::move(v));
    return {};
  }

  Status push_tuple_of(std::size_t n) {
    if (stack_.size() - frame_base() < n) return fail("stack underflow");
    std::vector<ValuePtr> items(std::make_move_iterator(stack_.end() - static_cast<long>(n)),
                                std::make_move_iterator(stack_.end()));
    stack_.resize(stack_.size() - n);
    push(Value::container(Kind::kTuple, std::move(items)));
    return {};
  }

  Result<std::string> read_global_part() {
    CKPT_ASSIGN_OR_RETURN(std::string s, read_line());
    return latin1_to_utf8(s);
  }

  // ---- one opcode ----------------------------------------------------------------------------
  Status step(std::uint8_t op) {
    switch (op) {
      case kProto: {
        CKPT_ASSIGN_OR_RETURN(std::uint64_t proto, read_le(1));
        if (proto > 5) return fail("unsupported pickle protocol " + std::to_string(proto));
        return {};
      }
      case kFrame: {
        CKPT_ASSIGN_OR_RETURN(std::uint64_t n, read_le(8));
        return need(n);  // frames only group opcodes; the data is contiguous
      }
      case kMark:
        marks_.push_back(stack_.size());
        return {};
      case kPop:
        if (stack_.size() > frame_base()) {
          stack_.pop_back();
          return {};
        }
        if (marks_.empty()) return fail("stack underflow");
        marks_.pop_back();  // POP on an empty frame discards the mark, as Python does
        return {};
      case kPopMark: {
        CKPT_ASSIGN_OR_RETURN(auto dropped, pop_mark());
        return {};
      }
      case kDup: {
        CKPT_ASSIGN_OR_RETURN(ValuePtr v, top());
        push(std::move(v));
        return {};
      }
      case kNone:
        push(Value::none());
        return {};
      case kNewTrue:
        push(Value::boolean_value(true));
        return {};
      case kNewFalse:
        push(Value::boolean_value(false));
        return {};
      case kInt: {
        CKPT_ASSIGN_OR_RETURN(std::string line, read_line());
        if (line == "00" || line == "01") {
          push(Value::boolean_value(line == "01"));
          return {};
        }
        auto v = parse_decimal(line);
        if (!v) return fail("INT with a malformed literal");
        push(*v);
        return {};
      }
      case kLong: {
        CKPT_ASSIGN_OR_RETURN(std::string line, read_line());
        if (!line.empty() && line.back() == 'L') line.pop_back();
        auto v = parse_decimal(line);
        if (!v) return fail("LONG with a malformed literal");
        push(*v);
        return {};
      }
      case kBinInt: {
        CKPT_ASSIGN_OR_RETURN(std::uint64_t v, read_le(4));
        push(Value::int_value(static_cast<std::int32_t>(static_cast<std::uint32_t>(v))));
        return {};
      }
      case kBinInt1: {
        CKPT_ASSIGN_OR_RETURN(std::uint64_t v, read_le(1));
        push(Value::int_value(static_cast<std::int64_t>(v)));
        return {};
      }
      case kBinInt2: {
        CKPT_ASSIGN_OR_RETURN(std::uint64_t v, read_le(2));
        push(Value::int_value(static_cast<std::int64_t>(v)));
        return {};
      }
      case kLong1: {
        CKPT_ASSIGN_OR_RETURN(std::string bytes, read_sized(1));
        push(make_long(std::move(bytes)));
        return {};
      }
      case kLong4: {
        CKPT_ASSIGN_OR_RETURN(std::uint64_t n, read_le(4));
        if (static_cast<std::int32_t>(static_cast<std::uint32_t>(n)) < 0)
          return fail("LONG4 with a negative length");
        CKPT_ASSIGN_OR_RETURN(std::string bytes, read_bytes(n));
        push(make_long(std::move(bytes)));
        return {};
      }
      case kFloat: {
        CKPT_ASSIGN_OR_RETURN(std::string line, read_line());
        double d = 0;
        auto [end, ec] = std::from_chars(line.data(), line.data() + line.size(), d);
        if (ec != std::errc() || end != line.data() + line.size())
          return fail("FLOAT with a malformed literal");
        push(Value::float_value(d));
        return {};
      }
      case kBinFloat: {
        CKPT_TRY(need(8));
        std::uint64_t bits = 0;
        for (int i = 0; i < 8; ++i) bits = (bits << 8) | static_cast<std::uint8_t>(data_[pos_++]);
        push(Value::float_value(std::bit_cast<double>(bits)));
        return {};
      }
      case kString: {
        CKPT_ASSIGN_OR_RETURN(std::string line, read_line());
        auto s = decode_string_literal(line);
        if (!s) return fail("STRING with a malformed literal");
        push(Value::string_value(latin1_to_utf8(*s)));
        return {};
      }
      case kBinString: {
        CKPT_ASSIGN_OR_RETURN(std::uint64_t n, read_le(4));
        if (static_cast<std::int32_t>(static_cast<std::uint32_t>(n)) < 0)
          return fail("BINSTRING with a negative length");
        CKPT_ASSIGN_OR_RETURN(std::string s, read_bytes(n));
        push(Value::string_value(latin1_to_utf8(s)));
        return {};
      }
      case kShortBinString: {
        CKPT_ASSIGN_OR_RETURN(std::string s, read_sized(1));
        push(Value::string_value(latin1_to_utf8(s)));
        return {};
      }
      case kShortBinBytes:
        return push_bytes(1);
      case kBinBytes:
        return push_bytes(4);
      case kBinBytes8:
        return push_bytes(8);
      case kByteArray8:
        return push_bytes(8);
      case kUnicode: {
        CKPT_ASSIGN_OR_RETURN(std::string line, read_line());
        auto s = decode_raw_unicode_escape(line);
        if (!s) return fail("UNICODE with a malformed escape");
        push(Value::string_value(std::move(*s)));
        return {};
      }
      case kShortBinUnicode:
        return push_string(1);
      case kBinUnicode:
        return push_string(4);
      case kBinUnicode8:
        return push_string(8);
      case kEmptyTuple:
        push(Value::container(Kind::kTuple));
        return {};
      case kTuple: {
        CKPT_ASSIGN_OR_RETURN(auto items, pop_mark());
        push(Value::container(Kind::kTuple, std::move(items)));
        return {};
      }
      case kTuple1:
        return push_tuple_of(1);
      case kTuple2:
        return push_tuple_of(2);
      case kTuple3:
        return push_tuple_of(3);
      case kEmptyList:
        push(Value::container(Kind::kList));
        return {};
      case kList: {
        CKPT_ASSIGN_OR_RETURN(auto items, pop_mark());
        push(Value::container(Kind::kList, std::move(items)));
        return {};
      }
      case kAppend: {
        CKPT_ASSIGN_OR_RETURN(ValuePtr v, pop());
        std::vector<ValuePtr> one;
        one.push_back(std::move(v));
        return append_items(std::move(one));
      }
      case kAppends: {
        CKPT_ASSIGN_OR_RETURN(auto items, pop_mark());
        return append_items(std::move(items));
      }
      case kEmptyDict:
        push(Value::container(Kind::kDict));
        return {};
      case kDict: {
        CKPT_ASSIGN_OR_RETURN(auto items, pop_mark());
        push(Value::container(Kind::kDict));
        return set_items(std::move(items));
      }
      case kSetItem: {
        CKPT_ASSIGN_OR_RETURN(ValuePtr value, pop());
        CKPT_ASSIGN_OR_RETURN(ValuePtr key, pop());
        std::vector<ValuePtr> pair;
        pair.push_back(std::move(key));
        pair.push_back(std::move(value));
        return set_items(std::move(pair));
      }
      case kSetItems: {
        CKPT_ASSIGN_OR_RETURN(auto items, pop_mark());
        return set_items(std::move(items));
      }
      case kEmptySet:
        push(Value::container(Kind::kSet));
        return {};
      case kAddItems: {
        CKPT_ASSIGN_OR_RETURN(auto items, pop_mark());
        return add_items(std::move(items));
      }
      case kFrozenSet: {
        CKPT_ASSIGN_OR_RETURN(auto items, pop_mark());
        push(Value::container(Kind::kFrozenSet, std::move(items)));
        return {};
      }
      case kBinPut: {
        CKPT_ASSIGN_OR_RETURN(std::uint64_t i, read_le(1));
        return memo_put(i);
      }
      case kLongBinPut: {
        CKPT_ASSIGN_OR_RETURN(std::uint64_t i, read_le(4));
        return memo_put(i);
      }
      case kPut: {
        CKPT_ASSIGN_OR_RETURN(std::uint64_t i, read_text_index());
        return memo_put(i);
      }
      case kMemoize:
        return memo_put(memo_.size());
      case kBinGet: {
        CKPT_ASSIGN_OR_RETURN(std::uint64_t i, read_le(1));
        return memo_get(i);
      }
      case kLongBinGet: {
        CKPT_ASSIGN_OR_RETURN(std::uint64_t i, read_le(4));
        return memo_get(i);
      }
      case kGet: {
        CKPT_ASSIGN_OR_RETURN(std::uint64_t i, read_text_index());
        return memo_get(i);
      }
      case kGlobal: {
        CKPT_ASSIGN_OR_RETURN(std::string module, read_global_part());
        CKPT_ASSIGN_OR_RETURN(std::string name, read_global_part());
        push(Value::global(std::move(module), std::move(name)));
        return {};
      }
      case kStackGlobal: {
        CKPT_ASSIGN_OR_RETURN(ValuePtr name, pop());
        CKPT_ASSIGN_OR_RETURN(ValuePtr module, pop());
        if (module->kind != Kind::kString || name->kind != Kind::kString)
          return fail("STACK_GLOBAL operands are not strings");
        push(Value::global(module->text, name->text));
        return {};
      }
      case kReduce:
        return reduce();
      case kNewObj: {
        CKPT_ASSIGN_OR_RETURN(ValuePtr args, pop());
        CKPT_ASSIGN_OR_RETURN(ValuePtr cls, pop());
        return new_object(std::move(cls), std::move(args), nullptr);
      }
      case kNewObjEx: {
        CKPT_ASSIGN_OR_RETURN(ValuePtr kwargs, pop());
        CKPT_ASSIGN_OR_RETURN(ValuePtr args, pop());
        CKPT_ASSIGN_OR_RETURN(ValuePtr cls, pop());
        return new_object(std::move(cls), std::move(args), std::move(kwargs));
      }
      case kInst: {
        CKPT_ASSIGN_OR_RETURN(std::string module, read_global_part());
        CKPT_ASSIGN_OR_RETURN(std::string name, read_global_part());
        CKPT_ASSIGN_OR_RETURN(auto items, pop_mark());
        return new_object(Value::global(std::move(module), std::move(name)),
                          Value::container(Kind::kTuple, std::move(items)), nullptr);
      }
      case kObj: {
        CKPT_ASSIGN_OR_RETURN(auto items, pop_mark());
        if (items.empty()) return fail("OBJ without a class");
        ValuePtr cls = std::move(items.front());
        items.erase(items.begin());
        return new_object(std::move(cls), Value::container(Kind::kTuple, std::move(items)),
                          nullptr);
      }
      case kBuild:
        return build();
      case kBinPersId: {
        CKPT_ASSIGN_OR_RETURN(ValuePtr pid, pop());
        push(persistent_id(std::move(pid)));
        return {};
      }
      case kPersId: {
        CKPT_ASSIGN_OR_RETURN(std::string line, read_line());
        push(persistent_id(Value::string_value(latin1_to_utf8(line))));
        return {};
      }
      case kExt1:
      case kExt2:
      case kExt4:
        return Error{
            ErrorKind::kUnsupported,
            fail("copyreg extension opcode EXT (0x" + hex(op) + ") is not supported").message};
      case kNextBuffer:
        return Error{ErrorKind::kUnsupported,
                     fail("out-of-band buffers (NEXT_BUFFER) are not supported").message};
      case kReadOnlyBuffer: {
        CKPT_ASSIGN_OR_RETURN(ValuePtr v, top());
        return {};
      }
      default:
        return fail("unknown opcode 0x" + hex(op));
    }
  }

  static std::string hex(std::uint8_t op) {
    char buf[3];
    std::snprintf(buf, sizeof buf, "%02x", op);
    return buf;
  }

  static ValuePtr persistent_id(ValuePtr pid) {
    auto v = std::make_shared<Value>(Kind::kPersistentId);
    v->args = std::move(pid);
    return v;
  }

  Status push_bytes(int width) {
    CKPT_ASSIGN_OR_RETURN(std::string s, read_sized(width));
    push(Value::bytes_value(std::move(s)));
    return {};
  }
  Status push_string(int width) {
    CKPT_ASSIGN_OR_RETURN(std::string s, read_sized(width));
    push(Value::string_value(std::move(s)));
    return {};
  }
  Result<std::uint64_t> read_text_index() {
    CKPT_ASSIGN_OR_RETURN(std::string line, read_line());
    std::uint64_t v = 0;
    auto [end, ec] = std::from_chars(line.data(), line.data() + line.size(), v);
    if (ec != std::errc() || end != line.data() + line.size() || line.empty())
      return fail("malformed memo index '" + line + "'");
    return v;
  }

  std::span<const std::byte> data_;
  std::size_t pos_;
  std::size_t op_offset_ = 0;
  std::vector<ValuePtr> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<std::uint64_t, ValuePtr> memo_;
};

}  // namespace

Result<Unpickled> unpickle(std::span<const std::byte> data, std::size_t offset) {
  return Machine(data, offset).run();
}

}  // namespace ckptstream::pickle
