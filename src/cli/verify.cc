// `ckptstream verify OUT`: every tensor's checksum and the safetensors / index invariants;
// `--reference REF`: values against another model; `--source --local_dir DIR`: checksums
// recomputed from the training checkpoint, writing nothing.
#include <cstdio>
#include <map>

#include "cli/commands.h"
#include "cli/progress.h"
#include "exec/manifest.h"
#include "pipeline/merge_plan.h"
#include "verify/compare.h"
#include "verify/verify.h"

namespace ckptstream::cli {
namespace fs = std::filesystem;

namespace {

// What the source says OUT must hold, against what OUT's manifest says it holds (whose bytes
// verify_output has just checked).
std::vector<std::string> compare_manifests(const Manifest& expected, const Manifest& actual) {
  std::vector<std::string> problems;
  std::map<std::string, const FileDigest*> files;
  for (const auto& file : actual.files) files[file.name] = &file;
  for (const auto& want : expected.files) {
    auto it = files.find(want.name);
    if (it == files.end()) {
      problems.push_back(want.name + ": the source gives this file; the output lacks it");
      continue;
    }
    const FileDigest& have = *it->second;
    files.erase(it);
    if (have.size != want.size)
      problems.push_back(want.name + ": " + std::to_string(have.size) +
                         " bytes, the source gives " + std::to_string(want.size));
    else if (!have.header_xxh3_128.empty() && have.header_xxh3_128 != want.header_xxh3_128)
      problems.push_back(want.name +
                         ": header differs from the one the source gives (dtypes, shapes or "
                         "offsets)");
    std::map<std::string, std::string> hashes;
    for (const auto& t : have.tensors) hashes[t.name] = t.xxh3_128;
    for (const auto& t : want.tensors) {
      auto h = hashes.find(t.name);
      if (h == hashes.end())
        problems.push_back(want.name + ": tensor " + t.name + " is missing");
      else if (h->second != t.xxh3_128)
        problems.push_back(want.name + ": tensor " + t.name + " differs from the source (" +
                           h->second + " != " + t.xxh3_128 + ")");
      if (h != hashes.end()) hashes.erase(h);
    }
    for (const auto& [name, hash] : hashes)
      problems.push_back(want.name + ": tensor " + name + " is not in the source");
  }
  for (const auto& [name, file] : files) problems.push_back(name + ": not produced by the source");
  if (actual.version < kManifestVersion) return problems;  // no other files recorded
  std::map<std::string, const OtherFileDigest*> others;
  for (const auto& file : actual.other_files) others[file.name] = &file;
  for (const auto& want : expected.other_files) {
    auto it = others.find(want.name);
    if (it == others.end()) {
      problems.push_back(want.name + ": the source gives this file; the output lacks it");
      continue;
    }
    if (it->second->size != want.size || it->second->xxh3_128 != want.xxh3_128)
      problems.push_back(want.name + ": differs from the source's");
    others.erase(it);
  }
  for (const auto& [name, file] : others) problems.push_back(name + ": not produced by the source");
  return problems;
}

}  // namespace

void add_verify(CLI::App& app, VerifyArgs& args) {
  auto* cmd =
      app.add_subcommand("verify",
                         "Check a model written by ckptstream: checksums against its manifest, and "
                         "optionally values against a reference or checksums against the source");
  cmd->add_option("dir", args.dir, "the output directory")->required();
  cmd->add_option("--reference", args.reference,
                  "also compare every tensor with this Hugging Face model (name, shape, dtype, "
                  "values)");
  add_tolerance_options(*cmd, args.atol, args.rtol);
  cmd->add_flag("--source", args.source,
                "also recompute the checksums from the source checkpoint (--local_dir ...)");
  add_checkpoint_options(*cmd, args.checkpoint, false);
}

int run_verify(const VerifyArgs& args) {
  bool quiet = args.checkpoint.quiet;
  if (args.source && args.checkpoint.local_dir.empty())
    return report_error(usage_error("--source needs --local_dir (the checkpoint it came from)"));
  ProgressBar bar("verify", quiet);
  VerifyOptions options;
  options.interrupt = args.checkpoint.interrupt;
  options.on_progress = [&](std::uint64_t done, std::uint64_t total) { bar.update(done, total); };
  auto report = verify_output(args.dir, options);
  bar.finish();
  if (!report.ok()) return report_error(report.error());
  auto problems = report->problems;

  if (args.source) {
    auto merge = plan_from_args(args.checkpoint);
    if (!merge.ok()) return report_error(merge.error());
    ProgressBar source_bar("source", quiet);
    ExecOptions exec;
    exec.threads = args.checkpoint.threads;
    exec.interrupt = args.checkpoint.interrupt;
    exec.on_progress = [&](std::uint64_t done, std::uint64_t total) {
      source_bar.update(done, total);
    };
    auto expected = hash_plan(merge->model, exec);
    source_bar.finish();
    if (!expected.ok()) return report_error(expected.error());
    auto actual = read_manifest(args.dir / kManifestFileName);
    if (!actual.ok()) return report_error(actual.error());
    auto found = compare_manifests(*expected, *actual);
    problems.insert(problems.end(), found.begin(), found.end());
  }
  if (!quiet)
    for (const auto& note : report->notes) std::fprintf(stderr, "note: %s\n", note.c_str());
  for (const auto& problem : problems)
    std::fprintf(stderr, "ckptstream: verify: %s\n", problem.c_str());
  if (!problems.empty()) {
    std::fprintf(stderr, "ckptstream: verify: FAILED: %zu problem%s in %s\n", problems.size(),
                 problems.size() == 1 ? "" : "s", args.dir.c_str());
    return kExitMismatch;
  }
  if (!quiet)
    std::printf(
        "verified %zu tensors (%s) in %zu file%s and %zu other file%s: all checksums "
        "match%s\n",
        report->tensors, human_bytes(report->bytes).c_str(), report->files,
        report->files == 1 ? "" : "s", report->other_files, report->other_files == 1 ? "" : "s",
        args.source ? " the source" : "");
  if (!args.reference.empty()) {
    CompareOptions compare;
    compare.atol = args.atol;
    compare.rtol = args.rtol;
    auto compared = compare_dirs(args.dir, args.reference, compare);
    if (!compared.ok()) return report_error(compared.error());
    return print_comparison(*compared, args.reference, quiet);
  }
  return kExitOk;
}

}  // namespace ckptstream::cli
