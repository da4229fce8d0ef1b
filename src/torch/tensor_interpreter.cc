#include "torch/tensor_interpreter.h"

#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

namespace ckptstream::torch_internal {
namespace {

using pickle::Kind;
using pickle::Value;
using pickle::ValuePtr;

constexpr int kMaxDepth = 200;  // nesting of the saved object
constexpr std::size_t kMaxMeshRanks = 1 << 20;

// A pickle can make a graph whose paths are exponentially many (dicts whose entries all point to
// one child, N levels deep: 10^N paths from a few hundred bytes). Flattening walks each container
// once, and its work is bounded by the pickle's size whatever the graph: nodes visited and bytes
// of names built, each a constant plus a multiple of the pickle's bytes (a state dict needs one
// visit and a key's worth of name per entry, each entry at least a few pickle bytes).
struct FlattenBudget {
  std::size_t visits;
  std::size_t name_bytes;
};
FlattenBudget budget_for(std::size_t pickle_bytes) {
  return {(1u << 20) + 4 * pickle_bytes, (16u << 20) + 16 * pickle_bytes};
}

// The value stored under `key` in a BUILD state: a dict, or a (dict|None, slots_dict) tuple.
ValuePtr state_lookup(const ValuePtr& state, std::string_view key) {
  if (!state) return nullptr;
  if (state->is(Kind::kDict)) return state->find(key);
  if (state->is(Kind::kTuple) && state->items().size() == 2)
    for (const auto& part : state->items())
      if (part->is(Kind::kDict))
        if (auto v = part->find(key)) return v;
  return nullptr;
}

std::optional<std::span<const ValuePtr>> call_args(const Value& v) {
  if (!v.args || !v.args->is(Kind::kTuple)) return std::nullopt;
  return v.args->items();
}

Result<Shape> int_list(const ValuePtr& v, const char* what) {
  if (!v || !v->is_sequence()) return invalid_input(std::string(what) + " is not a tuple of ints");
  Shape out;
  out.reserve(v->items().size());
  for (const auto& x : v->items()) {
    auto i = x->as_int();
    if (!i) return invalid_input(std::string(what) + " holds a " + pickle::kind_name(x->kind));
    out.push_back(*i);
  }
  return out;
}

// An int, or a tuple of ints (CuTe-style layouts write a single mode as a plain int).
Result<Shape> int_or_list(const ValuePtr& v, const char* what) {
  if (v)
    if (auto i = v->as_int()) return Shape{*i};
  return int_list(v, what);
}

Result<DType> torch_dtype(const ValuePtr& v) {
  if (!v || !v->is(Kind::kGlobal) || v->module() != "torch")
    return invalid_input("dtype argument is not a torch.<dtype> global");
  auto d = dtype_from_torch_name(v->name());
  if (!d) return unsupported("unknown dtype torch." + std::string(v->name()));
  return *d;
}

using MaybeTensor = std::optional<TorchTensor>;

}  // namespace

class Interpreter {
 public:
  Interpreter(const StorageUses& uses, const zip::ReadAt& read, TorchCheckpoint& ckpt,
              std::size_t pickle_bytes)
      : uses_(uses),
        read_(read),
        ckpt_(ckpt),
        pickle_bytes_(pickle_bytes),
        budget_(budget_for(pickle_bytes)) {}

  void forget_nodes() {
    meshes_.clear();
    walked_.clear();
  }

  Status walk(const Value& node, const std::string& name, int depth) {
    if (depth > kMaxDepth)
      return invalid_input("object nested deeper than " + std::to_string(kMaxDepth) +
                           " levels at '" + name + "'");
    if (++visits_ > budget_.visits) return expands();
    return walk_node(node, name, depth);
  }

 private:
  // A name for a message: built names can be megabytes long in a hostile file.
  static std::string shortened(const std::string& name) {
    constexpr std::size_t kMost = 200;
    if (name.size() <= kMost) return name;
    return name.substr(0, kMost / 2) + "..." + name.substr(name.size() - kMost / 2);
  }

