// The public API (include/ckptstream/ckptstream.h) over the pipeline, the executor and verify.
#include <cstdio>
#include <map>
#include <system_error>

#include "api/plan_impl.h"
#include "exec/distributed.h"
#include "exec/executor.h"
#include "exec/launch_env.h"
#include "exec/manifest.h"
#include "exec/output_dir.h"
#include "pipeline/megatron_write.h"
#include "pipeline/merge_plan.h"
#include "plan/report.h"
#include "verify/compare.h"
#include "verify/verify.h"

namespace ckptstream {
namespace fs = std::filesystem;
namespace {

ConversionPlan wrap(MergePlan merge) {
  auto impl = std::make_shared<ConversionPlan::Impl>();
  impl->merge = std::move(merge);
  return ConversionPlan(std::move(impl));
}

void note(const WriteOptions& options, const std::string& text) {
  if (options.on_note) options.on_note(text);
}

ExecOptions exec_options(const WriteOptions& options) {
  ExecOptions exec;
  exec.threads = options.threads;
  exec.interrupt = options.interrupt;
  exec.on_progress = options.on_progress;
  return exec;
}

Result<RankInfo> resolve_rank(const WriteOptions& options) {
  RankRequest request{options.rank, options.world_size, !options.ignore_environment};
  CKPT_ASSIGN_OR_RETURN(RankDetection detection, detect_rank(request, environment_map()));
  for (const auto& text : detection.notes) note(options, text);
  const RankInfo& info = detection.info;
  if (!info.source.empty())
    note(options, "distributed run: rank " + std::to_string(info.rank) + " of " +
                      std::to_string(info.world_size) + " (from " + info.source + ")");
  return info;
}

std::string joined(const std::vector<std::string>& names, std::size_t most) {
  std::string out;
  for (std::size_t i = 0; i < names.size() && i < most; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > most) out += ", ...";
  return out;
}

void dir_notes(const OutputDir& dir, const WriteOptions& options) {
  for (const auto& text : dir.notes()) note(options, dir.path().string() + ": " + text);
}

// Rank 0's (or finalize's) last step, with a note while it waits.
Result<Manifest> finalize_run(OutputDir& target, const Plan& plan, const WriteOptions& options) {
  FinalizeOptions finalize;
  finalize.wait_timeout = options.wait_timeout;
  finalize.interrupt = options.interrupt;
  bool noted = false;
  finalize.on_wait = [&](std::size_t done, std::size_t total) {
    if (noted || done == total) return;
    noted = true;
    note(options, "waiting for the other ranks: " + std::to_string(done) + " of " +
                      std::to_string(total) + " files complete");
  };
  return target.finalize(plan, finalize);
}

Result<bool> write_model_once(const MergePlan& merge, const fs::path& target,
                              const WriteOptions& options) {
  const Plan& plan = merge.model;
  CKPT_ASSIGN_OR_RETURN(RankInfo rank, resolve_rank(options));
  // A signal that came while the plan was made: stop before anything is created.
  CKPT_TRY(check_interrupt(options.interrupt));
  ExecOptions exec = exec_options(options);
  PrepareOptions prepare{options.overwrite, options.owner};
  if (rank.world_size == 1) {
    CKPT_ASSIGN_OR_RETURN(OutputDir dir, OutputDir::prepare(target, plan, prepare));
    dir_notes(dir, options);
    if (dir.already_complete()) return true;
    CKPT_TRY(dir.write(plan, exec));
    if (merge.adapter) CKPT_TRY(dir.write_subdir("lora_adapter", *merge.adapter, exec));
    return true;
  }
  std::size_t mine = files_of_rank(plan, rank.rank, rank.world_size).size();
  if (mine == 0 && rank.rank != 0) {
    note(options, "rank " + std::to_string(rank.rank) + " has no file to write (" +
                      std::to_string(plan.files.size()) + " files for " +
                      std::to_string(rank.world_size) + " ranks)");
    return false;
  }
  CKPT_ASSIGN_OR_RETURN(OutputDir dir, OutputDir::prepare_shared(target, plan, prepare));
  dir_notes(dir, options);
  if (dir.already_complete()) return rank.rank == 0;
  CKPT_ASSIGN_OR_RETURN(RankReport report, dir.write_rank(plan, exec, rank.rank, rank.world_size));
  note(options, "rank " + std::to_string(rank.rank) + " wrote " +
                    std::to_string(report.written.size()) + " of the " +
                    std::to_string(plan.files.size()) + " files");
  if (!report.skipped.empty())
    note(options, "rank " + std::to_string(rank.rank) + " skipped " +
                      std::to_string(report.skipped.size()) +
                      " complete file(s) of an earlier run: " + joined(report.skipped, 4));
  if (rank.rank != 0) return false;
  CKPT_TRY(finalize_run(dir, plan, options));
  if (merge.adapter) CKPT_TRY(dir.write_subdir("lora_adapter", *merge.adapter, exec));
  return true;
}

// Pairs the entries of `expected` and `actual` by name: `check(want, have)` for each pair, and
// `missing(name)` / `extra(name)` for an entry on one side only.
template <class Entry, class Check, class Missing, class Extra>
void match_by_name(const std::vector<Entry>& expected, const std::vector<Entry>& actual,
                   Check check, Missing missing, Extra extra) {
  std::map<std::string, const Entry*> by_name;
  for (const auto& entry : actual) by_name[entry.name] = &entry;
  for (const auto& want : expected) {
    auto it = by_name.find(want.name);
    if (it == by_name.end()) {
      missing(want.name);
      continue;
    }
    check(want, *it->second);
    by_name.erase(it);
  }
  for (const auto& [name, entry] : by_name) extra(name);
}

// What the source says OUT must hold, against what OUT's manifest says it holds (whose bytes
// verify_output has just checked).
std::vector<std::string> compare_manifests(const Manifest& expected, const Manifest& actual) {
  std::vector<std::string> problems;
  auto lacked = [&](const std::string& name) {
    problems.push_back(name + ": the source gives this file; the output lacks it");
  };
  auto unsourced = [&](const std::string& name) {
    problems.push_back(name + ": not produced by the source");
  };
  auto check_file = [&](const FileDigest& want, const FileDigest& have) {
    if (have.size != want.size)
      problems.push_back(want.name + ": " + std::to_string(have.size) +
                         " bytes, the source gives " + std::to_string(want.size));
    else if (!have.header_xxh3_128.empty() && have.header_xxh3_128 != want.header_xxh3_128)
      problems.push_back(want.name +
                         ": header differs from the one the source gives (dtypes, shapes or "
                         "offsets)");
    match_by_name(
        want.tensors, have.tensors,
        [&](const TensorDigest& w, const TensorDigest& h) {
          if (h.xxh3_128 != w.xxh3_128)
            problems.push_back(want.name + ": tensor " + w.name + " differs from the source (" +
                               h.xxh3_128 + " != " + w.xxh3_128 + ")");
        },
        [&](const std::string& t) {
          problems.push_back(want.name + ": tensor " + t + " is missing");
        },
        [&](const std::string& t) {
          problems.push_back(want.name + ": tensor " + t + " is not in the source");
        });
  };
  match_by_name(expected.files, actual.files, check_file, lacked, unsourced);
  if (actual.version < kManifestVersion) return problems;  // no other files recorded
  auto check_other = [&](const OtherFileDigest& want, const OtherFileDigest& have) {
    if (have.size != want.size || have.xxh3_128 != want.xxh3_128)
      problems.push_back(want.name + ": differs from the source's");
  };
  match_by_name(expected.other_files, actual.other_files, check_other, lacked, unsourced);
  return problems;
}

}  // namespace

const std::string& ConversionPlan::layout() const {
  return impl_->merge.layout;
}
const std::vector<std::string>& ConversionPlan::notes() const {
  return impl_->merge.notes;
}
std::size_t ConversionPlan::file_count() const {
  return impl_->merge.model.files.size();
}
std::size_t ConversionPlan::tensor_count() const {
  std::size_t n = 0;
  for (const auto& file : impl_->merge.model.files) n += file.tensors.size();
  return n;
}
std::uint64_t ConversionPlan::tensor_bytes() const {
  return impl_->merge.model.total_size;
}
bool ConversionPlan::has_adapter() const {
  return impl_->merge.adapter.has_value();
}

namespace {

PlanSummaryOptions report_options(bool fragments) {
  PlanSummaryOptions report;
  report.detail =
      fragments ? PlanSummaryOptions::Detail::kFragments : PlanSummaryOptions::Detail::kTensors;
  report.memory_window = ExecOptions{}.buffer_bytes;
  return report;
}

}  // namespace

void ConversionPlan::write_text(const std::function<void(std::string_view)>& sink,
                                bool fragments) const {
  write_plan_text(impl_->merge.model, report_options(fragments), sink);
  if (impl_->merge.adapter) {
    sink("\nlora_adapter/:\n");
    write_plan_text(*impl_->merge.adapter, report_options(fragments), sink);
  }
}

void ConversionPlan::write_json(const std::function<void(std::string_view)>& sink,
                                bool fragments) const {
  auto options = report_options(fragments);
  options.layout = impl_->merge.layout;
  options.notes = impl_->merge.notes;
  write_plan_json(impl_->merge.model, options, sink);
}

Result<ConversionPlan> plan_checkpoint(const fs::path& dir, const ConversionOptions& options) {
  CKPT_ASSIGN_OR_RETURN(auto merge, plan_merge(dir, options));
  return wrap(std::move(merge));
}

Result<ConversionPlan> plan_torch_files(const std::vector<fs::path>& sources,
                                        const ConversionOptions& options) {
  CKPT_ASSIGN_OR_RETURN(auto merge, plan_convert(sources, options));
  return wrap(std::move(merge));
}

Result<ConversionPlan> plan_megatron_checkpoint(const fs::path& hf_dir,
                                                const MegatronOptions& options) {
  MegatronWriteOptions write;
  write.parallel = {options.tp,
                    options.pp,
                    options.vpp,
                    options.ep,
                    options.etp > 0 ? options.etp : 1,
                    options.first_stage_layers,
                    options.last_stage_layers};
  if (options.layer_spec == "te" || options.layer_spec == "transformer_engine")
    write.spec = MegatronSpec::kTransformerEngine;
  else if (options.layer_spec == "local")
    write.spec = MegatronSpec::kLocal;
  else
    return usage_error("--layer-spec " + options.layer_spec + ": te or local");
  if (options.format == "torch_dist")
    write.format = MegatronFormat::kTorchDist;
  else if (options.format == "torch")
    write.format = MegatronFormat::kLegacy;
  else
    return usage_error("--format " + options.format + ": torch_dist or torch");
  if (options.layout != "megatron-lm" && options.layout != "flat")
    return usage_error("--layout " + options.layout + ": megatron-lm or flat");
  write.flat = options.layout == "flat";
  if (options.vocab_divisor < 1) return usage_error("--make-vocab-size-divisible-by must be >= 1");
  write.vocab_divisor = options.vocab_divisor;
  write.dtype = options.dtype;
  CKPT_ASSIGN_OR_RETURN(auto merge, plan_hf_to_megatron(hf_dir, write));
  return wrap(std::move(merge));
}

Result<bool> write_model(const ConversionPlan& plan, const fs::path& target_dir,
                         const WriteOptions& options) {
  auto written = write_model_once(plan.impl().merge, target_dir, options);
  if (written.ok() || written.error().kind != ErrorKind::kInterrupted) return written;
  // Everything this run staged was removed as it unwound; what was committed before stays.
  return interrupted_error("nothing of this run was left in " + target_dir.string() +
                           " (its partial files were removed)");
}

Status finalize_model(const ConversionPlan& plan, const fs::path& target_dir,
                      const WriteOptions& options) {
  const MergePlan& merge = plan.impl().merge;
  CKPT_ASSIGN_OR_RETURN(OutputDir target, OutputDir::open_run(target_dir, options.owner));
  CKPT_TRY(finalize_run(target, merge.model, options));
  if (merge.adapter)
    CKPT_TRY(target.write_subdir("lora_adapter", *merge.adapter, exec_options(options)));
  return {};
}

Status check_torch_target(const fs::path& target, bool overwrite) {
  std::error_code ec;
  auto status = fs::symlink_status(target, ec);
  if (ec && ec != std::errc::no_such_file_or_directory)
    return io_error(target.string() + ": " + ec.message());
  if (!fs::exists(status)) return {};
  if (fs::is_directory(fs::status(target, ec)))
    return usage_error(target.string() + " is a directory; name a file");
  if (!overwrite) return usage_error(target.string() + " exists; pass --overwrite to replace it");
  return {};
}

Status write_torch_file(const ConversionPlan& plan, const fs::path& target,
                        const WriteOptions& options) {
  CKPT_TRY(check_torch_target(target, options.overwrite));
  std::error_code ec;
  CKPT_ASSIGN_OR_RETURN(Plan torch, plan_torch_save(plan.impl().merge, target));
  if (!target.parent_path().empty()) fs::create_directories(target.parent_path(), ec);
  for (const auto& stale : remove_stale_temp_files(target))
    note(options, "removed " + stale + ", left by an interrupted run");
  auto written = execute_to_file(torch, target, exec_options(options));
  if (!written.ok() && written.error().kind == ErrorKind::kInterrupted)
    return interrupted_error(target.string() + " was not written (its temporary file was removed)");
  return written;
}

Result<CompareReport> compare_plan(const ConversionPlan& plan, const fs::path& reference,
                                   const CompareOptions& options, const InterruptFlag* interrupt) {
  ExecOptions exec;
  exec.interrupt = interrupt;
  return compare_plan(plan.impl().merge.model, reference, options, exec);
}

Result<std::vector<std::string>> compare_with_source(const ConversionPlan& plan,
                                                     const fs::path& dir,
                                                     const WriteOptions& options) {
  CKPT_ASSIGN_OR_RETURN(Manifest expected,
                        hash_plan(plan.impl().merge.model, exec_options(options)));
  CKPT_ASSIGN_OR_RETURN(Manifest actual, read_manifest(dir / kManifestFileName));
  return compare_manifests(expected, actual);
}

}  // namespace ckptstream
