// Turns the unpickled object of a torch.save file into named tensors (torch.md §1.6, §3.1).
// Internal to the torch module; read_torch_file (torch_checkpoint.h) is the entry point.
//
// Flattening rule (names of TorchCheckpoint::tensors): starting from the saved object with an
// empty name, a tensor is a leaf; a dict or OrderedDict contributes "<name>.<key>" for every
// string or integer key (other key types are skipped); a list or tuple contributes
// "<name>.<index>"; any other object (a class instance) contributes "<name>.<attr>" for the
// entries of its BUILD state (its __dict__, or both parts of a (dict, slots) state). Attributes
// that BUILD sets on a dict (the `_metadata` of a state_dict) are not walked. A tensor saved at the
// top level is named "". Names are joined with "." and the first component has no leading dot.
// The same tensor object reached under two names is listed twice (sharing its storage); the same
// container (dict, list, tuple, object) reached twice is walked once: again, it adds nothing if
// it held no tensor, and is an error if it did. Work is bounded by the pickle's size.
// Everything else (numbers, strings, sets, unknown calls' arguments) is not a tensor and is
// ignored. A DTensor is one leaf: its local shard plus DTensorInfo (the mesh tensor inside its spec
// is not listed).
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>

#include "pickle/value.h"
#include "torch/torch_checkpoint.h"
#include "zip/zip_archive.h"

namespace ckptstream::torch_internal {

// What a persistent id resolved to: its storage and the dtype its storage class implies.
struct StorageUse {
  std::size_t storage = 0;
  DType dtype = DType::kU8;
};

using StorageUses = std::unordered_map<const pickle::Value*, StorageUse>;

// The flattened name of a dict entry's key (a string, or an int in decimal); none for keys of
// other types, whose entries are skipped.
std::optional<std::string> entry_name(const pickle::Value& key);

class Interpreter;

// collect_tensors in parts: the entries of the saved dict one by one, as a streaming unpickler
// hands them over (pickle::RootItemSink).
class TensorCollector {
 public:
  // `pickle_bytes`: the size of the pickle the graph was read from, which bounds the work
  // (shared containers, tensor_interpreter.cc's FlattenBudget).
  TensorCollector(const StorageUses& uses, const zip::ReadAt& read, TorchCheckpoint& ckpt,
                  std::size_t pickle_bytes);
  ~TensorCollector();
  TensorCollector(const TensorCollector&) = delete;
  TensorCollector& operator=(const TensorCollector&) = delete;

  Status walk(const pickle::Value& root);  // everything reachable from the saved object
  // The entry `name` (entry_name of its key) of the saved dict.
  Status walk(const pickle::Value& value, const std::string& name);
  // The nodes walked so far may be freed (and their addresses reused): drop what is keyed by them.
  void forget_nodes();

 private:
  std::unique_ptr<Interpreter> interpreter_;
};

// Appends to ckpt.tensors every tensor reachable from `root` (ckpt.storages must be located, so
// that views can be validated and mesh tensors read). `read` reads the file (storage offsets are
// positions in it).
Status collect_tensors(const pickle::Value& root, const StorageUses& uses, const zip::ReadAt& read,
                       TorchCheckpoint& ckpt, std::size_t pickle_bytes);

}  // namespace ckptstream::torch_internal
