// A scratch directory for one test, unique (mkdtemp) and removed with everything in it; writing
// a file's bytes (parent directories made as needed); and the bytes of a file, for comparing what
// a test wrote. Every write is checked, so that a test never goes on with a file it failed to make.
#pragma once

#include <doctest/doctest.h>
#include <stdlib.h>

#include <cstddef>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

namespace ckptstream::testing {

// Makes the parent directories first, so that a test lays out a tree one file at a time.
inline void write_file(const std::filesystem::path& file, std::string_view bytes) {
  if (file.has_parent_path()) std::filesystem::create_directories(file.parent_path());
  std::ofstream out(file, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

inline void write_file(const std::filesystem::path& file, const std::vector<std::byte>& bytes) {
  write_file(file, std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

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

  // The path of `name` in the directory; nothing is created.
  std::filesystem::path operator/(const std::filesystem::path& name) const { return path / name; }

  // The subdirectory `name`, made (with its parents) if it is not there yet.
  std::filesystem::path sub(const std::filesystem::path& name) const {
    auto dir = path / name;
    std::filesystem::create_directories(dir);
    return dir;
  }

  // Writes `bytes` to the file `name` in the directory and returns its path.
  std::filesystem::path write(const std::string& name, std::string_view bytes) const {
    auto file = path / name;
    write_file(file, bytes);
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
