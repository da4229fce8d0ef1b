#include "pickle/unpickler.h"

#include <array>
#include <bit>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "pickle/opcodes.h"

namespace ckptstream::pickle {
namespace {

using namespace opcode;

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

// Two's-complement little-endian bytes that fit int64, as that int; nullopt when they do not.
std::optional<std::int64_t> small_long(std::string_view bytes) {
  std::size_t n = bytes.size();
  if (n == 0) return 0;
  bool negative = (static_cast<std::uint8_t>(bytes[n - 1]) & 0x80) != 0;
  auto fill = static_cast<char>(negative ? 0xFF : 0x00);
  for (std::size_t i = 8; i < n; ++i)
    if (bytes[i] != fill) return std::nullopt;
  if (n > 8 && ((static_cast<std::uint8_t>(bytes[7]) & 0x80) != 0) != negative) return std::nullopt;
  std::uint64_t u = negative ? ~std::uint64_t{0} : 0;
  for (std::size_t i = 0; i < std::min<std::size_t>(n, 8); ++i) {
    u &= ~(std::uint64_t{0xFF} << (8 * i));
    u |= std::uint64_t{static_cast<std::uint8_t>(bytes[i])} << (8 * i);
  }
  return static_cast<std::int64_t>(u);
}

// A decimal integer literal (protocol-0 INT / LONG) of any size, as two's-complement
// little-endian bytes.
std::optional<std::string> parse_decimal(std::string_view s) {
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
  return std::string(mag.begin(), mag.end());
}

bool is_builtins(std::string_view module) {
  return module == "builtins" || module == "__builtin__";
}

bool is_latin1_name(std::string_view s) {
  return s == "latin1" || s == "latin-1";
}

// Every element costs at least a byte of pickle, so this keeps every container's count in 32 bits.
constexpr std::size_t kMaxPickle = UINT32_MAX;
constexpr std::int64_t kIntTable = 1 << 10;
constexpr std::int64_t kSharedInts = 1 << 16;
constexpr std::size_t kSharedTupleMax = 4;

struct TupleKey {
  std::array<const Value*, kSharedTupleMax> items;
  std::size_t size;
  bool operator==(const TupleKey&) const = default;
};
struct TupleKeyHash {
  std::size_t operator()(const TupleKey& k) const {
    std::size_t h = k.size;
    for (std::size_t i = 0; i < k.size; ++i)
      h = h * 0x9E3779B97F4A7C15ull ^ std::hash<const Value*>()(k.items[i]);
    return h;
  }
};

// Memo indices are dense in practice (Python numbers them 0, 1, 2, ...); a vector holds those,
// a map the rare far-off ones, so that a hostile index cannot make us allocate gigabytes.
constexpr std::uint64_t kDenseMemoSlack = 1u << 16;

// What a scan of the opcodes from `pos` to STOP tells about the memo.
struct MemoScan {
  std::vector<std::uint32_t> last_get;  // per memo index: 1 + offset of its last GET, or 0
  std::size_t puts = 0;                 // PUT, BINPUT, LONG_BINPUT, MEMOIZE
};

// nullopt where the scan cannot follow the stream (an unknown opcode, a truncated argument, an
// implausible index), which then is not streamed.
std::optional<MemoScan> scan_memo(std::span<const std::byte> data, std::size_t pos) {
  MemoScan scan;
  std::vector<std::uint32_t>& last = scan.last_get;
  auto fits = [&](std::uint64_t n) { return n <= data.size() - pos; };
  auto le = [&](std::size_t width) {
    std::uint64_t v = 0;
    for (std::size_t i = width; i-- > 0;) v = (v << 8) | static_cast<std::uint8_t>(data[pos + i]);
    return v;
  };
  auto skip_line = [&] {
    const void* nl = std::memchr(data.data() + pos, '\n', data.size() - pos);
    if (!nl) return false;
    pos = static_cast<std::size_t>(static_cast<const std::byte*>(nl) - data.data()) + 1;
    return true;
  };
  while (pos < data.size()) {
    const std::size_t at = pos;
    if (at >= kMaxPickle) return std::nullopt;  // offsets are kept in 32 bits
    const auto op = static_cast<std::uint8_t>(data[pos++]);
    std::uint64_t fixed = 0, sized = 0;  // argument bytes; width of a length prefix
    std::optional<std::uint64_t> got;
    if (op == kBinPut || op == kLongBinPut || op == kPut || op == kMemoize) ++scan.puts;
    switch (op) {
      case kStop:
        return scan;
      case kBinInt1:
      case kBinPut:
      case kProto:
      case kExt1:
        fixed = 1;
        break;
      case kBinInt2:
      case kExt2:
        fixed = 2;
        break;
      case kBinInt:
      case kLongBinPut:
      case kExt4:
        fixed = 4;
        break;
      case kBinFloat:
      case kFrame:
        fixed = 8;
        break;
      case kBinGet:
      case kLongBinGet: {
        std::size_t width = op == kBinGet ? 1 : 4;
        if (!fits(width)) return std::nullopt;
        got = le(width);
        fixed = width;
        break;
      }
      case kLong1:
      case kShortBinString:
      case kShortBinBytes:
      case kShortBinUnicode:
        sized = 1;
        break;
      case kLong4:
      case kBinString:
      case kBinUnicode:
      case kBinBytes:
        sized = 4;
        break;
      case kBinUnicode8:
      case kBinBytes8:
      case kByteArray8:
        sized = 8;
        break;
      case kGet: {
        const auto* begin = reinterpret_cast<const char*>(data.data() + pos);
        if (!skip_line()) return std::nullopt;
        std::uint64_t index = 0;
        auto [end, ec] =
            std::from_chars(begin, reinterpret_cast<const char*>(data.data() + pos) - 1, index);
        if (ec != std::errc()) return std::nullopt;
        got = index;
        break;
      }
      case kInt:
      case kLong:
      case kFloat:
      case kString:
      case kUnicode:
      case kPut:
      case kPersId:
        if (!skip_line()) return std::nullopt;
        break;
      case kGlobal:
      case kInst:
        if (!skip_line() || !skip_line()) return std::nullopt;
        break;
      case kMark:
      case kPop:
      case kPopMark:
      case kDup:
      case kNone:
      case kBinPersId:
      case kReduce:
      case kAppend:
      case kBuild:
      case kDict:
      case kEmptyDict:
      case kAppends:
      case kList:
      case kEmptyList:
      case kObj:
      case kSetItem:
      case kTuple:
      case kEmptyTuple:
      case kSetItems:
      case kNewObj:
      case kTuple1:
      case kTuple2:
      case kTuple3:
      case kNewTrue:
      case kNewFalse:
      case kEmptySet:
      case kAddItems:
      case kFrozenSet:
      case kNewObjEx:
      case kStackGlobal:
      case kMemoize:
      case kNextBuffer:
      case kReadOnlyBuffer:
        break;
      default:
        return std::nullopt;
    }
    if (sized) {
      if (!fits(sized)) return std::nullopt;
      fixed = sized + le(static_cast<std::size_t>(sized));
      if (fixed < sized) return std::nullopt;  // overflow
    }
    if (!fits(fixed)) return std::nullopt;
    pos += static_cast<std::size_t>(fixed);
    if (got) {
      // Python numbers memo entries densely: an index past the stream's length is not one.
      if (*got >= data.size()) return std::nullopt;
      if (*got >= last.size()) last.resize(static_cast<std::size_t>(*got) + 1, 0);
      last[static_cast<std::size_t>(*got)] = static_cast<std::uint32_t>(at + 1);
    }
  }
  return std::nullopt;  // no STOP
}

class Machine {
 public:
  Machine(std::span<const std::byte> data, std::size_t offset, std::shared_ptr<BlockPool> pool,
          RootItemSink* sink)
      : data_(data),
        pos_(offset),
        arena_(std::make_shared<Arena>(std::move(pool))),
        a_(*arena_),
        sink_(sink) {
    none_ = shared(Kind::kNone);
    true_ = shared(Kind::kBool);
    true_->boolean = true;
    false_ = shared(Kind::kBool);
    empty_tuple_ = shared(Kind::kTuple);
  }

