#include "mapping/experts.h"

#include "plan/views.h"

#include <algorithm>
#include <array>
#include <set>
#include <string_view>

namespace ckptstream {

namespace {

// One packed parameter and what save_pretrained makes of it. `parts` are the saved names, '*'
// standing for the expert index; with two parts the packed dim 1 is cut in halves (transformers'
// Chunk(dim=1)), with one part each expert is saved whole.
struct ExpertSplit {
  std::string_view packed;  // the end of the in-memory key, e.g. "mlp.experts.gate_up_proj"
  std::vector<std::string_view> parts;
  std::size_t hidden_dim;  // the dimension of the packed [E, ., .] tensor that is hidden_size
};

// A key rename of the save direction: the first occurrence of `from` becomes `to`. Every rename
// of a family is tried, in order, on every key (transformers' reversed WeightRenaming list).
struct Rename {
  std::string_view from;
  std::string_view to;
};

struct ExpertFamily {
  std::string_view name;
  std::vector<ExpertSplit> splits;  // empty: saved packed (only the order changes)
  std::vector<Rename> renames;
};

// transformers 5.12 conversion_mapping.py, read in the save direction.
const ExpertSplit kGateUpProj{"mlp.experts.gate_up_proj",
                              {"mlp.experts.*.gate_proj.weight", "mlp.experts.*.up_proj.weight"},
                              2};
const ExpertSplit kDownProj{"mlp.experts.down_proj", {"mlp.experts.*.down_proj.weight"}, 1};
const ExpertSplit kW1W3{
    ".experts.gate_up_proj", {".experts.*.w1.weight", ".experts.*.w3.weight"}, 2};
const ExpertSplit kW2{".experts.down_proj", {".experts.*.w2.weight"}, 1};

const std::vector<ExpertFamily>& families() {
  static const std::vector<ExpertFamily> table = {
      {"mixtral", {kW1W3, kW2}, {{".mlp.", ".block_sparse_moe."}}},
      {"minimax_m2",
       {kW1W3, kW2},
       {{".mlp.e_score_correction_bias", ".block_sparse_moe.e_score_correction_bias"},
        {".mlp.", ".block_sparse_moe."}}},
      {"phimoe",
       {kW1W3, kW2},
       {{".router.weight", ".gate.weight"}, {".mlp.", ".block_sparse_moe."}}},
      {"qwen2_moe", {kGateUpProj, kDownProj}, {}},
      {"ernie4_5_moe",
       {kGateUpProj, kDownProj},
       {{"mlp.gate.moe_statics.e_score_correction_bias",
         "mlp.moe_statics.e_score_correction_bias"}}},
      {"exaone_moe",
       {kGateUpProj, kDownProj},
       {{"mlp.gate.e_score_correction_bias", "mlp.e_score_correction_bias"}}},
      {"hy_v3",
       {kGateUpProj, kDownProj},
       {{"mlp.shared_experts.", "mlp.shared_mlp."},
        {"mlp.e_score_correction_bias", "mlp.expert_bias"},
        {"mlp.gate.weight", "mlp.router.gate.weight"}}},
      {"laguna",
       {kGateUpProj, kDownProj},
       {{"mlp.shared_experts.", "mlp.shared_expert."},
        {"mlp.gate.e_score_correction_bias", "mlp.experts.e_score_correction_bias"}}},
      {"jamba",
       {{"feed_forward.experts.gate_up_proj",
         {"feed_forward.experts.*.gate_proj.weight", "feed_forward.experts.*.up_proj.weight"},
         2},
        {"feed_forward.experts.down_proj", {"feed_forward.experts.*.down_proj.weight"}, 1}},
       {}},
      {"lfm2_moe",
       {{"feed_forward.experts.gate_up_proj",
         {"feed_forward.experts.*.w1.weight", "feed_forward.experts.*.w3.weight"},
         2},
        {"feed_forward.experts.down_proj", {"feed_forward.experts.*.w2.weight"}, 1}},
       {}},
      // Transpose(1, 2, check_dims=True) is a no-op on save: the live tensor has the expected
      // shape.
      {"qwen3_vl_moe", {}, {}},
  };
  return table;
}

// model_type -> family, as transformers' _MODEL_TO_CONVERSION_PATTERN (plus the families' own).
std::string_view family_of(std::string_view model_type) {
  static constexpr std::array<std::pair<std::string_view, std::string_view>, 38> kAliases = {{
      {"mixtral", "mixtral"},
      {"minimax", "mixtral"},
      {"minimax_m2", "minimax_m2"},
      {"phimoe", "phimoe"},
      {"qwen2_moe", "qwen2_moe"},
      {"qwen3_moe", "qwen2_moe"},
      {"qwen3_next", "qwen2_moe"},
      {"qwen3_omni_moe", "qwen2_moe"},
      {"qwen3_omni_moe_thinker", "qwen2_moe"},
      {"qwen3_5_moe_text", "qwen2_moe"},
      {"afmoe", "qwen2_moe"},
      {"deepseek_v2", "qwen2_moe"},
      {"deepseek_v3", "qwen2_moe"},
      {"deepseek_v32", "qwen2_moe"},
      {"dots1", "qwen2_moe"},
      {"glm4_moe", "qwen2_moe"},
      {"glm4_moe_lite", "qwen2_moe"},
      {"glm_moe_dsa", "qwen2_moe"},
      {"glm4v_moe", "qwen2_moe"},
      {"longcat_flash", "qwen2_moe"},
      {"solar_open", "qwen2_moe"},
      {"mellum", "qwen2_moe"},
      {"hunyuan_v1_moe", "qwen2_moe"},
      {"flex_olmo", "qwen2_moe"},
      {"olmoe", "qwen2_moe"},
      {"cohere2_moe", "qwen2_moe"},
      {"ernie4_5_moe", "ernie4_5_moe"},
      {"exaone_moe", "exaone_moe"},
      {"hy_v3", "hy_v3"},
      {"laguna", "laguna"},
      {"jamba", "jamba"},
      {"lfm2_moe", "lfm2_moe"},
      {"qwen3_vl_moe", "qwen3_vl_moe"},
      // transformers also unpacks these, but renames many non-expert weights on the way.
      {"deepseek_v4", "!"},
      {"minimax_m3_vl", "!"},
      {"ernie4_5_vl_moe", "!"},
      {"deepseek_ocr2", "!"},
      {"nemotron_h", "!"},  // model. -> backbone., embeddings -> embedding
  }};
  for (const auto& [type, family] : kAliases)
    if (type == model_type) return family;
  return {};
}

// Architectures whose packed experts are their on-disk format (no conversion mapping).
bool saved_packed(std::string_view model_type) {
  static constexpr std::array<std::string_view, 8> kTypes = {
      "gpt_oss",          "llama4",           "llama4_text", "granitemoe",
      "granitemoeshared", "granitemoehybrid", "jetmoe",      "dbrx"};
  return std::find(kTypes.begin(), kTypes.end(), model_type) != kTypes.end();
}

bool ends_with_component(std::string_view name, std::string_view tail) {
  if (!name.ends_with(tail)) return false;
  if (tail.starts_with('.') || name.size() == tail.size()) return true;
  return name[name.size() - tail.size() - 1] == '.';
}

// A name transformers gives packed experts, in any architecture: "...experts.<proj>", rank 3.
bool looks_packed(const LogicalTensor& tensor) {
  static constexpr std::array<std::string_view, 7> kProjections = {
      "gate_up_proj", "down_proj", "up_proj", "gate_proj", "w1", "w2", "w3"};
  if (tensor.shape.size() != 3) return false;
  std::string_view name = tensor.name;
  for (std::string_view projection : kProjections)
    if (name.ends_with(projection) && name.size() > projection.size() + 8 &&
        name.substr(0, name.size() - projection.size()).ends_with(".experts."))
      return true;
  return false;
}

std::string apply_renames(std::string name, const std::vector<Rename>& renames) {
  for (const Rename& rename : renames)
    if (auto at = name.find(rename.from); at != std::string::npos)
      name.replace(at, rename.from.size(), rename.to);
  return name;
}

// transformers' SplitModulelist saves chunk.squeeze(): every size-1 dimension goes.
LogicalTensor squeeze(LogicalTensor tensor) {
  for (std::size_t dim = tensor.shape.size(); dim-- > 0;)
    if (tensor.shape[dim] == 1) tensor = select(tensor, dim, 0);
  return tensor;
}

Status check_packed_shape(const LogicalTensor& tensor, const ExpertSplit& split,
                          const HfConfig& config) {
  auto fail = [&](const std::string& why) {
    return invalid_input(tensor.name + " " + shape_text(tensor.shape) + ": " + why + " (" +
                         config.path.string() + ")");
  };
  if (tensor.shape.size() != 3) return fail("packed experts must be [experts, rows, columns]");
  std::int64_t experts = tensor.shape[0];
  if (auto expected = config.num_experts()) {
    // LongCat-Flash packs its zero (identity) experts after the routed ones in gate_up_proj.
    std::int64_t with_zero = *expected + config.zero_expert_num();
    if (experts != *expected && experts != with_zero)
      return fail(std::to_string(experts) + " experts, config.json says " +
                  std::to_string(*expected));
  }
  if (auto hidden = config.hidden_size(); hidden && tensor.shape[split.hidden_dim] != *hidden)
    return fail("dimension " + std::to_string(split.hidden_dim) + " should be hidden_size " +
                std::to_string(*hidden));
  if (tensor.shape[1] % static_cast<std::int64_t>(split.parts.size()) != 0)
    return fail("dimension 1 does not split into " + std::to_string(split.parts.size()) +
                " equal parts");
  return {};
}

// The per-expert tensors of one packed tensor, in save order: part by part, expert by expert.
std::vector<LogicalTensor> split_experts(const LogicalTensor& packed, const ExpertSplit& split,
                                         const std::vector<Rename>& renames) {
  std::string_view name = packed.name;
  std::string prefix(name.substr(0, name.size() - split.packed.size()));
  auto parts = static_cast<std::int64_t>(split.parts.size());
  std::int64_t rows = packed.shape[1] / parts;
  std::vector<LogicalTensor> out;
  for (std::int64_t part = 0; part < parts; ++part) {
    std::string_view pattern = split.parts[static_cast<std::size_t>(part)];
    auto star = pattern.find('*');
    for (std::int64_t expert = 0; expert < packed.shape[0]; ++expert) {
      LogicalTensor tensor = select(packed, 0, expert);
      tensor.shard_group = packed.name;  // one storage in the model transformers saves
      if (parts > 1) tensor = narrow(tensor, 0, part * rows, rows);
      tensor = squeeze(std::move(tensor));
      tensor.name =
          apply_renames(prefix + std::string(pattern.substr(0, star)) + std::to_string(expert) +
                            std::string(pattern.substr(star + 1)),
                        renames);
      out.push_back(std::move(tensor));
    }
  }
  return out;
}

const ExpertSplit* split_for(const LogicalTensor& tensor, const ExpertFamily& family) {
  for (const ExpertSplit& split : family.splits)
    if (ends_with_component(tensor.name, split.packed)) return &split;
  return nullptr;
}

// Compares two all-digit strings as numbers, whatever their length.
int compare_numbers(std::string_view a, std::string_view b) {
  auto strip = [](std::string_view digits) {
    auto first = digits.find_first_not_of('0');
    return first == std::string_view::npos ? std::string_view() : digits.substr(first);
  };
  a = strip(a);
  b = strip(b);
  if (a.size() != b.size()) return a.size() < b.size() ? -1 : 1;
  return a.compare(b);
}

bool all_digits(std::string_view part) {
  return !part.empty() &&
         std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
}

}  // namespace

bool dot_natural_less(const std::string& a, const std::string& b) {
  std::string_view rest_a = a, rest_b = b;
  while (true) {
    // Every name has at least one part; the one that runs out of parts first is smaller.
    auto dot_a = rest_a.find('.'), dot_b = rest_b.find('.');
    std::string_view part_a = rest_a.substr(0, dot_a), part_b = rest_b.substr(0, dot_b);
    bool number_a = all_digits(part_a), number_b = all_digits(part_b);
    if (number_a != number_b) return number_a;
    int order = number_a ? compare_numbers(part_a, part_b) : part_a.compare(part_b);
    if (order != 0) return order < 0;
    if (dot_a == std::string_view::npos || dot_b == std::string_view::npos)
      return dot_a == std::string_view::npos && dot_b != std::string_view::npos;
    rest_a.remove_prefix(dot_a + 1);
    rest_b.remove_prefix(dot_b + 1);
  }
}

Result<std::vector<LogicalTensor>> unpack_packed_experts(std::vector<LogicalTensor> tensors,
                                                         const HfConfig& config,
                                                         std::vector<std::string>& notes) {
  std::string model_type = config.model_type();
  std::string_view family_name = family_of(model_type);
  if (family_name.empty() && config.text_config) {  // a VLM whose language model is MoE
    model_type = config.text_config->model_type;
    family_name = family_of(model_type);
  }
  const ExpertFamily* family = nullptr;
  for (const ExpertFamily& candidate : families())
    if (candidate.name == family_name) family = &candidate;

  auto packed = std::find_if(tensors.begin(), tensors.end(), [&](const LogicalTensor& tensor) {
    if (!family) return looks_packed(tensor);
    return family->splits.empty() ? looks_packed(tensor) : split_for(tensor, *family) != nullptr;
  });
  if (packed == tensors.end()) return tensors;  // per-expert already, or not MoE
  if (!family) {
    if (saved_packed(model_type)) {
      notes.push_back(model_type + ": experts stay packed, as transformers saves them");
      return tensors;
    }
    std::string why = family_name == "!" ? "transformers also renames other weights of this "
                                           "architecture on save, which ckptstream does not do yet"
                                         : "ckptstream does not know how transformers saves them";
    return unsupported(packed->name + " " + shape_text(packed->shape) +
                       " holds packed experts of model_type '" + model_type + "' (" +
                       config.path.string() + "): " + why +
                       "; pass --keep-packed-experts to write them packed as they are");
  }

  std::stable_sort(tensors.begin(), tensors.end(),
                   [](const LogicalTensor& a, const LogicalTensor& b) {
                     return dot_natural_less(a.name, b.name);
                   });
  std::vector<LogicalTensor> out;
  std::size_t unpacked = 0;
  for (LogicalTensor& tensor : tensors) {
    if (const ExpertSplit* split = split_for(tensor, *family)) {
      CKPT_TRY(check_packed_shape(tensor, *split, config));
      for (LogicalTensor& expert : split_experts(tensor, *split, family->renames))
        out.push_back(std::move(expert));
      ++unpacked;
      continue;
    }
    tensor.name = apply_renames(std::move(tensor.name), family->renames);
    out.push_back(std::move(tensor));
  }
  std::set<std::string_view> names;
  for (const LogicalTensor& tensor : out)
    if (!names.insert(tensor.name).second)
      return invalid_input("two tensors would both be saved as " + tensor.name + " (" + model_type +
                           " experts, " + config.path.string() + ")");
  if (unpacked == 0)
    notes.push_back(model_type + ": experts stay packed, as transformers saves them; tensors " +
                    "in transformers' save order");
  else
    notes.push_back(model_type + ": " + std::to_string(unpacked) +
                    " packed expert tensors written as " +
                    std::to_string(out.size() - (tensors.size() - unpacked)) +
                    " per-expert tensors, named and ordered as transformers' save_pretrained "
                    "does (--keep-packed-experts keeps them packed)");
  return out;
}

}  // namespace ckptstream
