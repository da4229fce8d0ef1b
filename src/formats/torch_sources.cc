#include "formats/torch_sources.h"

#include <simdjson.h>
#include <algorithm>
#include <map>
#include <set>
#include <tuple>

#include "formats/hf_config.h"
#include "io/input_file.h"

namespace ckptstream {
namespace fs = std::filesystem;
namespace {

bool has_suffix(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}
bool has_prefix(std::string_view text, std::string_view prefix) {
  return text.substr(0, prefix.size()) == prefix;
}

// Trainer state that lives beside model weights in Hugging Face / accelerate checkpoints.
bool is_trainer_state(std::string_view name) {
  return name == "optimizer.pt" || name == "scheduler.pt" || name == "scaler.pt" ||
         name == "training_args.bin" || has_prefix(name, "rng_state") ||
         has_prefix(name, "optimizer") || has_prefix(name, "extra_state");
}

bool is_torch_file_name(std::string_view name) {
  return has_suffix(name, ".pt") || has_suffix(name, ".pth") || has_suffix(name, ".bin");
}

bool is_side_file_name(std::string_view name) {
  static constexpr std::string_view kExact[] = {
      "config.json",  "generation_config.json",   "special_tokens_map.json", "added_tokens.json",
      "merges.txt",   "preprocessor_config.json", "processor_config.json",   "tokenizer.model",
      "spiece.model", "sentencepiece.bpe.model"};
  for (auto exact : kExact)
    if (name == exact) return true;
  return has_prefix(name, "tokenizer") || has_prefix(name, "chat_template") ||
         has_prefix(name, "vocab.") || has_suffix(name, ".tiktoken");
}

// The shard files of a Hugging Face *.index.json, in order of first appearance.
Result<std::vector<fs::path>> files_of_index(const fs::path& index) {
  CKPT_ASSIGN_OR_RETURN(auto text, read_small_file(index));
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  simdjson::dom::object weight_map;
  if (parser.parse(text).get(doc) || doc["weight_map"].get(weight_map))
    return invalid_input(index.string() + ": not a JSON object with a weight_map");
  std::vector<fs::path> files;
  std::set<std::string> seen;
  for (auto field : weight_map) {
    std::string_view file;
    if (field.value.get(file))
      return invalid_input(index.string() + ": weight_map value of " + std::string(field.key) +
                           " is not a string");
    if (file.find('/') != std::string_view::npos || file == "..")
      return invalid_input(index.string() +
                           ": weight_map names a file outside its directory: " + std::string(file));
    if (seen.insert(std::string(file)).second) files.push_back(index.parent_path() / file);
  }
  for (const auto& file : files) {
    std::error_code ec;
    if (!fs::exists(file, ec))
      return invalid_input(index.string() + ": names " + file.filename().string() +
                           (ec ? ": " + ec.message() : ", which does not exist"));
  }
  return files;
}

Status add_directory(const fs::path& dir, TorchSourceSet& set) {
  std::vector<fs::path> indexes, torch_files;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const auto& entry = *it;
    std::error_code type_ec;
    if (!entry.is_regular_file(type_ec)) {
      // A checkpoint file that cannot be looked at (a symbolic link loop) is an error, not absent.
      if (type_ec && is_torch_file_name(entry.path().filename().string()))
        return io_error(entry.path().string() + ": " + type_ec.message());
      continue;
    }
    auto name = entry.path().filename().string();
    if (has_suffix(name, ".bin.index.json") || has_suffix(name, ".pt.index.json"))
      indexes.push_back(entry.path());
    else if (is_torch_file_name(name) && !is_trainer_state(name))
      torch_files.push_back(entry.path());
    else if (is_torch_file_name(name))
      set.notes.push_back("skipped trainer state " + entry.path().string());
  }
  if (ec) return io_error(dir.string() + ": cannot list: " + ec.message());
  if (indexes.size() > 1)
    return invalid_input(dir.string() + ": more than one *.index.json; name the one to use");
  if (indexes.size() == 1) {
    CKPT_ASSIGN_OR_RETURN(auto files, files_of_index(indexes[0]));
    set.notes.push_back("using " + indexes[0].string());
    set.files.insert(set.files.end(), files.begin(), files.end());
    return {};
  }
  if (torch_files.empty())
    return invalid_input(dir.string() + ": no torch checkpoint (*.pt, *.pth, *.bin) found");
  std::sort(torch_files.begin(), torch_files.end());
  set.files.insert(set.files.end(), torch_files.begin(), torch_files.end());
  return {};
}

struct ViewKey {
  std::size_t storage;
  DType dtype;
  Shape shape;
  Shape strides;
  std::int64_t offset;
  auto operator<=>(const ViewKey&) const = default;
};

bool covers_whole_storage(const TorchTensor& t, const StorageRecord& storage) {
  return t.storage_offset == 0 && is_contiguous(t.shape, t.strides) &&
         static_cast<std::uint64_t>(numel(t.shape)) * element_size(t.dtype) == storage.nbytes;
}

// transformers drops these names of a tied pair (its models list them in _tied_weights_keys).
bool is_tied_output_name(std::string_view name) {
  return name == "lm_head.weight" || has_suffix(name, ".lm_head.weight");
}

// For each group of exact aliases, the names that are not written: huggingface_hub's
// _remove_duplicate_names keeps the sorted-first complete name not in the discard list.
std::map<std::size_t, std::size_t> alias_drops(const TorchCheckpoint& ckpt) {
  std::map<ViewKey, std::vector<std::size_t>> groups;
  for (std::size_t i = 0; i < ckpt.tensors.size(); ++i) {
    const auto& t = ckpt.tensors[i];
    if (t.dtensor) continue;
    groups[ViewKey{t.storage, t.dtype, t.shape, t.strides, t.storage_offset}].push_back(i);
  }
  std::map<std::size_t, std::size_t> dropped;  // dropped tensor -> kept tensor
  for (const auto& [key, members] : groups) {
    if (members.size() < 2) continue;
    auto rank = [&](std::size_t i) {
      const auto& t = ckpt.tensors[i];
      bool complete = covers_whole_storage(t, ckpt.storages[t.storage]);
      return std::make_tuple(!complete, is_tied_output_name(t.name), t.name);
    };
    std::size_t keep = *std::min_element(members.begin(), members.end(),
                                         [&](auto a, auto b) { return rank(a) < rank(b); });
    for (auto i : members)
      if (i != keep) dropped[i] = keep;
  }
  return dropped;
}

Status check_convertible(const TorchCheckpoint& ckpt, const TorchTensor& t) {
  auto where = ckpt.path.string() + ": tensor " + t.name;
  if (t.dtensor)
    return unsupported(where +
                       " is a DTensor shard (one rank's piece); merge the ranks with "
                       "`ckptstream merge` instead of converting one file");
  if (t.conj || t.neg)
    return unsupported(where + " has a lazy conj/neg bit; resolve it in torch before saving");
  if (dtype_info(t.dtype).safetensors_name.empty())
    return unsupported(where + " has dtype " + std::string(torch_name(t.dtype)) +
                       ", which safetensors cannot store");
  return {};
}

}  // namespace