  Result<Unpickled> run() {
    if (pos_ > data_.size()) return fail_at(pos_, "start offset past the end of the data");
    const std::size_t start = pos_;
    // Python memoizes nearly every object: about one memo entry per 16 bytes of a torch.save
    // pickle. Reserving that avoids copying a large memo as it grows.
    std::size_t memo_size = std::min<std::size_t>((data_.size() - pos_) / 16, std::size_t{1} << 22);
    if (sink_) {
      if (auto scan = scan_memo(data_, pos_)) {
        last_get_ = std::move(scan->last_get);
        last_get_.shrink_to_fit();  // grown by doubling
        // The count is exact (each PUT takes a byte of the stream): no doubling of a memo of
        // millions of entries (a DeepSeek-V3-sized DCP .metadata memoizes 7 million values).
        memo_size = scan->puts;
      } else {
        sink_ = nullptr;  // a stream the scan does not follow: built whole
      }
      region_mark_ = a_.mark();
    }
    memo_.reserve(memo_size);
    while (true) {
      op_offset_ = pos_;
      if (pos_ >= data_.size()) return fail("truncated stream (no STOP opcode)");
      if (pos_ - start > kMaxPickle)  // data may go on (a legacy file's storages follow)
        return Error{ErrorKind::kUnsupported,
                     fail("a pickle of 4 GiB or more is not supported").message};
      auto op = static_cast<std::uint8_t>(data_[pos_++]);
      if (op == kStop) {
        CKPT_ASSIGN_OR_RETURN(ValuePtr top, pop());
        if (root_ && top != root_)
          return Error{
              ErrorKind::kUnsupported,
              fail("the dict whose items were streamed is not the pickled object").message};
        Unpickled out;
        out.value = std::shared_ptr<Value>(arena_, top);  // keeps the arena alive
        out.end = pos_;
        out.persistent_ids = std::move(persistent_ids_);
        out.streamed_items = streamed_;
        out.released_regions = released_;
        return out;
      }
      if (fast_step(op)) continue;
      CKPT_TRY(step(op));
    }
  }

 private:
  Error fail_at(std::size_t at, const std::string& what) const {
    return invalid_input("pickle: " + what + " at offset " + std::to_string(at));
  }
  Error fail(const std::string& what) const { return fail_at(op_offset_, what); }

