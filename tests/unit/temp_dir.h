// A scratch directory for one test, unique (mkdtemp) and removed with everything in it; and the
// bytes of a file, for comparing what a test wrote.
#pragma once

#include <doctest/doctest.h>
#include <stdlib.h>

#include <cstddef>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace ckptstream::testing {

struct TempDir {
  std::filesystem::path path;

  explicit TempDir(const std::string& tag) {
    std::string pattern =
        (std::filesystem::temp_directory_path() / ("ckpt_test_" + tag + "_XXXXXX")).string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  // Writes `bytes` to the file `name` in the directory and returns its path.
  std::filesystem::path write(const std::string& name, const std::string& bytes) const {
    auto file = path / name;
    std::ofstream out(file, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    REQUIRE(out.good());
    return file;
  }

  // A writable copy of the directory `source` (a fixture case), named `name`.
  std::filesystem::path copy_of(const std::filesystem::path& source,
                                const std::string& name) const {
    auto dir = path / name;
    std::filesystem::copy(source, dir, std::filesystem::copy_options::recursive);
    return dir;
  }
};

// The whole file (empty if it cannot be read).
inline std::vector<std::byte> file_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> bytes(chars.size());
  std::memcpy(bytes.data(), chars.data(), chars.size());
  return bytes;
}

}  // namespace ckptstream::testing
