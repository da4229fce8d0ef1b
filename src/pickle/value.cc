#include "pickle/value.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <type_traits>
#include <unordered_map>
#include <vector>

namespace ckptstream::pickle {

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
      return "int";
    case Kind::kBigInt:
      return "int";
    case Kind::kFloat:
      return "float";
    case Kind::kString:
      return "str";
    case Kind::kBytes:
      return "bytes";
    case Kind::kTuple:
      return "tuple";
    case Kind::kList:
      return "list";
    case Kind::kDict:
      return "dict";
    case Kind::kSet:
      return "set";
    case Kind::kFrozenSet:
      return "frozenset";
    case Kind::kGlobal:
      return "global";
    case Kind::kObject:
      return "object";
    case Kind::kPersistentId:
      return "persistent id";
  }
  return "?";
}

namespace {

constexpr std::size_t kFirstBlock = 4096;
constexpr std::size_t kMaxBlock = 8u << 20;
constexpr std::size_t kIndexedDict = 8;  // dicts larger than this get a hash index

// Python equality of dict keys, for the scalar keys a pickle's dicts use (str, int, bool, None,
// bytes, float, big ints and tuples of those), as a string: equal keys give equal strings (True
// and 1 both "i1"); "" for other keys, which never compare equal, so they are all kept.
std::string index_key(const Value& k, int depth = 0) {
  switch (k.kind) {
    case Kind::kString:
      return "s" + std::string(k.text());
    case Kind::kInt:
      return "i" + std::to_string(k.integer);
    case Kind::kBool:
      return "i" + std::to_string(k.boolean ? 1 : 0);
    case Kind::kBigInt:
      return "I" + std::string(k.text());
    case Kind::kBytes:
      return "b" + std::string(k.text());
    case Kind::kNone:
      return "n";
    case Kind::kFloat: {
      std::string out = "f";
      out.append(reinterpret_cast<const char*>(&k.real), sizeof k.real);
      return out;
    }
    case Kind::kTuple: {
      if (depth > 8) return "";
      std::string out = "t" + std::to_string(k.items().size());
      for (const auto& item : k.items()) {
        std::string sub = index_key(*item, depth + 1);
        if (sub.empty()) return "";
        out += std::to_string(sub.size()) + ":" + sub;
      }
      return out;
    }
    default:
      return "";
  }
}

// index_key(a) == index_key(b), without building strings for the string keys of small dicts.
bool same_key(const Value& a, const Value& b) {
  if (a.kind == Kind::kString || b.kind == Kind::kString)
    return a.kind == b.kind && a.text() == b.text();
  std::string ka = index_key(a);
  return !ka.empty() && ka == index_key(b);
}

}  // namespace

// String keys (nearly all) by their arena text, without building a key string; others by
// index_key(). The string keys sit in one open-addressing table (linear probing, at most 3/4
// full) rather than a node per key: a rank file's state dict has tens of thousands of keys, and
// hashing them into nodes was a tenth of the time spent reading such a file.
struct DictIndex {
  struct StringSlot {
    std::string_view key;
    std::uint64_t hash = 0;  // 0: empty
    std::size_t position = SIZE_MAX;
  };
  std::vector<StringSlot> strings;  // a power of two in size, or empty
  std::size_t string_count = 0;
  std::unordered_map<std::string, std::size_t> others;

  // The slot for `key`'s position (new slots hold SIZE_MAX), valid until the next call; nullptr
  // if the key is not indexable.
  std::size_t* slot(const Value& key) {
    if (key.kind == Kind::kString) return string_slot(key.text());
    std::string k = index_key(key);
    if (k.empty()) return nullptr;
    return &others.try_emplace(std::move(k), SIZE_MAX).first->second;
  }

  // The slot of `key` (a new one holds SIZE_MAX); nullptr if the key is not there and `add` is
  // false.
  std::size_t* string_slot(std::string_view key, bool add = true) {
    if (add && (string_count + 1) * 4 > strings.size() * 3) grow();
    if (strings.empty()) return nullptr;
    std::uint64_t hash = std::hash<std::string_view>()(key) | 1;  // never 0
    std::size_t mask = strings.size() - 1;
    for (std::size_t i = hash & mask;; i = (i + 1) & mask) {
      StringSlot& s = strings[i];
      if (s.hash == hash && s.key == key) return &s.position;
      if (s.hash == 0) {
        if (!add) return nullptr;
        s = {key, hash, SIZE_MAX};
        ++string_count;
        return &s.position;
      }
    }
  }

  void grow() {
    std::vector<StringSlot> old(std::max<std::size_t>(16, strings.size() * 2));
    old.swap(strings);
    std::size_t mask = strings.size() - 1;
    for (const StringSlot& s : old) {
      if (s.hash == 0) continue;
      std::size_t i = s.hash & mask;
      while (strings[i].hash != 0) i = (i + 1) & mask;
      strings[i] = s;
    }
  }
};