  Error expands() const {
    return invalid_input(
        "the saved object's graph expands far beyond its " + std::to_string(pickle_bytes_) +
        "-byte pickle (containers or names repeated over and over): not a state dict");
  }

  Result<std::string> join(const std::string& prefix, const std::string& key) {
    name_bytes_ += prefix.size() + 1 + key.size();
    if (name_bytes_ > budget_.name_bytes) return expands();
    return prefix.empty() ? key : prefix + "." + key;
  }

  // A container (a dict, list, tuple or object that is no tensor) is walked once. Reached again
  // under another name, it adds nothing if it held no tensor; if it did, its tensors would have
  // two names each: a state dict never shares containers so, and the file is refused. A cycle
  // (a list holding itself) reaches a container still being walked, whose tensors are not
  // counted yet: it adds nothing, as Python's walkers would skip it.
  template <class WalkChildren>
  Status walk_container(const Value& node, const std::string& name, WalkChildren&& children) {
    auto [it, fresh] = walked_.try_emplace(&node, WalkedContainer{name, false});
    if (!fresh) {
      if (!it->second.held_tensors) return {};
      return invalid_input("'" + shortened(name) + "' and '" + shortened(it->second.name) +
                           "' are one and the same container holding tensors: a state dict "
                           "never shares containers");
    }
    std::size_t before = ckpt_.tensors.size();
    CKPT_TRY(children());
    walked_[&node].held_tensors = ckpt_.tensors.size() > before;
    return {};
  }

  Status walk_node(const Value& node, const std::string& name, int depth) {
    switch (node.kind) {
      case Kind::kObject: {
        auto tensor = interpret(node, 0);
        if (!tensor.ok()) return tensor.error().with_context("tensor '" + name + "'");
        if (tensor->has_value()) {
          TorchTensor t = std::move(**tensor);
          t.name = name;
          ckpt_.tensors.push_back(std::move(t));
          return {};
        }
        return walk_container(node, name, [&] { return walk_state(node.state, name, depth); });
      }
      case Kind::kDict:
        return walk_container(node, name, [&]() -> Status {
          for (const auto& [key, value] : node.entries()) {
            auto k = entry_name(*key);
            if (!k) continue;
            CKPT_ASSIGN_OR_RETURN(std::string child, join(name, *k));
            CKPT_TRY(walk(*value, child, depth + 1));
          }
          return {};
        });
      case Kind::kList:
      case Kind::kTuple:
        return walk_container(node, name, [&]() -> Status {
          for (std::size_t i = 0; i < node.items().size(); ++i) {
            CKPT_ASSIGN_OR_RETURN(std::string child, join(name, std::to_string(i)));
            CKPT_TRY(walk(*node.items()[i], child, depth + 1));
          }
          return {};
        });
      default:
        return {};
    }
  }

  Status walk_state(const ValuePtr& state, const std::string& name, int depth) {
    if (!state) return {};
    if (state->is(Kind::kDict)) return walk(*state, name, depth);
    if (state->is(Kind::kTuple) && state->items().size() == 2)
      for (const auto& part : state->items())
        if (part->is(Kind::kDict)) CKPT_TRY(walk(*part, name, depth));
    return {};
  }

  // A tensor if `v` is a call of one of torch's rebuild functions; nullopt if it is something
  // else; an error if it is a rebuild call we cannot interpret.
  Result<std::optional<TorchTensor>> interpret(const Value& v, int depth) {
    if (!v.is(Kind::kObject) || !v.callable || !v.callable->is(Kind::kGlobal)) return MaybeTensor{};
    if (depth > 8) return invalid_input("tensor rebuild calls nested too deeply");
    const Value& fn = *v.callable;
    const std::string fn_name(fn.name());
    const auto args = call_args(v);
    if (fn.module() == "torch._utils") {
      if (!fn.name().starts_with("_rebuild_")) return MaybeTensor{};
      if (!args) return invalid_input(fn_name + " arguments are not a tuple");
      return rebuild_utils(fn_name, *args, depth);
    }
    if (fn.module() == "torch._tensor" &&
        (fn.name() == "_rebuild_from_type_v2" || fn.name() == "_rebuild_from_type")) {
      if (!args || args->size() < 3)
        return invalid_input(fn_name + " needs (func, type, args[, state])");
      return rebuild_from_type(*args, depth);
    }
    return MaybeTensor{};
  }