  // ---- values --------------------------------------------------------------------------------
  ValuePtr make(Kind kind) {
    ValuePtr v = a_.make(kind);
    v->region = region_;
    return v;
  }
  // Shared nodes are reused by any later part of the stream: never rewound.
  ValuePtr shared(Kind kind) {
    Arena::Permanent lane(a_);
    ValuePtr v = a_.make(kind);
    v->shared = true;
    v->region = kPermanentRegion;
    return v;
  }
  ValuePtr boolean(bool b) { return b ? true_ : false_; }
  ValuePtr integer(std::int64_t i) {
    // Sizes, strides and offsets repeat in every tensor record: one node per value. A table for
    // the smallest (cheap for the many tiny pickles of a DCP checkpoint), a map for the others.
    if (i >= 0 && i < kIntTable) {
      ValuePtr& v = int_table_[static_cast<std::size_t>(i)];
      if (!v) v = shared_int(i);
      return v;
    }
    if (i >= 0 && i < kSharedInts) {
      auto [it, fresh] = ints_.try_emplace(i, nullptr);
      if (fresh) it->second = shared_int(i);
      return it->second;
    }
    // Larger ones (hashes, a vocabulary size) rarely repeat: a node each.
    ValuePtr v = make(Kind::kInt);
    v->integer = i;
    return v;
  }
  ValuePtr shared_int(std::int64_t i) {
    ValuePtr v = shared(Kind::kInt);
    v->integer = i;
    return v;
  }
  ValuePtr long_value(std::string_view twos_complement_le) {
    if (auto i = small_long(twos_complement_le)) return integer(*i);
    ValuePtr v = make(Kind::kBigInt);
    v->chars = a_.copy(twos_complement_le);
    return v;
  }
  ValuePtr text_value(Kind kind, std::string_view text) {
    ValuePtr v = make(kind);
    v->chars = a_.copy(text);
    return v;
  }
  ValuePtr float_value(double d) {
    ValuePtr v = make(Kind::kFloat);
    v->real = d;
    return v;
  }
  ValuePtr global(std::string_view module, std::string_view name) {
    ValuePtr v = make(Kind::kGlobal);
    std::string joined;
    joined.reserve(module.size() + 1 + name.size());
    joined.append(module).append(1, '\0').append(name);
    v->chars = a_.copy(joined);
    return v;
  }
  ValuePtr container(Kind kind, std::span<const ValuePtr> items) {
    if (kind == Kind::kTuple) return tuple(items);
    ValuePtr v = make(kind);
    a_.append(v->list, items);
    return v;
  }
  // Tuples are immutable: those made only of shared values ((448,), (1,), (7168, 2048) in every
  // tensor record) are shared too, keyed by their items' identities.
  ValuePtr tuple(std::span<const ValuePtr> items) {
    if (items.empty()) return empty_tuple_;
    bool all_shared = items.size() <= kSharedTupleMax;
    for (std::size_t i = 0; all_shared && i < items.size(); ++i) all_shared = items[i]->shared;
    if (!all_shared) {
      ValuePtr v = make(Kind::kTuple);
      a_.append(v->list, items);
      return v;
    }
    TupleKey key{};
    std::copy(items.begin(), items.end(), key.items.begin());
    key.size = items.size();
    auto [it, inserted] = tuples_.try_emplace(key, nullptr);
    if (inserted) {
      it->second = shared(Kind::kTuple);
      Arena::Permanent lane(a_);
      a_.append(it->second->list, items);
    }
    return it->second;
  }
  ValuePtr object(ValuePtr callable, ValuePtr args, ValuePtr kwargs = nullptr) {
    ValuePtr v = make(Kind::kObject);
    v->callable = callable;
    v->args = args;
    v->kwargs = kwargs;
    return v;
  }
  ValuePtr persistent_id(ValuePtr pid) {
    ValuePtr v = make(Kind::kPersistentId);
    v->args = pid;
    persistent_ids_.push_back(v);
    return v;
  }

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
  Result<std::string_view> read_bytes(std::uint64_t n) {
    CKPT_TRY(need(n));
    std::string_view s(reinterpret_cast<const char*>(data_.data() + pos_),
                       static_cast<std::size_t>(n));
    pos_ += static_cast<std::size_t>(n);
    return s;
  }
  Result<std::string_view> read_line() {
    const auto* begin = reinterpret_cast<const char*>(data_.data() + pos_);
    const void* nl = std::memchr(begin, '\n', data_.size() - pos_);
    if (!nl) return fail("truncated stream (unterminated text argument)");
    std::size_t len = static_cast<std::size_t>(static_cast<const char*>(nl) - begin);
    pos_ += len + 1;
    return std::string_view(begin, len);
  }
  Result<std::string_view> read_sized(int width) {
    CKPT_ASSIGN_OR_RETURN(std::uint64_t n, read_le(width));
    return read_bytes(n);
  }

  // ---- the stacks ----------------------------------------------------------------------------
  std::size_t frame_base() const { return marks_.empty() ? 0 : marks_.back(); }
  void push(ValuePtr v) { stack_.push_back(v); }
  Result<ValuePtr> pop() {
    if (stack_.size() <= frame_base()) return fail("stack underflow");
    ValuePtr v = stack_.back();
    stack_.pop_back();
    return v;
  }
  Result<ValuePtr> top() {
    if (stack_.size() <= frame_base()) return fail("stack underflow");
    return stack_.back();
  }
  // Pops the innermost mark; the values above it stay on the stack, from the returned position,
  // for the caller to use and then drop with truncate().
  Result<std::size_t> pop_mark() {
    if (marks_.empty()) return fail("MARK missing");
    std::size_t base = marks_.back();
    marks_.pop_back();
    return base;
  }
  std::span<const ValuePtr> above(std::size_t base) const {
    return std::span<const ValuePtr>(stack_).subspan(base);
  }
  void truncate(std::size_t base) { stack_.resize(base); }

  Status memo_put(std::uint64_t index) {
    CKPT_ASSIGN_OR_RETURN(ValuePtr v, top());
    if (index != memo_.size()) region_pinned_ = true;  // safe_point() checks appended ones only
    if (index < memo_.size()) {
      if (!memo_[index]) ++memo_count_;
      memo_[index] = v;
    } else if (index - memo_.size() < kDenseMemoSlack) {
      memo_.resize(static_cast<std::size_t>(index) + 1, nullptr);
      memo_[index] = v;
      ++memo_count_;
    } else {
      if (sparse_memo_.insert_or_assign(index, v).second) ++memo_count_;
    }
    return {};
  }
  Status memo_get(std::uint64_t index) {
    if (index < memo_.size() && memo_[index]) {
      push(memo_[index]);
      return {};
    }
    auto it = sparse_memo_.find(index);
    if (it == sparse_memo_.end()) return fail("memo index " + std::to_string(index) + " not found");
    push(it->second);
    return {};
  }