BlockPool::~BlockPool() {
  for (auto [block, size] : blocks_) ::munmap(block, size);
}

std::byte* BlockPool::take(std::size_t size) {
  std::lock_guard lock(mutex_);
  for (auto it = blocks_.begin(); it != blocks_.end(); ++it)
    if (it->second == size) {
      std::byte* block = it->first;
      blocks_.erase(it);
      return block;
    }
  return nullptr;
}

std::size_t BlockPool::kept() const {
  std::lock_guard lock(mutex_);
  return blocks_.size();
}

void BlockPool::give(std::byte* block, std::size_t size) {
  std::lock_guard lock(mutex_);
  blocks_.emplace_back(block, size);
}

Arena::Arena(std::shared_ptr<BlockPool> pool) : pool_(std::move(pool)) {}

// Large blocks come straight from the kernel and go straight back: through malloc, the blocks
// of a graph built on one thread and freed later stayed in that thread's malloc arena, and
// reading many large pickles on a few threads held several graphs' worth of memory.
constexpr std::size_t kMappedBlock = 256u << 10;

Arena::~Arena() {
  for (DictIndex* index : indexes_) delete index;
  for (const Lane* lane : {&main_, &permanent_})
    for (const Block& block : lane->blocks) release(block);
}

void Arena::release(const Block& block) {
  if (block.size < kMappedBlock)
    std::free(block.data);
  else if (pool_)
    pool_->give(block.data, block.size);
  else
    ::munmap(block.data, block.size);
}

