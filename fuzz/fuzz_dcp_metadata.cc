// libFuzzer target: a torch.distributed.checkpoint .metadata pickle, parsed into the metadata the
// DCP reader plans from (state-dict entries, chunks, storage locations).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "dcp/dcp_metadata.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto parsed = ckptstream::dcp::parse_metadata(
      std::span(reinterpret_cast<const std::byte*>(data), size), ".metadata");
  if (!parsed.ok() && parsed.error().message.empty()) std::abort();
  return 0;
}