Result<std::vector<SideFile>> find_side_files(const fs::path& dir) {
  std::vector<SideFile> side;
  std::set<std::string> wanted;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    auto name = it->path().filename().string();
    if (!is_side_file_name(name)) continue;
    std::error_code type_ec;
    auto status = it->status(type_ec);  // symbolic links followed
    if (type_ec) return io_error(it->path().string() + ": " + type_ec.message());
    if (fs::is_regular_file(status)) {
      wanted.insert(name);
    } else if (name == "config.json" || !fs::is_directory(status)) {
      // A FIFO would hang the copy; a config.json that is no file is no config.
      CKPT_TRY(regular_file_exists(it->path()));
    }
  }
  if (ec) return io_error(dir.string() + ": cannot list: " + ec.message());
  if (wanted.count("config.json")) {
    auto config = read_hf_config(dir / "config.json");  // an unreadable one names no code
    for (auto& module : config.ok() ? config->remote_code_modules : std::vector<std::string>{}) {
      CKPT_ASSIGN_OR_RETURN(bool present, regular_file_exists(dir / module));
      if (present) wanted.insert(module);
    }
  }
  for (const auto& name : wanted) side.push_back(SideFile{dir / name, name});
  return side;
}

Result<TorchSourceSet> find_torch_sources(const std::vector<fs::path>& args) {
  TorchSourceSet set;
  if (args.empty()) return usage_error("no source given");
  for (const auto& arg : args) {
    std::error_code ec;
    auto status = fs::status(arg, ec);
    if (ec && ec != std::errc::no_such_file_or_directory)
      return io_error(arg.string() + ": " + ec.message());
    if (!fs::exists(status)) return invalid_input(arg.string() + ": no such file or directory");
    if (fs::is_directory(status)) {
      CKPT_TRY(add_directory(arg, set));
    } else if (has_suffix(arg.filename().string(), ".index.json")) {
      CKPT_ASSIGN_OR_RETURN(auto files, files_of_index(arg));
      set.files.insert(set.files.end(), files.begin(), files.end());
    } else {
      set.files.push_back(arg);
    }
  }
  std::set<fs::path> unique;
  for (const auto& file : set.files) {
    std::error_code ec;
    auto canonical = fs::weakly_canonical(file, ec);
    if (ec) return io_error(file.string() + ": " + ec.message());
    if (!unique.insert(canonical).second) return usage_error(file.string() + ": given twice");
  }
  std::error_code ec;
  auto dir = fs::is_directory(args.front(), ec) ? args.front() : args.front().parent_path();
  if (dir.empty()) dir = ".";
  CKPT_ASSIGN_OR_RETURN(set.side_files, find_side_files(dir));
  CKPT_ASSIGN_OR_RETURN(bool has_config, regular_file_exists(dir / "config.json"));
  if (has_config) set.config_json = dir / "config.json";
  return set;
}

