// libFuzzer target: a torch.distributed.checkpoint .metadata pickle, parsed into the metadata the
// DCP reader plans from (state-dict entries, chunks, storage locations), streamed (the two large
// dicts item by item) and whole: the two must agree, on the result or on the error.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "dcp/dcp_metadata.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto bytes = std::span(reinterpret_cast<const std::byte*>(data), size);
  auto streamed = ckptstream::dcp::parse_metadata(bytes, ".metadata", true);
  auto whole = ckptstream::dcp::parse_metadata(bytes, ".metadata", false);
  if (streamed.ok() != whole.ok()) std::abort();
  if (!streamed.ok()) {
    if (streamed.error().message.empty() || streamed.error().message != whole.error().message)
      std::abort();
    return 0;
  }
  if (streamed->entries.size() != whole->entries.size() ||
      streamed->other_storage.size() != whole->other_storage.size() ||
      streamed->planner_paths != whole->planner_paths)
    std::abort();
  auto same = [](const auto& p, const auto& q) {
    return p.has_value() == q.has_value() &&
           (!p || (p->offset == q->offset && p->length == q->length &&
                   p->relative_path == q->relative_path));
  };
  for (std::size_t i = 0; i < streamed->entries.size(); ++i) {
    const auto& a = streamed->entries[i];
    const auto& b = whole->entries[i];
    if (a.fqn != b.fqn || a.chunks.size() != b.chunks.size() || !same(a.storage, b.storage))
      std::abort();
    for (std::size_t c = 0; c < a.chunks.size(); ++c)
      if (a.chunks[c].offsets != b.chunks[c].offsets ||
          !same(a.chunks[c].storage, b.chunks[c].storage))
        std::abort();
  }
  return 0;
}
