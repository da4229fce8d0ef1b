#include "exec/executor.h"

#include <string>
#include <vector>

#include "exec/manifest.h"
#include "exec/plan_check.h"
#include "exec/staging.h"
#include "exec/tensor_writer.h"
#include "io/input_file.h"

namespace ckptstream {
namespace {

std::string tensor_context(const std::string& name) {
  return "tensor '" + name + "'";
}

Result<std::vector<InputFile>> open_inputs(const Plan& plan) {
  std::vector<InputFile> inputs;
  inputs.reserve(plan.inputs.size());
  for (const auto& path : plan.inputs) {
    CKPT_ASSIGN_OR_RETURN(InputFile file, InputFile::open(path));
    inputs.push_back(std::move(file));
  }
  return inputs;
}

// Everything that can be checked before a byte is written (plan_check.h).
Status check_plan(const Plan& plan, std::span<const InputFile> inputs) {
  CKPT_TRY(check_output_names(plan));
  for (const OutputFile& file : plan.files) {
    CKPT_TRY_CTX(check_output_file(file), file.name);
    for (const PlacedTensor& placed : file.tensors)
      CKPT_TRY_CTX(check_tensor(placed.tensor, inputs), file.name);
  }
  return {};
}

std::uint64_t total_tensor_bytes(const Plan& plan) {
  std::uint64_t total = 0;
  for (const OutputFile& file : plan.files)
    for (const PlacedTensor& placed : file.tensors) total += placed.data_end - placed.data_begin;
  return total;
}

// Streams every tensor of `file` through `visit`, counting progress, and returns the digest of
// what it saw. The one code path behind execute_plan, stream_plan and hash_plan: what is hashed
// is what is written.
Result<FileDigest> stream_file(const OutputFile& file, ExecContext& context,
                               const WindowVisitor& visit) {
  FileDigest digest{file.name, file.size(), {}};
  for (const PlacedTensor& placed : file.tensors) {
    TensorStream stream(placed.tensor, context);
    auto hash = stream.run([&](std::uint64_t offset, std::span<const std::byte> bytes) -> Status {
      CKPT_TRY(visit(file, placed, offset, bytes));
      context.bytes_done += bytes.size();
      if (context.options.on_progress)
        context.options.on_progress(context.bytes_done, context.bytes_total);
      return {};
    });
    if (!hash.ok()) return hash.error().with_context(tensor_context(placed.tensor.name));
    digest.tensors.push_back({placed.tensor.name, std::move(hash).value()});
  }
  return digest;
}

// Opens and checks the plan's inputs, then streams every file through `visit`.
Result<Manifest> stream_all_files(const Plan& plan, const ExecOptions& options,
                                  const WindowVisitor& visit) {
  CKPT_ASSIGN_OR_RETURN(std::vector<InputFile> inputs, open_inputs(plan));
  CKPT_TRY(check_plan(plan, inputs));
  ExecContext context(inputs, options, total_tensor_bytes(plan));
  Manifest manifest;
  for (const OutputFile& file : plan.files) {
    auto digest = stream_file(file, context, visit);
    if (!digest.ok()) return digest.error().with_context(file.name);
    manifest.files.push_back(std::move(digest).value());
  }
  return manifest;
}

Result<FileDigest> write_output_file(const OutputFile& file, const OutputStaging& staging,
                                     ExecContext& context) {
  CKPT_ASSIGN_OR_RETURN(auto path, staging.path_for(file.name));
  CKPT_ASSIGN_OR_RETURN(StagedFile out,
                        StagedFile::create(path, file.size(), context.options.writeback_bytes));
  CKPT_TRY(
      out.write_at(0, reinterpret_cast<const std::byte*>(file.header.data()), file.header.size()));
  CKPT_ASSIGN_OR_RETURN(FileDigest digest,
                        stream_file(file, context,
                                    [&](const OutputFile&, const PlacedTensor& placed,
                                        std::uint64_t offset, std::span<const std::byte> bytes) {
                                      return out.write_at(
                                          file.header.size() + placed.data_begin + offset,
                                          bytes.data(), bytes.size());
                                    }));
  CKPT_TRY(out.finish());
  return digest;
}

// Writes every file into staging; returns the manifest and the names in commit order (tensor
// files, side files, then the index and the manifest, so that a reader who sees the manifest
// sees a complete model).
Result<Manifest> write_all_files(const Plan& plan, const OutputStaging& staging,
                                 ExecContext& context, std::vector<std::string>& commit_order) {
  Manifest manifest;
  for (const OutputFile& file : plan.files) {
    auto digest = write_output_file(file, staging, context);
    if (!digest.ok()) return digest.error().with_context(file.name);
    manifest.files.push_back(std::move(digest).value());
    commit_order.push_back(file.name);
  }
  for (const SideFile& side : plan.side_files) {
    CKPT_ASSIGN_OR_RETURN(auto path, staging.path_for(side.name));
    CKPT_TRY_CTX(copy_into_staging(side.source, path), side.name);
    commit_order.push_back(side.name);
  }
  for (const TextFile& text : plan.text_files) {
    CKPT_ASSIGN_OR_RETURN(auto path, staging.path_for(text.name));
    CKPT_TRY_CTX(write_small_file(path, text.contents), text.name);
    commit_order.push_back(text.name);
  }
  if (!plan.index_json.empty()) {
    CKPT_ASSIGN_OR_RETURN(auto path, staging.path_for(std::string(kIndexFileName)));
    CKPT_TRY(write_small_file(path, plan.index_json));
    commit_order.emplace_back(kIndexFileName);
  }
  std::string manifest_name(kManifestFileName);
  CKPT_ASSIGN_OR_RETURN(auto path, staging.path_for(manifest_name));
  CKPT_TRY(write_small_file(path, manifest_to_json(manifest)));
  commit_order.push_back(manifest_name);
  return manifest;
}

}  // namespace

Result<Manifest> execute_plan(const Plan& plan, const std::filesystem::path& target_dir,
                              const ExecOptions& options) {
  CKPT_ASSIGN_OR_RETURN(std::vector<InputFile> inputs, open_inputs(plan));
  CKPT_TRY(check_plan(plan, inputs));
  // From here on the staging directory exists; every early return removes it.
  CKPT_ASSIGN_OR_RETURN(OutputStaging staging, OutputStaging::create(target_dir));
  ExecContext context(inputs, options, total_tensor_bytes(plan));
  std::vector<std::string> commit_order;
  CKPT_ASSIGN_OR_RETURN(Manifest manifest, write_all_files(plan, staging, context, commit_order));
  CKPT_TRY(staging.commit(commit_order));
  return manifest;
}

Status stream_plan(const Plan& plan, const ExecOptions& options, const WindowVisitor& visit) {
  auto manifest = stream_all_files(plan, options, visit);
  if (!manifest.ok()) return manifest.error();
  return {};
}

Result<Manifest> hash_plan(const Plan& plan, const ExecOptions& options) {
  return stream_all_files(plan, options,
                          [](const OutputFile&, const PlacedTensor&, std::uint64_t,
                             std::span<const std::byte>) { return Status{}; });
}

}  // namespace ckptstream
