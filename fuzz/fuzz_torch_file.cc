// libFuzzer target: a torch.save file (zip or legacy), read whole, in two steps with every local
// header read, and streamed with sampled headers (the plan's read of verl rank files). Any outcome
// but a crash, a sanitizer report or a hang is fine; errors must say something.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "fuzz_input.h"
#include "torch/torch_checkpoint.h"

using namespace ckptstream;

namespace {

void check(const Result<TorchCheckpoint>& read) {
  if (!read.ok()) {
    if (read.error().message.empty()) std::abort();
    return;
  }
  for (std::size_t i = 0; i < read->tensors.size(); ++i)
    if (read->tensors[i].name.size() > (1u << 30)) std::abort();  // touches every tensor
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::MemoryFile file(data, size);
  check(read_torch_file(file.path()));
  TorchReadOptions streamed;
  streamed.stream_items = true;
  streamed.sampled_headers = 4;
  auto pending = PendingTorchFile::open(file.path(), streamed);
  if (pending.ok()) check(std::move(*pending).read());
  return 0;
}