void* Arena::allocate(std::size_t size, std::size_t align) {
  Lane& lane = *lane_;
  std::size_t pad = (align - reinterpret_cast<std::uintptr_t>(lane.cursor) % align) % align;
  if (lane.left < pad + size) {
    // After a rewind the lane's later blocks are free: the next one large enough is reused.
    std::size_t next = lane.cursor ? lane.current + 1 : 0;
    while (next < lane.blocks.size() && lane.blocks[next].size < size + align) ++next;
    if (next >= lane.blocks.size()) {
      // Blocks double up to kMaxBlock: a tiny pickle (a DCP item) costs a few KiB, a large one
      // needs few blocks.
      std::size_t block = std::max(size + align, lane.next_block ? lane.next_block : kFirstBlock);
      lane.next_block = std::min(kMaxBlock, block * 2);
      void* memory = nullptr;
      if (block >= kMappedBlock) {
        memory = pool_ ? pool_->take(block) : nullptr;
        if (!memory)
          memory =
              ::mmap(nullptr, block, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (memory == MAP_FAILED) throw std::bad_alloc();
      } else {
        memory = std::malloc(block);
        if (!memory) throw std::bad_alloc();
      }
      next = lane.cursor ? lane.current + 1 : 0;  // in order after the block being filled
      lane.blocks.insert(lane.blocks.begin() + static_cast<std::ptrdiff_t>(next),
                         Block{static_cast<std::byte*>(memory), block});
    }
    lane.current = next;
    lane.cursor = lane.blocks[next].data;
    lane.left = lane.blocks[next].size;
    pad = (align - reinterpret_cast<std::uintptr_t>(lane.cursor) % align) % align;
  }
  std::byte* out = lane.cursor + pad;
  lane.cursor = out + size;
  lane.left -= pad + size;
  return out;
}

Arena::Mark Arena::mark() const {
  return Mark{main_.current, main_.cursor, main_.left, indexes_.size()};
}

void Arena::rewind(const Mark& mark) {
  for (std::size_t i = mark.indexes; i < indexes_.size(); ++i) delete indexes_[i];
  indexes_.resize(std::min(mark.indexes, indexes_.size()));
  main_.current = mark.block;
  main_.cursor = mark.cursor;
  main_.left = mark.left;
}

Value* Arena::make(Kind kind) {
  static_assert(std::is_trivially_destructible_v<Value>, "the arena never runs destructors");
  static_assert(sizeof(Value) <= 64, "a rank file of a large model has millions of nodes");
  return new (allocate(sizeof(Value), alignof(Value))) Value(kind);
}

std::string_view Arena::copy(std::string_view bytes) {
  if (bytes.empty()) return {};
  auto* out = static_cast<char*>(allocate(bytes.size(), 1));
  std::memcpy(out, bytes.data(), bytes.size());
  return {out, bytes.size()};
}

bool Arena::set_item(Value& dict, ValuePtr key, ValuePtr value) {
  if (!dict.use_map()) return false;
  auto& entries = dict.map;
  if (dict.index) {
    if (std::size_t* at = dict.index->slot(*key)) {
      if (*at != SIZE_MAX) {
        entries[*at].second = value;
        return true;
      }
      *at = entries.size();
    }
    append(entries, std::pair<ValuePtr, ValuePtr>(key, value));
    return true;
  }
  for (auto& [k, x] : entries)
    if (same_key(*k, *key)) {
      x = value;
      return true;
    }
  append(entries, std::pair<ValuePtr, ValuePtr>(key, value));
  if (entries.size() > kIndexedDict) {
    auto* index = new DictIndex;
    indexes_.push_back(index);
    dict.index = index;
    for (std::size_t i = 0; i < entries.size(); ++i)
      if (std::size_t* at = index->slot(*entries[i].first)) *at = i;
  }
  return true;
}

std::optional<std::int64_t> Value::as_int() const {
  if (kind == Kind::kInt) return integer;
  if (kind == Kind::kBool) return boolean ? 1 : 0;
  return std::nullopt;
}
std::optional<bool> Value::as_bool() const {
  if (kind == Kind::kBool) return boolean;
  if (kind == Kind::kInt && (integer == 0 || integer == 1)) return integer == 1;
  return std::nullopt;
}
std::optional<double> Value::as_float() const {
  if (kind == Kind::kFloat) return real;
  if (kind == Kind::kInt) return static_cast<double>(integer);
  return std::nullopt;
}
std::optional<std::string_view> Value::as_string() const {
  if (kind == Kind::kString || kind == Kind::kBytes) return chars;
  return std::nullopt;
}

const ValuePtr* Value::find_entry(std::string_view key) const {
  if (kind != Kind::kDict) return nullptr;
  if (index) {
    const std::size_t* at = index->string_slot(key, false);
    if (at && *at != SIZE_MAX) return &map[*at].second;
  }
  for (const auto& [k, x] : map.span())  // small dicts, and py2 byte-string keys
    if ((k->kind == Kind::kString || k->kind == Kind::kBytes) && k->chars == key) {
      if (k->kind == Kind::kString && index) continue;  // the index would have found it
      return &x;
    }
  return nullptr;
}

ValuePtr Value::find(std::string_view key) const {
  const ValuePtr* p = find_entry(key);
  return p ? *p : nullptr;
}

ValuePtr Value::attr(std::string_view key) const {
  if (!state) return nullptr;
  if (state->kind == Kind::kDict) return state->find(key);
  if (state->kind == Kind::kTuple && state->items().size() == 2) {
    for (const auto& part : state->items())
      if (part->kind == Kind::kDict)
        if (auto v = part->find(key)) return v;
  }
  return nullptr;
}

std::string Value::callable_name() const {
  if (kind == Kind::kObject && callable && callable->kind == Kind::kGlobal)
    return callable->qualified_name();
  return "";
}

std::string_view Value::class_name() const {
  const Value* g = this;
  if (kind == Kind::kObject) {
    if (!callable || callable->kind != Kind::kGlobal) return "";
    g = callable;
  } else if (kind != Kind::kGlobal) {
    return "";
  }
  std::string_view name = g->name();
  auto dot = name.rfind('.');
  return dot == std::string_view::npos ? name : name.substr(dot + 1);
}

std::string Value::qualified_name() const {
  return std::string(module()) + "." + std::string(name());
}

std::string_view Value::module() const {
  if (kind != Kind::kGlobal) return {};
  return chars.substr(0, chars.find('\0'));
}

std::string_view Value::name() const {
  if (kind != Kind::kGlobal) return {};
  auto end = chars.find('\0');
  return end == std::string_view::npos ? std::string_view() : chars.substr(end + 1);
}

std::string Value::int_decimal() const {
  if (kind == Kind::kInt) return std::to_string(integer);
  if (kind == Kind::kBool) return boolean ? "1" : "0";
  if (kind == Kind::kBigInt) return big_int_decimal(chars);
  return "";
}

std::string big_int_decimal(std::string_view bytes) {
  if (bytes.empty()) return "0";
  std::vector<std::uint8_t> mag(bytes.begin(), bytes.end());
  bool negative = (mag.back() & 0x80) != 0;
  if (negative) {  // magnitude = two's complement negation
    unsigned carry = 1;
    for (auto& b : mag) {
      unsigned x = static_cast<std::uint8_t>(~b) + carry;
      b = static_cast<std::uint8_t>(x);
      carry = x >> 8;
    }
  }
  std::string digits;
  while (!mag.empty()) {
    while (!mag.empty() && mag.back() == 0) mag.pop_back();
    if (mag.empty()) break;
    unsigned rem = 0;
    for (auto it = mag.rbegin(); it != mag.rend(); ++it) {
      unsigned cur = (rem << 8) | *it;
      *it = static_cast<std::uint8_t>(cur / 10);
      rem = cur % 10;
    }
    digits.push_back(static_cast<char>('0' + rem));
  }
  if (digits.empty()) digits = "0";
  if (negative) digits.push_back('-');
  std::reverse(digits.begin(), digits.end());
  return digits;
}

}  // namespace ckptstream::pickle