  Result<std::optional<TorchTensor>> rebuild_utils(const std::string& name,
                                                   std::span<const ValuePtr> a, int depth) {
    if (name == "_rebuild_tensor_v2") {
      if (a.size() < 6) return invalid_input(name + " needs at least 6 arguments");
      return dense(a, std::nullopt, a.size() > 6 ? a[6] : nullptr);
    }
    if (name == "_rebuild_tensor_v3") {
      if (a.size() < 7) return invalid_input(name + " needs at least 7 arguments");
      CKPT_ASSIGN_OR_RETURN(DType dtype, torch_dtype(a[6]));
      return dense(a, dtype, a.size() > 7 ? a[7] : nullptr);
    }
    if (name == "_rebuild_tensor") {
      if (a.size() < 4) return invalid_input(name + " needs 4 arguments");
      return dense(a, std::nullopt, nullptr);
    }
    if (name == "_rebuild_parameter" || name == "_rebuild_parameter_with_state") {
      if (a.size() < 2) return invalid_input(name + " needs (data, requires_grad, ...)");
      CKPT_ASSIGN_OR_RETURN(auto inner, interpret(*a[0], depth + 1));
      if (!inner) return invalid_input(name + ": data is not a tensor");
      auto rg = a[1]->as_bool();
      if (!rg) return invalid_input(name + ": requires_grad is not a bool");
      inner->is_parameter = true;
      inner->requires_grad = *rg;
      return inner;
    }
    return unsupported("torch._utils." + name + " tensors are not supported");
  }

  // _rebuild_tensor_v2/v3/_rebuild_tensor: (storage, offset, size, stride[, requires_grad, ...]).
  Result<std::optional<TorchTensor>> dense(std::span<const ValuePtr> a, std::optional<DType> dtype,
                                           const ValuePtr& metadata) {
    if (!a[0]->is(Kind::kPersistentId))
      return invalid_input("storage argument is not a persistent id");
    auto use = uses_.find(a[0]);
    if (use == uses_.end()) return invalid_input("storage persistent id was not resolved");
    TorchTensor t;
    t.storage = use->second.storage;
    t.dtype = dtype.value_or(use->second.dtype);
    auto offset = a[1]->as_int();
    if (!offset || *offset < 0) return invalid_input("storage offset is not a non-negative int");
    t.storage_offset = *offset;
    CKPT_ASSIGN_OR_RETURN(t.shape, int_list(a[2], "size"));
    CKPT_ASSIGN_OR_RETURN(t.strides, int_list(a[3], "stride"));
    if (a.size() > 4) {
      auto rg = a[4]->as_bool();
      if (!rg) return invalid_input("requires_grad is not a bool");
      t.requires_grad = *rg;
    }
    if (metadata && metadata->is(Kind::kDict)) {
      if (auto c = metadata->find("conj")) t.conj = c->as_bool().value_or(false);
      if (auto n = metadata->find("neg")) t.neg = n->as_bool().value_or(false);
    }
    CKPT_TRY(validate_view(t));
    return MaybeTensor(std::move(t));
  }