Result<TorchConversion> plan_torch_conversion(const TorchSourceSet& sources,
                                              std::optional<DType> float_dtype) {
  TorchConversion conversion;
  std::map<std::string, fs::path> seen;
  for (const auto& path : sources.files) {
    CKPT_ASSIGN_OR_RETURN(auto ckpt, read_torch_file(path));
    std::size_t input = conversion.inputs.size();
    conversion.inputs.push_back(path);
    auto dropped = alias_drops(ckpt);
    for (std::size_t i = 0; i < ckpt.tensors.size(); ++i) {
      const auto& t = ckpt.tensors[i];
      if (auto it = dropped.find(i); it != dropped.end()) {
        conversion.dropped_aliases.push_back(t.name + " (tied to " + ckpt.tensors[it->second].name +
                                             ")");
        continue;
      }
      CKPT_TRY(check_convertible(ckpt, t));
      auto [previous, inserted] = seen.emplace(t.name, path);
      if (!inserted)
        return invalid_input("tensor " + t.name + " is in both " + previous->second.string() +
                             " and " + path.string());
      LogicalTensor tensor;
      tensor.name = t.name;
      tensor.source_dtype = t.dtype;
      tensor.dtype = (float_dtype && dtype_info(t.dtype).is_float) ? *float_dtype : t.dtype;
      tensor.shape = t.shape;
      tensor.fragments.push_back(Fragment{ckpt.ref(i, input), Shape(t.shape.size(), 0)});
      conversion.tensors.push_back(std::move(tensor));
    }
  }
  return conversion;
}

}  // namespace ckptstream
