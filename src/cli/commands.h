// The subcommands. Each registers its options on a CLI11 app and runs against the library;
// nothing below src/cli knows about the command line.
#pragma once

#include <CLI/CLI.hpp>
#include <filesystem>
#include <string>
#include <vector>

#include "ckptstream/result.h"

namespace ckptstream::cli {

// Exit codes (README § Exit codes).
inline constexpr int kExitOk = 0;
inline constexpr int kExitMismatch = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitBadInput = 3;
inline constexpr int kExitIo = 4;

int exit_code_for(const Error& error);
int report_error(const Error& error);  // prints "ckptstream: error: ..." and returns the code

struct InspectArgs {
  std::vector<std::filesystem::path> paths;
  bool json = false;
};
void add_inspect(CLI::App& app, InspectArgs& args);
int run_inspect(const InspectArgs& args);

struct ConvertArgs {
  std::vector<std::filesystem::path> sources;
  std::filesystem::path target_dir;
  std::string dtype = "auto";
  std::string max_shard_size = "5GB";
  bool overwrite = false;
  bool quiet = false;
};
void add_convert(CLI::App& app, ConvertArgs& args);
int run_convert(const ConvertArgs& args);

struct VerifyArgs {
  std::filesystem::path dir;
  bool quiet = false;
};
void add_verify(CLI::App& app, VerifyArgs& args);
int run_verify(const VerifyArgs& args);

}  // namespace ckptstream::cli
