#include "formats/hf_safetensors.h"

#include <map>
#include <set>
#include <system_error>

namespace ckptstream {
namespace fs = std::filesystem;
namespace {

// Is `path` there? Leniently anything by that name counts (opening it then reports what it is);
// otherwise only a regular file, and anything else by that name is an error.
Result<bool> model_file_exists(const fs::path& path, const HfReadOptions& options) {
  if (!options.lenient) return regular_file_exists(path);
  std::error_code ec;
  return fs::exists(fs::symlink_status(path, ec));
}

// The model's file names in `dir`: the index's (safe ones), model.safetensors, or the single
// file options name.
Status find_file_names(const fs::path& dir, const HfReadOptions& options,
                       HfSafetensorsModel& model) {
  auto index_path = dir / safetensors::kIndexFileName;
  CKPT_ASSIGN_OR_RETURN(bool has_index, model_file_exists(index_path, options));
  if (has_index) {
    auto index = safetensors::read_index(index_path);
    if (!index.ok()) {
      if (!options.lenient) return index.error();
      model.problems.push_back(index.error().message);
      return {};
    }
    std::set<std::string> seen;
    for (const auto& [tensor, file] : index->weight_map) {
      if (!seen.insert(file).second) continue;
      if (!is_safe_relative_name(file)) {
        model.problems.push_back(index_path.string() +
                                 " names a file outside the directory: " + file);
        continue;
      }
      model.file_names.push_back(file);
    }
    model.index = std::move(*index);
    return {};
  }
  CKPT_ASSIGN_OR_RETURN(bool has_model, model_file_exists(dir / "model.safetensors", options));
  if (has_model) {
    model.file_names.push_back("model.safetensors");
    return {};
  }
  if (options.single_file) {
    model.file_names.push_back(*options.single_file);
    return {};
  }
  std::string missing = dir.string() + ": neither model.safetensors nor " +
                        std::string(safetensors::kIndexFileName) + " is there";
  return options.lenient ? mismatch(std::move(missing)) : invalid_input(std::move(missing));
}

Status open_files(const HfReadOptions& options, HfSafetensorsModel& model) {
  for (const auto& name : model.file_names) {
    auto file = InputFile::open(model.dir / name);
    Result<safetensors::FileHeader> header =
        file.ok() ? safetensors::read_header(*file) : Result<safetensors::FileHeader>(file.error());
    if (!header.ok()) {
      if (!options.lenient) return header.error();
      model.problems.push_back(header.error().message);
      continue;
    }
    model.files.push_back(HfModelFile{name, std::move(*file), std::move(*header)});
  }
  return {};
}

// Names once each; the index and the headers agree (and the index's total_size when asked).
void check_consistency(const HfReadOptions& options, HfSafetensorsModel& model) {
  std::map<std::string, std::string> file_of;  // tensor -> file, from the headers
  std::uint64_t total = 0;
  for (const auto& file : model.files)
    for (const auto& entry : file.header.tensors) {
      total += entry.data_end - entry.data_begin;
      if (!file_of.emplace(entry.name, file.name).second)
        model.problems.push_back(entry.name + " is in more than one file");
    }
  if (!model.index) return;
  std::set<std::string> opened;
  for (const auto& file : model.files) opened.insert(file.name);
  std::set<std::string> indexed;
  for (const auto& [tensor, file] : model.index->weight_map) {
    indexed.insert(tensor);
    if (!opened.count(file)) continue;  // unreadable or unsafe: reported already
    auto it = file_of.find(tensor);
    if (it == file_of.end() || it->second != file)
      model.problems.push_back("the index puts " + tensor + " in " + file +
                               ", which does not hold it");
  }
  for (const auto& [tensor, file] : file_of)
    if (!indexed.count(tensor))
      model.problems.push_back(file + " holds " + tensor + ", which the index does not name");
  if (options.check_total_size && total != model.index->total_size)
    model.problems.push_back(std::string(safetensors::kIndexFileName) + ": total_size " +
                             std::to_string(model.index->total_size) + " but the tensors hold " +
                             std::to_string(total) + " bytes");
}

}  // namespace

Result<HfSafetensorsModel> read_hf_safetensors(const fs::path& path, const HfReadOptions& options) {
  HfSafetensorsModel model;
  std::error_code ec;
  auto status = fs::status(path, ec);
  if (ec && ec != std::errc::no_such_file_or_directory)
    return io_error(path.string() + ": " + ec.message());
  if (fs::is_regular_file(status)) {
    model.dir = path.parent_path();
    model.file_names.push_back(path.filename().string());
  } else if (fs::is_directory(status)) {
    model.dir = path;
    CKPT_TRY(find_file_names(path, options, model));
  } else {
    return usage_error(path.string() + ": not a directory or a safetensors file");
  }
  CKPT_TRY(open_files(options, model));
  check_consistency(options, model);
  return model;
}

bool is_safetensors_model_dir(const std::filesystem::path& dir) {
  std::error_code ec;
  return std::filesystem::is_directory(dir, ec) &&
         (std::filesystem::is_regular_file(dir / "model.safetensors", ec) ||
          std::filesystem::is_regular_file(dir / std::string(safetensors::kIndexFileName), ec));
}

Result<SourceTensors> read_hf_source_tensors(const fs::path& dir) {
  CKPT_ASSIGN_OR_RETURN(HfSafetensorsModel model, read_hf_safetensors(dir));
  SourceTensors out;
  for (const auto& file : model.files) {
    std::size_t input = out.inputs.size();
    out.inputs.push_back(model.dir / file.name);
    for (const auto& entry : file.header.tensors) {
      TensorRef ref;
      ref.input = input;
      ref.storage_begin = file.header.data_start + entry.data_begin;
      ref.storage_nbytes = entry.data_end - entry.data_begin;
      ref.dtype = entry.dtype;
      ref.shape = entry.shape;
      ref.strides = contiguous_strides(entry.shape);
      LogicalTensor t;
      t.name = entry.name;
      t.source_dtype = t.dtype = entry.dtype;
      t.shape = entry.shape;
      t.fragments.push_back(Fragment{std::move(ref), Shape(entry.shape.size(), 0)});
      out.tensors.push_back(std::move(t));
    }
  }
  out.notes.push_back(std::to_string(out.tensors.size()) +
                      " tensors of the Hugging Face model in " + model.dir.string());
  return out;
}

}  // namespace ckptstream