  // ---- calls ---------------------------------------------------------------------------------
  // The few constructors that are plain values; nullptr when `callable(args)` is something else.
  ValuePtr known_call(const Value& callable, const Value& args) {
    if (callable.kind != Kind::kGlobal || args.kind != Kind::kTuple) return nullptr;
    std::string_view mod = callable.module();
    std::string_view name = callable.name();
    const auto a = args.items();
    if (mod == "collections" && (name == "OrderedDict" || name == "Counter")) {
      ValuePtr d = make(Kind::kDict);
      if (a.empty()) return d;
      if (a.size() == 1 && a[0]->kind == Kind::kDict) {
        for (const auto& [k, x] : a[0]->entries()) a_.set_item(*d, k, x);
        return d;
      }
      if (a.size() == 1 && a[0]->is_sequence()) {
        for (const auto& pair : a[0]->items()) {
          if (!pair->is_sequence() || pair->items().size() != 2) return nullptr;
          a_.set_item(*d, pair->items()[0], pair->items()[1]);
        }
        return d;
      }
      return nullptr;
    }
    if (mod == "_codecs" && name == "encode") {
      if (a.size() == 2 && a[0]->kind == Kind::kString && a[1]->kind == Kind::kString &&
          is_latin1_name(a[1]->text())) {
        if (auto bytes = utf8_to_latin1(a[0]->text())) return text_value(Kind::kBytes, *bytes);
      }
      return nullptr;
    }
    if (is_builtins(mod) && (name == "bytes" || name == "bytearray")) {
      if (a.empty()) return text_value(Kind::kBytes, "");
      if (a.size() == 1 && a[0]->kind == Kind::kBytes)
        return text_value(Kind::kBytes, a[0]->text());
      if (a.size() == 2 && a[0]->kind == Kind::kString && a[1]->kind == Kind::kString &&
          is_latin1_name(a[1]->text())) {
        if (auto bytes = utf8_to_latin1(a[0]->text())) return text_value(Kind::kBytes, *bytes);
      }
      if (a.size() == 1 && a[0]->is_sequence()) {
        std::string out;
        for (const auto& x : a[0]->items()) {
          auto i = x->as_int();
          if (!i || *i < 0 || *i > 255) return nullptr;
          out.push_back(static_cast<char>(*i));
        }
        return text_value(Kind::kBytes, out);
      }
      return nullptr;
    }
    if (is_builtins(mod) && (name == "set" || name == "frozenset")) {
      Kind kind = name == "set" ? Kind::kSet : Kind::kFrozenSet;
      if (a.empty()) return container(kind, {});
      if (a.size() == 1 &&
          (a[0]->is_sequence() || a[0]->kind == Kind::kSet || a[0]->kind == Kind::kFrozenSet))
        return container(kind, a[0]->items());
      return nullptr;
    }
    if (mod == "torch" && name == "Size") {
      if (a.size() == 1 && a[0]->is_sequence()) return container(Kind::kTuple, a[0]->items());
      return nullptr;
    }
    if (is_builtins(mod) && name == "getattr") {
      if (a.size() == 2 && a[0]->kind == Kind::kGlobal && a[1]->kind == Kind::kString)
        return global(a[0]->module(), std::string(a[0]->name()) + "." + std::string(a[1]->text()));
      return nullptr;
    }
    if ((mod == "copyreg" || mod == "copy_reg") && name == "_reconstructor") {
      // copyreg._reconstructor(cls, base, state): base.__new__(cls[, state]); BUILD follows.
      if (a.size() == 3 && a[0]->kind == Kind::kGlobal) {
        ValuePtr state = a[2];
        return object(a[0], state->kind == Kind::kNone ? container(Kind::kTuple, {})
                                                       : container(Kind::kTuple, {&state, 1}));
      }
      return nullptr;
    }
    return nullptr;
  }

  Status reduce() {
    CKPT_ASSIGN_OR_RETURN(ValuePtr args, pop());
    CKPT_ASSIGN_OR_RETURN(ValuePtr callable, pop());
    ValuePtr known = known_call(*callable, *args);
    push(known ? known : object(callable, args));
    return {};
  }

  Status new_object(ValuePtr cls, ValuePtr args, ValuePtr kwargs) {
    if (args->kind != Kind::kTuple) return fail("NEWOBJ arguments are not a tuple");
    if (kwargs == nullptr || kwargs->entries().empty()) {
      if (ValuePtr known = known_call(*cls, *args)) {
        push(known);
        return {};
      }
    }
    push(object(cls, args, kwargs));
    return {};
  }

  Status build() {
    CKPT_ASSIGN_OR_RETURN(ValuePtr state, pop());
    CKPT_ASSIGN_OR_RETURN(ValuePtr target, top());
    // Shared nodes stand for many values; Python cannot BUILD an int or a tuple either.
    if (target->shared) return fail(std::string("BUILD on a ") + kind_name(target->kind));
    touch(*target);
    if (target->state && target->state->kind == Kind::kDict && state->kind == Kind::kDict &&
        target->state != state) {
      for (const auto& [k, x] : state->entries()) a_.set_item(*target->state, k, x);
    } else {
      target->state = state;
    }
    return {};
  }

  // APPEND(S) to a list, ADDITEMS to a set (`kind`); either to an object (a subclass), which
  // then holds a list.
  Status extend(ValuePtr target, Kind kind, const char* op, std::span<const ValuePtr> values) {
    if (target->kind != kind && target->kind != Kind::kObject)
      return fail(std::string(op) + " to a " + kind_name(target->kind));
    if (!target->use_list())
      return fail(std::string(op) + " to an object that was given dict items");
    touch(*target);
    a_.append(target->list, values);
    return {};
  }

  Status set_items(ValuePtr dict, std::span<const ValuePtr> values) {
    if (values.size() % 2 != 0) return fail("SETITEMS with an odd number of items");
    if (dict->kind != Kind::kDict && dict->kind != Kind::kObject)
      return fail(std::string("SETITEM on a ") + kind_name(dict->kind));
    touch(*dict);
    for (std::size_t i = 0; i < values.size(); i += 2)
      if (!a_.set_item(*dict, values[i], values[i + 1]))
        return fail("SETITEM on an object that was appended to");
    return {};
  }

