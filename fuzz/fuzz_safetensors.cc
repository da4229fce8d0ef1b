// libFuzzer target: a safetensors file's header (the 8-byte length, the JSON, the data offsets
// checked against the file size), as `verify`, `test` and the readers of Hugging Face models
// parse it.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "fuzz_input.h"
#include "io/input_file.h"
#include "safetensors/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  ckptstream::fuzz::MemoryFile memory(data, size);
  auto file = ckptstream::InputFile::open(memory.path());
  if (!file.ok()) return 0;
  auto header = ckptstream::safetensors::read_header(*file);
  if (!header.ok() && header.error().message.empty()) std::abort();
  return 0;
}