  // offset + Σ (size_i - 1) * stride_i must be an element of the storage (in tensor elements).
  Status validate_view(const TorchTensor& t) const {
    const StorageRecord& s = ckpt_.storages[t.storage];
    if (t.shape.size() != t.strides.size())
      return invalid_input("size " + shape_text(t.shape) + " and stride " + shape_text(t.strides) +
                           " differ in length");
    bool empty = false;
    for (std::size_t i = 0; i < t.shape.size(); ++i) {
      if (t.shape[i] < 0) return invalid_input("negative size " + shape_text(t.shape));
      if (t.strides[i] < 0)
        return unsupported("negative stride " + shape_text(t.strides) + " is not supported");
      empty = empty || t.shape[i] == 0;
    }
    if (empty) return {};
    std::int64_t last = t.storage_offset;
    bool overflow = false;
    for (std::size_t i = 0; i < t.shape.size(); ++i) {
      std::int64_t step = 0;
      overflow = overflow || __builtin_mul_overflow(t.shape[i] - 1, t.strides[i], &step) ||
                 __builtin_add_overflow(last, step, &last);
    }
    std::uint64_t elements = s.nbytes / element_size(t.dtype);
    if (overflow || static_cast<std::uint64_t>(last) >= elements)
      return invalid_input("view (offset " + std::to_string(t.storage_offset) + ", size " +
                           shape_text(t.shape) + ", stride " + shape_text(t.strides) +
                           ") reaches past storage '" + s.key + "' of " + std::to_string(elements) +
                           " " + std::string(torch_name(t.dtype)) + " elements");
    return {};
  }

  // _rebuild_from_type_v2(func, new_type, args, state): a tensor subclass; func(*args) is the
  // tensor, unless func is _rebuild_wrapper_subclass (DTensor and other storage-less wrappers).
  Result<std::optional<TorchTensor>> rebuild_from_type(std::span<const ValuePtr> a, int depth) {
    const ValuePtr& func = a[0];
    const ValuePtr& new_type = a[1];
    const ValuePtr& inner_args = a[2];
    ValuePtr state = a.size() > 3 ? a[3] : nullptr;
    std::string type_name = new_type->is(Kind::kGlobal) ? new_type->qualified_name() : "?";
    if (func->is(Kind::kGlobal) && func->name() == "_rebuild_wrapper_subclass") {
      if (new_type->class_name() == "DTensor") return dtensor(inner_args, state, type_name, depth);
      return unsupported("wrapper subclass " + type_name + " (no local data) is not supported");
    }
    Value call(Kind::kObject);
    call.callable = func;
    call.args = inner_args;
    CKPT_ASSIGN_OR_RETURN(auto t, interpret(call, depth + 1));
    if (!t) return invalid_input("_rebuild_from_type_v2 of " + type_name + " holds no tensor");
    if (type_name == "torch.nn.parameter.Parameter")
      t->is_parameter = true;
    else if (type_name != "torch.Tensor" && t->subclass.empty())
      t->subclass = type_name;
    return t;
  }

