#include "pickle/value.h"

#include <algorithm>
#include <cstdio>

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

// Moves every child pointer of `v` into `out`.
void take_children(Value& v, std::vector<ValuePtr>& out) {
  for (auto& item : v.items) out.push_back(std::move(item));
  for (auto& [k, x] : v.entries) {
    out.push_back(std::move(k));
    out.push_back(std::move(x));
  }
  v.items.clear();
  v.entries.clear();
  for (ValuePtr* p : {&v.callable, &v.args, &v.kwargs, &v.state})
    if (*p) out.push_back(std::move(*p));
}

// A key for the dict index: scalars and tuples of scalars; "" when the key is not indexable.
std::string index_key(const Value& k, int depth = 0) {
  switch (k.kind) {
    case Kind::kString:
      return "s" + k.text;
    case Kind::kInt:
      return "i" + std::to_string(k.integer);
    case Kind::kBool:
      return "i" + std::to_string(k.boolean ? 1 : 0);  // True == 1 in Python
    case Kind::kBigInt:
      return "I" + k.text;
    case Kind::kBytes:
      return "b" + k.text;
    case Kind::kNone:
      return "n";
    case Kind::kFloat: {
      char buf[40];
      std::snprintf(buf, sizeof buf, "f%.17g", k.real);
      return buf;
    }
    case Kind::kTuple: {
      if (depth > 8) return "";
      std::string out = "t" + std::to_string(k.items.size());
      for (const auto& item : k.items) {
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

}  // namespace

Value::~Value() {
  std::vector<ValuePtr> pending;
  take_children(*this, pending);
  while (!pending.empty()) {
    ValuePtr p = std::move(pending.back());
    pending.pop_back();
    // Only the last owner tears the node down; its children go on the worklist first, so the
    // node's own destructor finds nothing to recurse into.
    if (p && p.use_count() == 1) take_children(*p, pending);
  }
}

ValuePtr Value::none() {
  return std::make_shared<Value>(Kind::kNone);
}
ValuePtr Value::boolean_value(bool b) {
  auto v = std::make_shared<Value>(Kind::kBool);
  v->boolean = b;
  return v;
}
ValuePtr Value::int_value(std::int64_t i) {
  auto v = std::make_shared<Value>(Kind::kInt);
  v->integer = i;
  return v;
}
ValuePtr Value::float_value(double d) {
  auto v = std::make_shared<Value>(Kind::kFloat);
  v->real = d;
  return v;
}
ValuePtr Value::string_value(std::string s) {
  auto v = std::make_shared<Value>(Kind::kString);
  v->text = std::move(s);
  return v;
}
ValuePtr Value::bytes_value(std::string s) {
  auto v = std::make_shared<Value>(Kind::kBytes);
  v->text = std::move(s);
  return v;
}
ValuePtr Value::global(std::string module, std::string name) {
  auto v = std::make_shared<Value>(Kind::kGlobal);
  v->module = std::move(module);
  v->name = std::move(name);
  return v;
}
ValuePtr Value::container(Kind kind, std::vector<ValuePtr> items) {
  auto v = std::make_shared<Value>(kind);
  v->items = std::move(items);
  return v;
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
  if (kind == Kind::kString || kind == Kind::kBytes) return std::string_view(text);
  return std::nullopt;
}

const ValuePtr* Value::find_entry(std::string_view key) const {
  if (kind != Kind::kDict) return nullptr;
  auto it = key_index_.find("s" + std::string(key));
  if (it != key_index_.end()) return &entries[it->second].second;
  for (const auto& [k, x] : entries)  // py2 byte-string keys
    if (k->kind == Kind::kBytes && k->text == key) return &x;
  return nullptr;
}

ValuePtr Value::find(std::string_view key) const {
  const ValuePtr* p = find_entry(key);
  return p ? *p : nullptr;
}

ValuePtr Value::attr(std::string_view key) const {
  if (!state) return nullptr;
  if (state->kind == Kind::kDict) return state->find(key);
  if (state->kind == Kind::kTuple && state->items.size() == 2) {
    for (const auto& part : state->items)
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

std::string Value::class_name() const {
  const Value* g = this;
  if (kind == Kind::kObject) {
    if (!callable || callable->kind != Kind::kGlobal) return "";
    g = callable.get();
  } else if (kind != Kind::kGlobal) {
    return "";
  }
  auto dot = g->name.rfind('.');
  return dot == std::string::npos ? g->name : g->name.substr(dot + 1);
}

std::string Value::int_decimal() const {
  if (kind == Kind::kInt) return std::to_string(integer);
  if (kind == Kind::kBool) return boolean ? "1" : "0";
  if (kind == Kind::kBigInt) return big_int_decimal(text);
  return "";
}

void Value::set_item(ValuePtr key, ValuePtr value) {
  std::string k = index_key(*key);
  if (!k.empty()) {
    auto [it, inserted] = key_index_.emplace(k, entries.size());
    if (!inserted) {
      entries[it->second].second = std::move(value);
      return;
    }
  }
  entries.emplace_back(std::move(key), std::move(value));
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