  // APPENDS / SETITEMS / ADDITEMS: `add` the values above the mark to the target just below it.
  template <class Add>
  Status add_marked(Add add) {
    CKPT_ASSIGN_OR_RETURN(std::size_t base, pop_mark());
    if (base == 0 || base - 1 < frame_base()) return fail("stack underflow");
    Status status = add(stack_[base - 1], above(base));
    truncate(base);
    return status;
  }

  // ---- streaming the saved dict's items (RootItemSink) ----------------------------------------
  // A container made before the current region was changed in it: the region may be referenced
  // from outside, so it is kept.
  void touch(const Value& target) {
    if (target.region != region_) region_pinned_ = true;
  }

  // SETITEM(S) into the dict at the bottom of the stack, with no mark left below: the items go
  // to the sink instead of the dict (which stays empty: anything else adding to it is an error).
  bool streams_into(std::size_t target, std::size_t marks_left) const {
    if (!sink_ || target != 0 || marks_left != 0 || stack_.empty()) return false;
    const Value& dict = *stack_[0];
    if (root_) return &dict == root_;
    return !nested_ && dict.kind == Kind::kDict && !dict.shared && dict.entries().empty();
  }

  // SETITEM(S) into the dict at stack index `target`: the value of a key the sink names, among
  // the key-value items above the only other mark (`outer`, the first item's stack index).
  bool streams_nested(std::size_t target, std::size_t outer) {
    if (!sink_ || root_ || target <= outer || (target - outer) % 2 == 0) return false;
    const Value& key = *stack_[target - 1];
    const Value& dict = *stack_[target];
    if (&dict == nested_) return true;
    if (&dict == refused_ || key.kind != Kind::kString || dict.kind != Kind::kDict || dict.shared ||
        !dict.entries().empty() || nested_dicts_ >= kMaxNestedDicts ||
        !sink_->streams_nested(key.text()))
      return false;
    ++nested_dicts_;  // each costs a pass over the memo below
    // A later GET of the dict itself would find it empty.
    for (std::size_t i = 0; i < memo_.size(); ++i)
      if (memo_[i] == &dict && i < last_get_.size() && last_get_[i] > pos_) {
        refused_ = &dict;
        return false;
      }
    for (const auto& [index, value] : sparse_memo_)
      if (value == &dict) {
        refused_ = &dict;
        return false;
      }
    nested_ = &dict;
    nested_key_ = std::string(key.text());
    return true;
  }

  Status stream_nested(std::span<const ValuePtr> keys_and_values) {
    if (keys_and_values.size() % 2 != 0) return fail("SETITEMS with an odd number of items");
    Status status = sink_->nested_items(nested_key_, nested_, keys_and_values);
    if (!status.ok()) return status.error().with_context("at offset " + std::to_string(op_offset_));
    streamed_ += keys_and_values.size() / 2;
    return {};
  }

  // SETITEMS whose items go to the sink (the root dict's, or a nested one's): pops the mark,
  // hands the items over, and frees what the batch made when it can.
  Status stream_marked(bool nested) {
    std::size_t base = marks_.back();
    marks_.pop_back();
    Status status = nested ? stream_nested(above(base)) : stream(above(base));
    truncate(base);
    if (status.ok()) nested ? nested_safe_point() : safe_point();
    return status;
  }

  static bool is_leaf(const Value& v) {
    switch (v.kind) {
      case Kind::kNone:
      case Kind::kBool:
      case Kind::kInt:
      case Kind::kBigInt:
      case Kind::kFloat:
      case Kind::kString:
      case Kind::kBytes:
      case Kind::kGlobal:
        return true;
      default:
        return false;
    }
  }

  // A copy of a leaf value in the permanent lane, for a later GET once its region is rewound.
  ValuePtr permanent_copy(const Value& v) {
    Arena::Permanent lane(a_);
    ValuePtr c = a_.make(v.kind);
    c->region = kPermanentRegion;
    c->boolean = v.boolean;
    if (v.kind == Kind::kFloat)
      c->real = v.real;
    else if (v.payload == Payload::kScalar)
      c->integer = v.integer;
    else if (v.payload == Payload::kChars)
      c->chars = a_.copy(v.chars);
    return c;
  }

  // After a nested streamed SETITEM(S): the region is rewound when nothing older was changed in
  // it, the dict streamed into is older, it made no persistent id, and each value it memoized
  // that a later GET fetches is a leaf (copied out first).
  void nested_safe_point() {
    bool dead = !region_pinned_ && nested_->region != region_ &&
                persistent_ids_.size() == region_persistent_ids_;
    for (const Value* v : stack_) dead = dead && v && v->region != region_;  // a stream gone odd
    std::vector<std::size_t> copy;
    for (std::size_t i = region_memo_; dead && i < memo_.size(); ++i) {
      const Value* v = memo_[i];
      if (!v || v->region != region_ || i >= last_get_.size() || last_get_[i] <= pos_) continue;
      if (is_leaf(*v))
        copy.push_back(i);
      else
        dead = false;
    }
    if (dead) {
      for (std::size_t i : copy) memo_[i] = permanent_copy(*memo_[i]);
      for (std::size_t i = region_memo_; i < memo_.size(); ++i)
        if (memo_[i] && memo_[i]->region == region_) memo_[i] = nullptr;
      a_.rewind(region_mark_);
      ++released_;
    }
    next_region();
  }

  void next_region() {
    if (region_ + 1 < kPermanentRegion) ++region_;
    region_mark_ = a_.mark();
    region_memo_ = memo_.size();
    region_pinned_ = false;
    region_persistent_ids_ = persistent_ids_.size();
  }

