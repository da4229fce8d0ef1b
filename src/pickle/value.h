// Plain values produced by the pickle VM (unpickler.h). A pickle is a program; we never run it:
// a GLOBAL becomes a name, a call (REDUCE/NEWOBJ) becomes an Object node keeping the callable, its
// arguments and the state BUILD gave it, except for a few harmless constructors that map to plain
// values (OrderedDict -> Dict, bytes/bytearray/_codecs.encode -> Bytes, set/frozenset, torch.Size
// -> Tuple, getattr(cls, 'Name') -> Global).
//
// Nodes live in an Arena owned by the unpickled result and point at each other with plain
// pointers: the pickle memo shares them (the same tensor saved under two names is one node reached
// twice), BUILD / SETITEMS mutate a node after it was memoized, and graphs may even be cyclic (a
// list containing itself); walkers must bound their depth. One arena per pickle, freed at once,
// because a torch.save file of a large model holds millions of small values: a heap allocation
// and a reference count per value made parsing slow and memory-hungry. Strings are copied into
// the arena, so a value never points into the pickled bytes.
//
// Walking a value:
//   switch (v.kind) { case Kind::kDict: for (auto& [k, x] : v.entries()) ...; }
//   v.find("key")                  dict lookup by string key (nullptr if absent)
//   v.attr("name")                 attribute of an Object (or a Dict's BUILD state): looks in a
//                                  dict state and in the (dict|None, slots) form
//   v.callable_name()              "module.name" of an Object's callable (its class for NEWOBJ)
//   v.class_name()                 just the final name ("DTensor")
//   v.as_int() / as_string() ...   typed accessors returning std::optional
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ckptstream::pickle {

struct Value;
using ValuePtr = Value*;  // owned by the Arena that made it

enum class Kind : std::uint8_t {
  kNone,
  kBool,
  kInt,     // fits int64: `integer`
  kBigInt,  // beyond int64: `text` holds two's-complement little-endian bytes (LONG1/LONG4)
  kFloat,
  kString,        // UTF-8 in `text` (py2 byte strings are decoded as latin-1)
  kBytes,         // raw bytes in `text` (bytes and bytearray)
  kTuple,         // `items`
  kList,          // `items`
  kDict,          // `entries` in insertion order; keys may be any value
  kSet,           // `items`
  kFrozenSet,     // `items`
  kGlobal,        // `module`, `name` (nested classes: "Outer.Inner")
  kObject,        // `callable` (a Global, usually the class), `args`, `kwargs`, `state`
  kPersistentId,  // `args` holds the persistent id value (BINPERSID / PERSID)
};

const char* kind_name(Kind kind);

// A read-only sequence in arena memory (items of a container, entries of a dict). Only the Arena
// appends to it. 32-bit counts keep values small; unpickle() refuses pickles of 4 GiB or more, so
// no container can outgrow them (every element costs at least one byte of pickle).
template <class T>
class ArenaList {
 public:
  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  T& operator[](std::size_t i) { return data_[i]; }
  const T& operator[](std::size_t i) const { return data_[i]; }
  T* begin() { return data_; }
  T* end() { return data_ + size_; }
  const T* begin() const { return data_; }
  const T* end() const { return data_ + size_; }
  std::span<const T> span() const { return {data_, size_}; }

 private:
  friend class Arena;
  T* data_ = nullptr;
  std::uint32_t size_ = 0;
  std::uint32_t capacity_ = 0;
};

struct DictIndex;  // value.cc: scalar key -> entries index, built for larger dicts

// Which member of Value's payload union is in use.
enum class Payload : std::uint8_t { kNone, kScalar, kChars, kList, kMap };

struct Value {
  Kind kind = Kind::kNone;
  bool boolean = false;
  bool shared = false;  // one node for all equal values (None, bools, ints, tuples of those)
  Payload payload = Payload::kNone;
  // The unpickler's streaming region this node was made in (kPermanentRegion: shared nodes);
  // fills what would be padding.
  std::uint32_t region = 0;
  // One of these, so that a node is 64 bytes (a rank file of a large model unpickles into over
  // a million nodes). The kind fixes which, except for an Object: APPENDS or SETITEMS on it (a
  // list or dict subclass) give it a list or a map. Read them through the accessors below, which
  // give an empty result for the others.
  union {
    std::int64_t integer;         // Int
    double real;                  // Float
    std::string_view chars = {};  // String, Bytes, BigInt; Global: module '\0' name
    ArenaList<ValuePtr> list;     // Tuple, List, Set, FrozenSet
    ArenaList<std::pair<ValuePtr, ValuePtr>> map;  // Dict, in insertion order
  };
  ValuePtr callable = nullptr;  // Object: a Global (or any value for REDUCE on something odd)
  ValuePtr args = nullptr;      // Object: a Tuple (or the argument as pickled); PersistentId: pid
  ValuePtr kwargs = nullptr;    // Object: NEWOBJ_EX keyword arguments (a Dict), else null
  ValuePtr state = nullptr;     // BUILD state (Object, Dict attributes, ...), null if no BUILD
  DictIndex* index = nullptr;   // Dict: owned by the arena

  // Not "= default": clang 14 takes the union's non-trivial members for a deleted default
  // constructor despite `chars`' initializer (the fuzz build, fuzz/README.md, uses clang).
  Value() {}
  explicit Value(Kind k) : kind(k) {
    if (k == Kind::kDict)
      use_map();
    else if (is_container())
      use_list();
    else if (k == Kind::kInt || k == Kind::kFloat)
      payload = Payload::kScalar;
    else if (k == Kind::kString || k == Kind::kBytes || k == Kind::kBigInt || k == Kind::kGlobal)
      payload = Payload::kChars;
  }
  // Makes `list` (`map`) the payload if there is none yet; false if the other one is.
  bool use_list() {
    if (payload == Payload::kNone) {
      new (&list) ArenaList<ValuePtr>();
      payload = Payload::kList;
    }
    return payload == Payload::kList;
  }
  bool use_map() {
    if (payload == Payload::kNone) {
      new (&map) ArenaList<std::pair<ValuePtr, ValuePtr>>();
      payload = Payload::kMap;
    }
    return payload == Payload::kMap;
  }
  Value(const Value&) = delete;
  Value& operator=(const Value&) = delete;

  bool is(Kind k) const { return kind == k; }
  bool is_sequence() const { return kind == Kind::kTuple || kind == Kind::kList; }
  bool is_container() const {
    return is_sequence() || kind == Kind::kSet || kind == Kind::kFrozenSet;
  }

  // Tuple, List, Set, FrozenSet (and an Object appended to): the items; else empty.
  std::span<const ValuePtr> items() const {
    return payload == Payload::kList ? list.span() : std::span<const ValuePtr>();
  }
  // Dict (and an Object given items): the entries in insertion order; else empty.
  std::span<const std::pair<ValuePtr, ValuePtr>> entries() const {
    return payload == Payload::kMap ? map.span() : std::span<const std::pair<ValuePtr, ValuePtr>>();
  }
  // String (UTF-8), Bytes, BigInt (two's complement, little-endian); else empty.
  std::string_view text() const {
    return payload == Payload::kChars && kind != Kind::kGlobal ? chars : std::string_view();
  }
  // Global: the module and the (possibly dotted) name; empty for other kinds.
  std::string_view module() const;
  std::string_view name() const;

  std::optional<std::int64_t> as_int() const;         // Int (and Bool as 0/1)
  std::optional<bool> as_bool() const;                // Bool (and Int 0/1)
  std::optional<double> as_float() const;             // Float or Int
  std::optional<std::string_view> as_string() const;  // String (and Bytes, for py2 files)

  // Dict: the value stored under the string key, or nullptr.
  const ValuePtr* find_entry(std::string_view key) const;
  ValuePtr find(std::string_view key) const;

  // Object (or a Dict carrying BUILD attributes): the attribute `key` from the BUILD state,
  // which may be a dict, a (dict|None, slots_dict) tuple, or absent. nullptr if not found.
  ValuePtr attr(std::string_view key) const;

  // Object: "module.name" of the callable when it is a Global, else "".
  std::string callable_name() const;
  // Object: the final component of the callable's name ("DTensor"); Global: its final name.
  std::string_view class_name() const;
  // Global: "module.name".
  std::string qualified_name() const;

  // Int or BigInt as decimal text.
  std::string int_decimal() const;
};

// Large arena blocks kept for the next graph: a reader that parses many large pickles one after
// another reuses pages already mapped instead of faulting in (and zeroing) fresh ones for each.
// Thread-safe: a graph may be freed on another thread than the one that built it.
class BlockPool {
 public:
  BlockPool() = default;
  ~BlockPool();
  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  std::byte* take(std::size_t size);  // a kept block of exactly `size` bytes, or nullptr
  void give(std::byte* block, std::size_t size);
  std::size_t kept() const;  // blocks waiting for a graph

 private:
  mutable std::mutex mutex_;
  std::vector<std::pair<std::byte*, std::size_t>> blocks_;
};

constexpr std::uint32_t kPermanentRegion = UINT32_MAX;

// Owns every value of one unpickled object graph and the bytes of their strings.
//
// Two lanes: values that must outlive any rewind (shared nodes, which every later part of the
// stream may reuse) go to the permanent lane while a Permanent scope is open; everything else to
// the main lane, which can be rewound to a mark, making what was allocated since free for reuse
// (the streaming unpickler does so once the items it handed over are provably unreachable).
class Arena {
  struct Lane;

 public:
  explicit Arena(std::shared_ptr<BlockPool> pool = nullptr);
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  Value* make(Kind kind);
  std::string_view copy(std::string_view bytes);

  // While alive, allocations go to the permanent lane.
  class Permanent {
   public:
    explicit Permanent(Arena& arena) : arena_(arena), previous_(arena.lane_) {
      arena_.lane_ = &arena_.permanent_;
    }
    ~Permanent() { arena_.lane_ = previous_; }
    Permanent(const Permanent&) = delete;
    Permanent& operator=(const Permanent&) = delete;

   private:
    Arena& arena_;
    Lane* previous_;
  };

  struct Mark {
    std::size_t block = 0;  // index in the main lane's blocks
    std::byte* cursor = nullptr;
    std::size_t left = 0;
    std::size_t indexes = 0;
  };
  Mark mark() const;
  // Everything the main lane allocated since `mark` is dead: its blocks are reused, its dict
  // indexes deleted. Nothing allocated since may be referenced any more.
  void rewind(const Mark& mark);

  template <class T>
  void append(ArenaList<T>& list, T item) {
    if (list.size_ == list.capacity_) grow(list, std::size_t{list.size_} + 1);
    list.data_[list.size_++] = std::move(item);
  }
  template <class T>
  void append(ArenaList<T>& list, std::span<const T> more) {
    if (more.empty()) return;
    if (list.capacity_ - list.size_ < more.size()) grow(list, list.size_ + more.size());
    std::copy(more.begin(), more.end(), list.data_ + list.size_);
    list.size_ += static_cast<std::uint32_t>(more.size());
  }

  // Dict (or an Object, which then holds a map): stores value under key, replacing the value of
  // an equal scalar key (str, int, bool, None, bytes, float, or tuples of those); other keys are
  // appended. false if `dict` holds a list.
  bool set_item(Value& dict, ValuePtr key, ValuePtr value);

 private:
  void* allocate(std::size_t size, std::size_t align);
  template <class T>
  void grow(ArenaList<T>& list, std::size_t need) {
    // Exact for a new container (most are tuples, never appended to), doubling after that.
    std::size_t capacity =
        list.capacity_ == 0 ? need : std::max<std::size_t>(need, list.capacity_ * 2ull);
    capacity = std::min<std::size_t>(capacity, UINT32_MAX);
    T* data = static_cast<T*>(allocate(capacity * sizeof(T), alignof(T)));
    std::copy(list.data_, list.data_ + list.size_, data);  // the old block stays in the arena
    list.data_ = data;
    list.capacity_ = static_cast<std::uint32_t>(capacity);
  }

  struct Block {
    std::byte* data;
    std::size_t size;
  };
  struct Lane {
    std::vector<Block> blocks;
    std::size_t current = 0;  // the block being filled (blocks after it: free, after a rewind)
    std::byte* cursor = nullptr;
    std::size_t left = 0;
    std::size_t next_block = 0;
  };
  void release(const Block& block);
  Lane main_;
  Lane permanent_;
  Lane* lane_ = &main_;
  std::vector<DictIndex*> indexes_;
  std::shared_ptr<BlockPool> pool_;
};

// Two's-complement little-endian bytes (as LONG1/LONG4 store them) as decimal text.
std::string big_int_decimal(std::string_view twos_complement_le);

}  // namespace ckptstream::pickle