  // DTensor: wrapper args (cls, dtype, size, stride, storage_offset, layout, device,
  // requires_grad); state holds _local_tensor (this rank's shard) and _spec (DTensorSpec).
  Result<std::optional<TorchTensor>> dtensor(const ValuePtr& wrapper_args, const ValuePtr& state,
                                             const std::string& type_name, int depth) {
    ValuePtr local = state_lookup(state, "_local_tensor");
    ValuePtr spec = state_lookup(state, "_spec");
    if (!local || !spec) return invalid_input("DTensor state lacks _local_tensor or _spec");
    CKPT_ASSIGN_OR_RETURN(auto t, interpret(*local, depth + 1));
    if (!t) return invalid_input("DTensor _local_tensor is not a tensor");
    t->subclass = type_name;
    DTensorInfo info;
    info.dtype = t->dtype;
    ValuePtr meta = spec->attr("tensor_meta");
    if (wrapper_args && wrapper_args->is(Kind::kTuple) && wrapper_args->items().size() >= 8) {
      const auto& w = wrapper_args->items();
      CKPT_ASSIGN_OR_RETURN(info.dtype, torch_dtype(w[1]));
      CKPT_ASSIGN_OR_RETURN(info.global_shape, int_list(w[2], "DTensor size"));
      CKPT_ASSIGN_OR_RETURN(info.global_stride, int_list(w[3], "DTensor stride"));
      t->requires_grad = w[7]->as_bool().value_or(t->requires_grad);
    } else if (meta && meta->args && meta->args->is(Kind::kTuple) &&
               meta->args->items().size() >= 3) {  // TensorMeta(shape, stride, dtype)
      CKPT_ASSIGN_OR_RETURN(info.global_shape,
                            int_list(meta->args->items()[0], "TensorMeta shape"));
      CKPT_ASSIGN_OR_RETURN(info.global_stride,
                            int_list(meta->args->items()[1], "TensorMeta stride"));
      CKPT_ASSIGN_OR_RETURN(info.dtype, torch_dtype(meta->args->items()[2]));
    } else {
      return invalid_input("DTensor has neither wrapper arguments nor tensor_meta");
    }
    ValuePtr placements = spec->attr("placements");
    if (!placements || !placements->is_sequence())
      return invalid_input("DTensorSpec has no placements tuple");
    for (const auto& p : placements->items()) info.placements.push_back(placement(*p));
    ValuePtr mesh = spec->attr("mesh");
    if (!mesh) return invalid_input("DTensorSpec has no mesh");
    CKPT_ASSIGN_OR_RETURN(info.mesh, shared_mesh(*mesh, depth));
    if (info.mesh->shape.size() != info.placements.size())
      return invalid_input("DTensor has " + std::to_string(info.placements.size()) +
                           " placements for a " + std::to_string(info.mesh->shape.size()) +
                           "-d mesh");
    t->dtensor = std::move(info);
    return t;
  }

  // One DeviceMeshInfo per DeviceMesh node: the pickle memo makes every DTensor of a file refer
  // to the same mesh object.
  Result<std::shared_ptr<const DeviceMeshInfo>> shared_mesh(const Value& mesh, int depth) {
    auto found = meshes_.find(&mesh);
    if (found != meshes_.end()) return found->second;
    CKPT_ASSIGN_OR_RETURN(DeviceMeshInfo info, device_mesh(mesh, depth));
    auto shared = std::make_shared<const DeviceMeshInfo>(std::move(info));
    meshes_.emplace(&mesh, shared);
    return shared;
  }

  static Placement placement(const Value& p) {
    Placement out;
    std::string_view cls = p.class_name();
    auto int_attr = [&](const char* key, std::int64_t fallback) {
      auto v = p.attr(key);
      auto i = v ? v->as_int() : std::nullopt;
      return i.value_or(fallback);
    };
    if (cls == "Shard") {
      out.kind = Placement::Kind::kShard;
      out.dim = int_attr("dim", 0);
    } else if (cls == "_StridedShard" || cls == "StridedShard") {
      out.kind = Placement::Kind::kStridedShard;
      out.dim = int_attr("dim", 0);
      out.split_factor = int_attr("split_factor", 1);
    } else if (cls == "Replicate") {
      out.kind = Placement::Kind::kReplicate;
    } else if (cls == "Partial" || cls == "_Partial") {
      out.kind = Placement::Kind::kPartial;
      out.reduce_op = "sum";
      if (auto op = p.attr("reduce_op")) {
        if (auto s = op->as_string())
          out.reduce_op = std::string(*s);
        else if (op->is(Kind::kObject) || op->is(Kind::kGlobal))
          out.reduce_op = op->class_name();
      }
    } else {
      out.kind = Placement::Kind::kOther;
      out.class_name = p.callable_name();
    }
    return out;
  }