  Status stream(std::span<const ValuePtr> keys_and_values) {
    if (keys_and_values.size() % 2 != 0) return fail("SETITEMS with an odd number of items");
    root_ = stack_[0];
    handed_.swap(persistent_ids_);
    persistent_ids_.clear();
    Status status = sink_->items(keys_and_values, handed_);
    if (!status.ok()) return status.error().with_context("at offset " + std::to_string(op_offset_));
    streamed_ += keys_and_values.size() / 2;
    return {};
  }

  // After a streamed SETITEM(S): what the current region made is unreachable, and rewound, when
  // nothing older was changed in it, the saved dict is older, and no later GET fetches a value
  // it memoized (the stream was scanned for GETs up front).
  void safe_point() {
    bool dead = !region_pinned_ && root_->region != region_;
    for (std::size_t i = region_memo_; dead && i < memo_.size(); ++i)
      dead = i >= last_get_.size() || last_get_[i] <= pos_;
    if (dead) {
      std::fill(memo_.begin() + static_cast<std::ptrdiff_t>(region_memo_), memo_.end(), nullptr);
      a_.rewind(region_mark_);
      sink_->released(handed_);
      ++released_;
    }
    handed_.clear();
    next_region();
  }

  Status push_tuple_of(std::size_t n) {
    if (stack_.size() - frame_base() < n) return fail("stack underflow");
    std::size_t base = stack_.size() - n;
    ValuePtr tuple = container(Kind::kTuple, above(base));
    truncate(base);
    push(tuple);
    return {};
  }

  Result<std::string> read_global_part() {
    CKPT_ASSIGN_OR_RETURN(std::string_view s, read_line());
    return latin1_to_utf8(s);
  }

