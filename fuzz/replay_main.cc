// A main() for a fuzz target without libFuzzer: runs LLVMFuzzerTestOneInput once on each file
// named, walking directories. The default build replays every fixture through every target this
// way (ctest fuzz_replay_*), so that the targets keep compiling and each reader meets every other
// reader's files; a crash reproducer from a campaign replays the same way.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

bool replay(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return false;
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t files = 0;
  for (int i = 1; i < argc; ++i) {
    const std::filesystem::path arg(argv[i]);
    std::vector<std::filesystem::path> todo;
    if (std::filesystem::is_directory(arg)) {
      for (const auto& entry : std::filesystem::recursive_directory_iterator(arg))
        if (entry.is_regular_file()) todo.push_back(entry.path());
    } else {
      todo.push_back(arg);
    }
    for (const auto& file : todo) {
      if (!replay(file)) {
        std::fprintf(stderr, "%s: cannot read\n", file.c_str());
        return 2;
      }
      ++files;
    }
  }
  std::printf("%zu inputs replayed, none crashed\n", files);
  return files > 0 ? 0 : 2;
}