  Result<DeviceMeshInfo> device_mesh(const Value& mesh, int depth) {
    DeviceMeshInfo info;
    ValuePtr device = mesh.attr("device_type");
    if (!device) device = mesh.attr("_device_type");
    if (device && device->as_string()) info.device_type = std::string(*device->as_string());
    ValuePtr names = mesh.attr("mesh_dim_names");
    if (!names) names = mesh.attr("_mesh_dim_names");
    if (names && names->is_sequence())
      for (const auto& n : names->items())
        if (auto s = n->as_string()) info.dim_names.emplace_back(*s);
    if (ValuePtr mesh_tensor = mesh.attr("mesh")) {
      CKPT_ASSIGN_OR_RETURN(auto t, interpret(*mesh_tensor, depth + 1));
      if (!t) return invalid_input("DeviceMesh.mesh is not a tensor");
      info.shape = t->shape;
      CKPT_ASSIGN_OR_RETURN(info.ranks, read_ints(*t));
      return info;
    }
    // torch >= 2.10: mesh[i...] = _rank_map[Σ i_j * stride_j] over _layout.shape.
    ValuePtr rank_map = mesh.attr("_rank_map");
    ValuePtr layout = mesh.attr("_layout");
    if (!rank_map || !layout) return invalid_input("DeviceMesh has neither mesh nor _rank_map");
    CKPT_ASSIGN_OR_RETURN(auto t, interpret(*rank_map, depth + 1));
    if (!t) return invalid_input("DeviceMesh._rank_map is not a tensor");
    CKPT_ASSIGN_OR_RETURN(auto flat, read_ints(*t));
    // torch 2.10-2.13: _MeshLayout{shape, stride}, one entry per mesh dimension. torch 2.14:
    // _MeshLayout{axes: (_FlatLayout{shape: (..), stride: (..)}, ...)}, one axis per mesh
    // dimension, each possibly flattened from several sub-dimensions (row-major, PyTorch's
    // convention): the axis' size is the product of its shape.
    Shape sub_shape, strides;
    if (ValuePtr axes = layout->attr("axes"); axes && axes->is_sequence()) {
      for (const auto& axis : axes->items()) {
        CKPT_ASSIGN_OR_RETURN(Shape axis_shape,
                              int_or_list(axis->attr("shape"), "_FlatLayout shape"));
        CKPT_ASSIGN_OR_RETURN(Shape axis_stride,
                              int_or_list(axis->attr("stride"), "_FlatLayout stride"));
        if (axis_shape.size() != axis_stride.size())
          return invalid_input("_FlatLayout shape and stride differ in length");
        std::int64_t size = 1;
        for (auto d : axis_shape) size *= d;
        info.shape.push_back(size);
        sub_shape.insert(sub_shape.end(), axis_shape.begin(), axis_shape.end());
        strides.insert(strides.end(), axis_stride.begin(), axis_stride.end());
      }
    } else {
      ValuePtr shape = layout->attr("shape");
      ValuePtr stride = layout->attr("stride");
      if ((!shape || !stride) && layout->args && layout->args->items().size() >= 2) {
        shape = layout->args->items()[0];
        stride = layout->args->items()[1];
      }
      CKPT_ASSIGN_OR_RETURN(info.shape, int_list(shape, "_MeshLayout shape"));
      CKPT_ASSIGN_OR_RETURN(strides, int_list(stride, "_MeshLayout stride"));
      sub_shape = info.shape;
    }
    if (strides.size() != sub_shape.size())
      return invalid_input("_MeshLayout shape and stride differ in length");
    CKPT_ASSIGN_OR_RETURN(
        info.ranks, gather(sub_shape, strides, 0, [&](std::int64_t i) -> Result<std::int64_t> {
          if (i < 0 || static_cast<std::uint64_t>(i) >= flat.size())
            return invalid_input("_MeshLayout indexes past _rank_map");
          return flat[static_cast<std::size_t>(i)];
        }));
    return info;
  }

  // Visits the elements of a strided view in row-major order.
  template <class Fn>
  static Result<std::vector<std::int64_t>> gather(const Shape& shape, const Shape& strides,
                                                  std::int64_t offset, Fn&& element) {
    std::uint64_t count = 1;
    for (auto d : shape) {
      if (d < 0 || (d > 0 && count > kMaxMeshRanks / static_cast<std::uint64_t>(d)))
        return invalid_input("device mesh too large");
      count *= static_cast<std::uint64_t>(d);
    }
    std::vector<std::int64_t> out;
    std::vector<std::int64_t> index(shape.size(), 0);
    for (std::uint64_t n = 0; n < count; ++n) {
      std::int64_t at = offset;
      for (std::size_t d = 0; d < shape.size(); ++d) at += index[d] * strides[d];
      CKPT_ASSIGN_OR_RETURN(std::int64_t v, element(at));
      out.push_back(v);
      for (std::size_t d = shape.size(); d-- > 0;) {
        if (++index[d] < shape[d]) break;
        index[d] = 0;
      }
    }
    return out;
  }