  // ---- one opcode ----------------------------------------------------------------------------
  // The opcodes that make up most of a torch.save pickle (memo traffic, small ints, marks,
  // small tuples), done without building a Status, when their argument and operands are there.
  // false: not done (pos_ unchanged); step() then does it, or reports what is wrong.
  bool fast_step(std::uint8_t op) {
    const std::size_t left = data_.size() - pos_;
    const std::size_t depth = stack_.size() - frame_base();
    auto byte = [&](std::size_t i) { return static_cast<std::uint8_t>(data_[pos_ + i]); };
    auto u32 = [&] {
      return std::uint32_t{byte(0)} | std::uint32_t{byte(1)} << 8 | std::uint32_t{byte(2)} << 16 |
             std::uint32_t{byte(3)} << 24;
    };
    switch (op) {
      case kBinPut:
      case kLongBinPut: {
        std::size_t width = op == kBinPut ? 1 : 4;
        if (left < width || depth == 0) return false;
        std::uint64_t index = width == 1 ? byte(0) : u32();
        if (index != memo_.size()) return false;  // Python's dense numbering; else the slow path
        memo_.push_back(stack_.back());
        ++memo_count_;
        pos_ += width;
        return true;
      }
      case kBinGet:
      case kLongBinGet: {
        std::size_t width = op == kBinGet ? 1 : 4;
        if (left < width) return false;
        std::uint64_t index = width == 1 ? byte(0) : u32();
        if (index >= memo_.size() || !memo_[index]) return false;
        stack_.push_back(memo_[index]);
        pos_ += width;
        return true;
      }
      case kMark:
        marks_.push_back(stack_.size());
        return true;
      case kBinInt1:
        if (left < 1) return false;
        stack_.push_back(integer(byte(0)));
        pos_ += 1;
        return true;
      case kBinInt2:
        if (left < 2) return false;
        stack_.push_back(integer(byte(0) | byte(1) << 8));
        pos_ += 2;
        return true;
      case kNone:
        stack_.push_back(none_);
        return true;
      case kNewTrue:
      case kNewFalse:
        stack_.push_back(boolean(op == kNewTrue));
        return true;
      case kEmptyTuple:
        stack_.push_back(empty_tuple_);
        return true;
      case kEmptyDict:
        stack_.push_back(make(Kind::kDict));
        return true;
      case kTuple1:
      case kTuple2:
      case kTuple3: {
        std::size_t n = op - kTuple1 + 1u;
        if (depth < n) return false;
        std::size_t base = stack_.size() - n;
        ValuePtr t = tuple(above(base));
        truncate(base);
        stack_.push_back(t);
        return true;
      }
      default:
        return false;
    }
  }

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
        CKPT_ASSIGN_OR_RETURN(std::size_t base, pop_mark());
        truncate(base);
        return {};
      }
      case kDup: {
        CKPT_ASSIGN_OR_RETURN(ValuePtr v, top());
        push(v);
        return {};
      }
      case kNone:
        push(none_);
        return {};
      case kNewTrue:
        push(true_);
        return {};
      case kNewFalse:
        push(false_);
        return {};
      case kInt: {
        CKPT_ASSIGN_OR_RETURN(std::string_view line, read_line());
        if (line == "00" || line == "01") {
          push(boolean(line == "01"));
          return {};
        }
        auto bytes = parse_decimal(line);
        if (!bytes) return fail("INT with a malformed literal");
        push(long_value(*bytes));
        return {};
      }
      case kLong: {
        CKPT_ASSIGN_OR_RETURN(std::string_view line, read_line());
        if (!line.empty() && line.back() == 'L') line.remove_suffix(1);
        auto bytes = parse_decimal(line);
        if (!bytes) return fail("LONG with a malformed literal");
        push(long_value(*bytes));
        return {};
      }
      case kBinInt: {
        CKPT_ASSIGN_OR_RETURN(std::uint64_t v, read_le(4));
        push(integer(static_cast<std::int32_t>(static_cast<std::uint32_t>(v))));
        return {};
      }
      case kBinInt1: {
        CKPT_ASSIGN_OR_RETURN(std::uint64_t v, read_le(1));
        push(integer(static_cast<std::int64_t>(v)));
        return {};
      }
      case kBinInt2: {
        CKPT_ASSIGN_OR_RETURN(std::uint64_t v, read_le(2));
        push(integer(static_cast<std::int64_t>(v)));
        return {};
      }
      case kLong1: {
        CKPT_ASSIGN_OR_RETURN(std::string_view bytes, read_sized(1));
        push(long_value(bytes));
        return {};
      }
      case kLong4: {
        CKPT_ASSIGN_OR_RETURN(std::uint64_t n, read_le(4));
        if (static_cast<std::int32_t>(static_cast<std::uint32_t>(n)) < 0)
          return fail("LONG4 with a negative length");
        CKPT_ASSIGN_OR_RETURN(std::string_view bytes, read_bytes(n));
        push(long_value(bytes));
        return {};
      }
      case kFloat: {
        CKPT_ASSIGN_OR_RETURN(std::string_view line, read_line());
        double d = 0;
        auto [end, ec] = std::from_chars(line.data(), line.data() + line.size(), d);
        if (ec != std::errc() || end != line.data() + line.size())
          return fail("FLOAT with a malformed literal");
        push(float_value(d));
        return {};
      }
      case kBinFloat: {
        CKPT_TRY(need(8));
        std::uint64_t bits = 0;
        for (int i = 0; i < 8; ++i) bits = (bits << 8) | static_cast<std::uint8_t>(data_[pos_++]);
        push(float_value(std::bit_cast<double>(bits)));
        return {};
      }
      case kString: {
        CKPT_ASSIGN_OR_RETURN(std::string_view line, read_line());
        auto s = decode_string_literal(line);
        if (!s) return fail("STRING with a malformed literal");
        push(text_value(Kind::kString, latin1_to_utf8(*s)));
        return {};
      }
      case kBinString: {
        CKPT_ASSIGN_OR_RETURN(std::uint64_t n, read_le(4));
        if (static_cast<std::int32_t>(static_cast<std::uint32_t>(n)) < 0)
          return fail("BINSTRING with a negative length");
        CKPT_ASSIGN_OR_RETURN(std::string_view s, read_bytes(n));
        push(text_value(Kind::kString, latin1_to_utf8(s)));
        return {};
      }
      case kShortBinString: {
        CKPT_ASSIGN_OR_RETURN(std::string_view s, read_sized(1));
        push(text_value(Kind::kString, latin1_to_utf8(s)));
        return {};
      }
      case kShortBinBytes:
        return push_text(Kind::kBytes, 1);
      case kBinBytes:
        return push_text(Kind::kBytes, 4);
      case kBinBytes8:
        return push_text(Kind::kBytes, 8);
      case kByteArray8:
        return push_text(Kind::kBytes, 8);
      case kUnicode: {
        CKPT_ASSIGN_OR_RETURN(std::string_view line, read_line());
        auto s = decode_raw_unicode_escape(line);
        if (!s) return fail("UNICODE with a malformed escape");
        push(text_value(Kind::kString, *s));
        return {};
      }
      case kShortBinUnicode:
        return push_text(Kind::kString, 1);
      case kBinUnicode:
        return push_text(Kind::kString, 4);
      case kBinUnicode8:
        return push_text(Kind::kString, 8);
      case kEmptyTuple:
        push(empty_tuple_);
        return {};
      case kTuple:
        return collect(Kind::kTuple);
      case kTuple1:
        return push_tuple_of(1);
      case kTuple2:
        return push_tuple_of(2);
      case kTuple3:
        return push_tuple_of(3);
      case kEmptyList:
        push(make(Kind::kList));
        return {};
      case kList:
        return collect(Kind::kList);
      case kAppend: {
        CKPT_ASSIGN_OR_RETURN(ValuePtr v, pop());
        CKPT_ASSIGN_OR_RETURN(ValuePtr list, top());
        return extend(list, Kind::kList, "APPEND", {&v, 1});
      }
      case kAppends:
        return add_marked([this](ValuePtr list, std::span<const ValuePtr> values) {
          return extend(list, Kind::kList, "APPEND", values);
        });
      case kEmptyDict:
        push(make(Kind::kDict));
        return {};
      case kDict: {
        CKPT_ASSIGN_OR_RETURN(std::size_t base, pop_mark());
        ValuePtr dict = make(Kind::kDict);
        Status status = set_items(dict, above(base));
        truncate(base);
        push(dict);
        return status;
      }
      case kSetItem: {
        CKPT_ASSIGN_OR_RETURN(ValuePtr value, pop());
        CKPT_ASSIGN_OR_RETURN(ValuePtr key, pop());
        CKPT_ASSIGN_OR_RETURN(ValuePtr dict, top());
        ValuePtr pair[2] = {key, value};
        if (streams_into(stack_.size() - 1, marks_.size())) {
          CKPT_TRY(stream(pair));
          safe_point();
          return {};
        }
        if (marks_.size() == 1 && streams_nested(stack_.size() - 1, marks_[0])) {
          CKPT_TRY(stream_nested(pair));
          nested_safe_point();
          return {};
        }
        return set_items(dict, pair);
      }
      case kSetItems: {
        if (marks_.size() == 1 && marks_.back() == 1 && streams_into(0, 0))
          return stream_marked(false);
        if (marks_.size() == 2 && marks_[1] >= 1 && streams_nested(marks_[1] - 1, marks_[0]))
          return stream_marked(true);
        return add_marked([this](ValuePtr dict, std::span<const ValuePtr> values) {
          return set_items(dict, values);
        });
      }
      case kEmptySet:
        push(make(Kind::kSet));
        return {};
      case kAddItems:
        return add_marked([this](ValuePtr set, std::span<const ValuePtr> values) {
          return extend(set, Kind::kSet, "ADDITEMS", values);
        });
      case kFrozenSet:
        return collect(Kind::kFrozenSet);
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
        return memo_put(memo_count_);
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
        push(global(module, name));
        return {};
      }
      case kStackGlobal: {
        CKPT_ASSIGN_OR_RETURN(ValuePtr name, pop());
        CKPT_ASSIGN_OR_RETURN(ValuePtr module, pop());
        if (module->kind != Kind::kString || name->kind != Kind::kString)
          return fail("STACK_GLOBAL operands are not strings");
        push(global(module->text(), name->text()));
        return {};
      }
      case kReduce:
        return reduce();
      case kNewObj: {
        CKPT_ASSIGN_OR_RETURN(ValuePtr args, pop());
        CKPT_ASSIGN_OR_RETURN(ValuePtr cls, pop());
        return new_object(cls, args, nullptr);
      }
      case kNewObjEx: {
        CKPT_ASSIGN_OR_RETURN(ValuePtr kwargs, pop());
        CKPT_ASSIGN_OR_RETURN(ValuePtr args, pop());
        CKPT_ASSIGN_OR_RETURN(ValuePtr cls, pop());
        return new_object(cls, args, kwargs);
      }
      case kInst: {
        CKPT_ASSIGN_OR_RETURN(std::string module, read_global_part());
        CKPT_ASSIGN_OR_RETURN(std::string name, read_global_part());
        CKPT_ASSIGN_OR_RETURN(std::size_t base, pop_mark());
        ValuePtr args = container(Kind::kTuple, above(base));
        truncate(base);
        return new_object(global(module, name), args, nullptr);
      }
      case kObj: {
        CKPT_ASSIGN_OR_RETURN(std::size_t base, pop_mark());
        auto items = above(base);
        if (items.empty()) return fail("OBJ without a class");
        ValuePtr cls = items.front();
        ValuePtr args = container(Kind::kTuple, items.subspan(1));
        truncate(base);
        return new_object(cls, args, nullptr);
      }
      case kBuild:
        return build();
      case kBinPersId: {
        CKPT_ASSIGN_OR_RETURN(ValuePtr pid, pop());
        push(persistent_id(pid));
        return {};
      }
      case kPersId: {
        CKPT_ASSIGN_OR_RETURN(std::string_view line, read_line());
        push(persistent_id(text_value(Kind::kString, latin1_to_utf8(line))));
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
      case kReadOnlyBuffer:
        return top().ok() ? Status{} : fail("stack underflow");
      default:
        return fail("unknown opcode 0x" + hex(op));
    }
  }

  static std::string hex(std::uint8_t op) {
    char buf[3];
    std::snprintf(buf, sizeof buf, "%02x", op);
    return buf;
  }

  // TUPLE / LIST / FROZENSET: the values above the mark become one container.
  Status collect(Kind kind) {
    CKPT_ASSIGN_OR_RETURN(std::size_t base, pop_mark());
    ValuePtr v = container(kind, above(base));
    truncate(base);
    push(v);
    return {};
  }

  Status push_text(Kind kind, int width) {
    CKPT_ASSIGN_OR_RETURN(std::string_view s, read_sized(width));
    push(text_value(kind, s));
    return {};
  }
  Result<std::uint64_t> read_text_index() {
    CKPT_ASSIGN_OR_RETURN(std::string_view line, read_line());
    std::uint64_t v = 0;
    auto [end, ec] = std::from_chars(line.data(), line.data() + line.size(), v);
    if (ec != std::errc() || end != line.data() + line.size() || line.empty())
      return fail("malformed memo index '" + std::string(line) + "'");
    return v;
  }

  std::span<const std::byte> data_;
  std::size_t pos_;
  std::size_t op_offset_ = 0;
  std::shared_ptr<Arena> arena_;
  Arena& a_;
  ValuePtr none_ = nullptr, true_ = nullptr, false_ = nullptr, empty_tuple_ = nullptr;
  std::array<ValuePtr, kIntTable> int_table_{};
  std::unordered_map<std::int64_t, ValuePtr> ints_;
  std::unordered_map<TupleKey, ValuePtr, TupleKeyHash> tuples_;
  std::vector<ValuePtr> stack_;
  std::vector<std::size_t> marks_;
  std::vector<ValuePtr> memo_;  // dense part; nullptr: not set
  std::unordered_map<std::uint64_t, ValuePtr> sparse_memo_;
  std::uint64_t memo_count_ = 0;
  std::vector<const Value*> persistent_ids_;
  // Streaming (sink_ set): see safe_point().
  RootItemSink* sink_ = nullptr;
  std::vector<std::uint32_t> last_get_;  // per memo index: 1 + offset of its last GET, or 0
  std::uint32_t region_ = 0;
  Arena::Mark region_mark_;
  std::size_t region_memo_ = 0;  // memo size when the region began
  bool region_pinned_ = false;
  std::size_t region_persistent_ids_ = 0;  // persistent ids made before the region
  const Value* root_ = nullptr;            // the dict streamed from
  const Value* nested_ = nullptr;          // the nested dict streamed from last
  std::string nested_key_;                 // ... the key it is the value of
  const Value* refused_ = nullptr;         // a nested dict not to stream (a later GET)
  std::size_t nested_dicts_ = 0;           // nested dicts considered so far
  // A sink streams a few named dicts; a stream offering ever more is not read that way.
  static constexpr std::size_t kMaxNestedDicts = 64;
  std::vector<const Value*> handed_;  // persistent ids handed over with the last items
  std::size_t streamed_ = 0, released_ = 0;
};

}  // namespace

Result<Unpickled> unpickle(std::span<const std::byte> data, std::size_t offset,
                           std::shared_ptr<BlockPool> pool) {
  return Machine(data, offset, std::move(pool), nullptr).run();
}

Result<Unpickled> unpickle_streaming(std::span<const std::byte> data, RootItemSink& sink,
                                     std::shared_ptr<BlockPool> pool) {
  return Machine(data, 0, std::move(pool), &sink).run();
}

}  // namespace ckptstream::pickle
