// Plain values produced by the pickle VM (unpickler.h). A pickle is a program; we never run it:
// a GLOBAL becomes a name, a call (REDUCE/NEWOBJ) becomes an Object node keeping the callable, its
// arguments and the state BUILD gave it, except for a few harmless constructors that map to plain
// values (OrderedDict -> Dict, bytes/bytearray/_codecs.encode -> Bytes, set/frozenset, torch.Size
// -> Tuple, getattr(cls, 'Name') -> Global).
//
// Nodes are shared (std::shared_ptr) because the pickle memo shares them: the same tensor saved
// under two names is one node reached twice, and BUILD / SETITEMS mutate a node after it was
// memoized. Graphs may even be cyclic (a list containing itself); walkers must bound their depth.
//
// Walking a value:
//   switch (v.kind) { case Kind::kDict: for (auto& [k, x] : v.entries) ...; }
//   v.find("key")                  dict lookup by string key (nullptr if absent)
//   v.attr("name")                 attribute of an Object (or a Dict's BUILD state): looks in a
//                                  dict state and in the (dict|None, slots) form
//   v.callable_name()              "module.name" of an Object's callable (its class for NEWOBJ)
//   v.class_name()                 just the final name ("DTensor")
//   v.as_int() / as_string() ...   typed accessors returning std::optional
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ckptstream::pickle {

struct Value;
using ValuePtr = std::shared_ptr<Value>;

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

struct Value {
  Kind kind = Kind::kNone;
  bool boolean = false;
  std::int64_t integer = 0;
  double real = 0;
  std::string text;                                    // String, Bytes, BigInt
  std::vector<ValuePtr> items;                         // Tuple, List, Set, FrozenSet
  std::vector<std::pair<ValuePtr, ValuePtr>> entries;  // Dict
  std::string module;                                  // Global; Dict from OrderedDict
  std::string name;                                    //   ("collections", "OrderedDict")
  ValuePtr callable;  // Object: a Global (or any value for REDUCE on something odd)
  ValuePtr args;      // Object: a Tuple (or the argument as pickled); PersistentId: the pid
  ValuePtr kwargs;    // Object: NEWOBJ_EX keyword arguments (a Dict), else null
  ValuePtr state;     // BUILD state (Object, Dict attributes, ...), null if no BUILD

  Value() = default;
  explicit Value(Kind k) : kind(k) {}
  Value(const Value&) = delete;
  Value& operator=(const Value&) = delete;
  ~Value();  // iterative, so that deeply nested values cannot overflow the stack

  // Constructors of leaf values.
  static ValuePtr none();
  static ValuePtr boolean_value(bool b);
  static ValuePtr int_value(std::int64_t i);
  static ValuePtr float_value(double d);
  static ValuePtr string_value(std::string s);
  static ValuePtr bytes_value(std::string s);
  static ValuePtr global(std::string module, std::string name);
  static ValuePtr container(Kind kind, std::vector<ValuePtr> items = {});

  bool is(Kind k) const { return kind == k; }
  bool is_sequence() const { return kind == Kind::kTuple || kind == Kind::kList; }

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
  std::string class_name() const;
  // Global: "module.name".
  std::string qualified_name() const { return module + "." + name; }

  // Int or BigInt as decimal text.
  std::string int_decimal() const;

  // Dict: stores value under key, replacing the value of an equal scalar key (str, int, bool,
  // None, bytes, float, or tuples of those); other keys are appended.
  void set_item(ValuePtr key, ValuePtr value);

 private:
  std::unordered_map<std::string, std::size_t> key_index_;  // Dict: scalar key -> entries index
};

// Two's-complement little-endian bytes (as LONG1/LONG4 store them) as decimal text.
std::string big_int_decimal(std::string_view twos_complement_le);

}  // namespace ckptstream::pickle
