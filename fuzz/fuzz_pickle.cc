// libFuzzer target: the pickle VM, whole and streaming (root dict items, and the items of nested
// dicts under some keys). The streaming sink walks every value it is handed, and the result is
// walked too (ASan then catches a region freed too early: a node reachable from a later item or
// a later GET).
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "pickle/unpickler.h"

namespace {

using ckptstream::Status;
using namespace ckptstream::pickle;

// Touches every node reachable from `v` (bounded: graphs may share nodes or be deep).
std::size_t walk(const Value* v, int depth, std::size_t& budget) {
  if (!v || depth > 64 || budget == 0) return 0;
  --budget;
  std::size_t sum = static_cast<std::size_t>(v->kind);
  for (char c : v->text().substr(0, 16)) sum += static_cast<unsigned char>(c);  // reads the bytes
  for (const Value* item : v->items()) sum += walk(item, depth + 1, budget);
  for (const auto& [key, value] : v->entries())
    sum += walk(key, depth + 1, budget) + walk(value, depth + 1, budget);
  for (const Value* next : {v->callable, v->args, v->kwargs, v->state})
    sum += walk(next, depth + 1, budget);
  return sum;
}

class WalkingSink : public RootItemSink {
 public:
  Status items(std::span<const ValuePtr> keys_and_values,
               std::span<const Value* const> persistent_ids) override {
    std::size_t budget = 100000;
    for (const Value* v : keys_and_values) checksum += walk(v, 0, budget);
    for (const Value* p : persistent_ids) checksum += walk(p, 0, budget);
    return {};
  }
  void released(std::span<const Value* const>) override {}
  // Nested dicts too: those under keys of even length (any rule that picks some will do).
  bool streams_nested(std::string_view key) override { return key.size() % 2 == 0; }
  Status nested_items(std::string_view, const Value* dict,
                      std::span<const ValuePtr> keys_and_values) override {
    std::size_t budget = 100000;
    checksum += walk(dict, 0, budget);
    for (const Value* v : keys_and_values) checksum += walk(v, 0, budget);
    return {};
  }
  std::size_t checksum = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  auto whole = unpickle(bytes);
  if (whole.ok()) {
    std::size_t budget = 100000;
    walk(whole->value.get(), 0, budget);
  }
  WalkingSink sink;
  auto streamed = unpickle_streaming(bytes, sink);
  if (streamed.ok()) {
    std::size_t budget = 100000;
    walk(streamed->value.get(), 0, budget);
  }
  return 0;
}