  // The values of a small integer tensor (a device mesh), read from the file.
  Result<std::vector<std::int64_t>> read_ints(const TorchTensor& t) const {
    std::size_t size = element_size(t.dtype);
    bool is_signed = t.dtype == DType::kI32 || t.dtype == DType::kI64 || t.dtype == DType::kI16;
    if (!is_signed && t.dtype != DType::kU8)
      return unsupported("mesh tensor of dtype " + std::string(torch_name(t.dtype)));
    const StorageRecord& s = ckpt_.storages[t.storage];
    if (s.nbytes > kMaxMeshRanks * sizeof(std::int64_t))
      return invalid_input("device mesh storage too large");
    std::vector<std::byte> storage(static_cast<std::size_t>(s.nbytes));
    CKPT_TRY(read_(s.file_offset, storage));
    return gather(t.shape, t.strides, t.storage_offset,
                  [&](std::int64_t i) -> Result<std::int64_t> {
                    // validate_view has checked i against the storage.
                    std::uint64_t at = static_cast<std::uint64_t>(i) * size;
                    if (at > storage.size() || size > storage.size() - at)
                      return invalid_input("mesh tensor lies outside its storage");
                    std::uint64_t u = 0;
                    for (std::size_t b = 0; b < size; ++b) {
                      std::size_t k = ckpt_.big_endian ? b : size - 1 - b;
                      u = (u << 8) | static_cast<std::uint8_t>(storage[at + k]);
                    }
                    if (is_signed && size < 8 && (u >> (8 * size - 1)) != 0)
                      u |= ~std::uint64_t{0} << (8 * size);  // sign-extend
                    return static_cast<std::int64_t>(u);
                  });
  }

  const StorageUses& uses_;
  const zip::ReadAt& read_;
  TorchCheckpoint& ckpt_;
  struct WalkedContainer {
    std::string name;   // where it was first reached
    bool held_tensors;  // whether walking it found any
  };

  std::size_t pickle_bytes_;
  FlattenBudget budget_;
  std::unordered_map<const Value*, WalkedContainer> walked_;
  std::unordered_map<const Value*, std::shared_ptr<const DeviceMeshInfo>> meshes_;
  std::size_t visits_ = 0;
  std::size_t name_bytes_ = 0;
};

std::optional<std::string> entry_name(const Value& key) {
  if (key.is(Kind::kString) || key.is(Kind::kBytes)) return std::string(key.text());
  if (key.is(Kind::kInt) || key.is(Kind::kBigInt)) return key.int_decimal();
  return std::nullopt;
}

TensorCollector::TensorCollector(const StorageUses& uses, const zip::ReadAt& read,
                                 TorchCheckpoint& ckpt, std::size_t pickle_bytes)
    : interpreter_(std::make_unique<Interpreter>(uses, read, ckpt, pickle_bytes)) {}
TensorCollector::~TensorCollector() = default;

Status TensorCollector::walk(const Value& root) {
  return interpreter_->walk(root, "", 0);
}

Status TensorCollector::walk(const Value& value, const std::string& name) {
  return interpreter_->walk(value, name, 1);
}

void TensorCollector::forget_nodes() {
  interpreter_->forget_nodes();
}

Status collect_tensors(const pickle::Value& root, const StorageUses& uses, const zip::ReadAt& read,
                       TorchCheckpoint& ckpt, std::size_t pickle_bytes) {
  return TensorCollector(uses, read, ckpt, pickle_bytes).walk(root);
}

}  // namespace ckptstream::torch_internal
