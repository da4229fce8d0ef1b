#include "dcp/dcp_writer.h"

#include <map>
#include <memory>
#include <utility>

#include "dcp/dcp_metadata.h"
#include "pickle/pickler.h"
#include "torch/torch_writer.h"

namespace ckptstream::dcp {
namespace {

namespace op = pickle::opcode;
constexpr std::string_view kMetadataModule = "torch.distributed.checkpoint.metadata";

// A .distcp file around its chunks' data: `between[i]` is every byte from the end of chunk i-1's
// archive (the file start for i = 0) up to chunk i's data, except that chunk i's archive header
// comes from frames[i]; after the last archive nothing follows.
class DistcpFraming final : public FileFraming {
 public:
  explicit DistcpFraming(std::vector<TorchZipFraming> frames) : frames_(std::move(frames)) {}

  std::string after_tensor(std::size_t index,
                           std::span<const WrittenTensor> written) const override {
    std::string out = frames_[index].after_tensor(0, written.subspan(index, 1));
    if (index + 1 < frames_.size()) out += frames_[index + 1].header();
    return out;
  }

 private:
  std::vector<TorchZipFraming> frames_;
};

struct ChunkRecord {
  Shape offsets;
  Shape sizes;
  StorageInfo storage;
};

struct TensorEntry {
  Shape size;
  DType dtype = DType::kF32;
  std::vector<ChunkRecord> chunks;
};

class MetadataPickler {
 public:
  std::string build(const std::vector<std::pair<std::string, const TensorEntry*>>& tensors,
                    const std::vector<std::pair<std::string, StorageInfo>>& bytes,
                    const std::vector<std::string>& order) {
    std::map<std::string, const TensorEntry*> by_fqn(tensors.begin(), tensors.end());
    std::map<std::string, const StorageInfo*> bytes_by_fqn;
    for (const auto& [fqn, info] : bytes) bytes_by_fqn[fqn] = &info;
    p_.proto();
    object_start("Metadata");
    p_.empty_dict();
    p_.mark();
    p_.string("state_dict_metadata");
    p_.empty_dict();
    batched(order.size(), [&](std::size_t i) {
      const std::string& fqn = order[i];
      p_.string(fqn);
      if (auto it = by_fqn.find(fqn); it != by_fqn.end())
        tensor_metadata(*it->second);
      else
        object_start("BytesStorageMetadata");
    });
    p_.string("planner_data");
    p_.none();
    p_.string("storage_data");
    p_.empty_dict();
    std::vector<std::pair<std::pair<const std::string*, const Shape*>, const StorageInfo*>> items;
    for (const auto& fqn : order) {
      if (auto it = by_fqn.find(fqn); it != by_fqn.end())
        for (const auto& chunk : it->second->chunks)
          items.push_back({{&fqn, &chunk.offsets}, &chunk.storage});
      else
        items.push_back({{&fqn, nullptr}, bytes_by_fqn.at(fqn)});
    }
    batched(items.size(), [&](std::size_t i) {
      auto [key, info] = items[i];
      object_start("MetadataIndex");
      p_.empty_dict();
      p_.mark();
      p_.string("fqn");
      p_.string(*key.first);
      p_.string("offset");
      if (key.second)
        size(*key.second);
      else
        p_.none();
      p_.string("index");
      p_.none();
      p_.op(op::kSetItems);
      p_.op(op::kBuild);
      storage_info(*info);
    });
    p_.string("storage_meta");
    p_.none();
    p_.string("version");
    p_.string("1.0.0");
    p_.op(op::kSetItems);
    p_.op(op::kBuild);
    p_.stop();
    return p_.take();
  }

 private:
  // A dataclass instance as protocol 2 pickles it: cls.__new__(cls) (its BUILD follows).
  void object_start(std::string_view cls, std::string_view module = kMetadataModule) {
    p_.global(module, cls);
    p_.op(op::kEmptyTuple);
    p_.op(op::kNewObj);
    p_.put();
  }

  // pickle's _batch_setitems: MARK ... SETITEMS per 1000 pairs, a lone pair as SETITEM.
  template <class Item>
  void batched(std::size_t n, Item item) {
    for (std::size_t begin = 0; begin < n; begin += 1000) {
      std::size_t count = std::min<std::size_t>(1000, n - begin);
      if (count > 1) p_.mark();
      for (std::size_t i = begin; i < begin + count; ++i) item(i);
      p_.op(count > 1 ? op::kSetItems : op::kSetItem);
    }
  }

  // callable(top): the one-argument call a REDUCE of a 1-tuple makes.
  void reduce_one() {
    p_.op(op::kTuple1);
    p_.put();
    p_.op(op::kReduce);
    p_.put();
  }

  void size(const Shape& shape) {
    p_.global("torch", "Size");
    p_.int_tuple(shape);
    reduce_one();
  }

  void tensor_metadata(const TensorEntry& entry) {
    object_start("TensorStorageMetadata");
    p_.empty_dict();
    p_.mark();
    p_.string("properties");
    object_start("TensorProperties");
    p_.mark();
    p_.global("torch", torch_name(entry.dtype));
    p_.global("torch.serialization", "_get_layout");
    p_.string("torch.strided");
    reduce_one();
    p_.boolean(false);  // requires_grad
    p_.global(kMetadataModule, "_MEM_FORMAT_ENCODING");
    p_.integer(0);  // TORCH_CONTIGUOUS_FORMAT
    reduce_one();
    p_.boolean(false);  // pin_memory
    p_.op(op::kTuple);
    p_.put();
    p_.op(op::kBuild);
    p_.string("size");
    size(entry.size);
    p_.string("chunks");
    p_.empty_list();
    const auto& chunks = entry.chunks;
    for (std::size_t begin = 0; begin < chunks.size(); begin += 1000) {
      std::size_t count = std::min<std::size_t>(1000, chunks.size() - begin);
      if (count > 1) p_.mark();
      for (std::size_t i = begin; i < begin + count; ++i) {
        object_start("ChunkStorageMetadata");
        p_.empty_dict();
        p_.mark();
        p_.string("offsets");
        size(chunks[i].offsets);
        p_.string("sizes");
        size(chunks[i].sizes);
        p_.op(op::kSetItems);
        p_.op(op::kBuild);
      }
      p_.op(count > 1 ? op::kAppends : op::kAppend);
    }
    p_.op(op::kSetItems);
    p_.op(op::kBuild);
  }

  void storage_info(const StorageInfo& info) {
    object_start("_StorageInfo", "torch.distributed.checkpoint.filesystem");
    p_.empty_dict();
    p_.mark();
    p_.string("relative_path");
    p_.string(info.relative_path);
    p_.string("offset");
    p_.integer(static_cast<std::int64_t>(info.offset));
    p_.string("length");
    p_.integer(static_cast<std::int64_t>(info.length));
    p_.string("transform_descriptors");
    p_.none();
    p_.op(op::kSetItems);
    p_.op(op::kBuild);
  }

 private:
  pickle::Pickler p_;
};

Error item_error(const std::string& fqn, const std::string& what) {
  return invalid_input("DCP item '" + fqn + "': " + what);
}

}  // namespace

Result<DcpOutput> plan_dcp_output(std::vector<FileToWrite> files, const std::string& prefix) {
  DcpOutput out;
  std::map<std::string, TensorEntry> tensors;
  std::vector<std::pair<std::string, StorageInfo>> bytes;
  std::map<std::string, bool> seen_bytes;
  std::vector<std::string> order;  // fqns in first-met order

  for (auto& file : files) {
    std::uint64_t cursor = 0;
    std::string before;  // bytes before the next archive
    for (auto& item : file.bytes) {
      if (tensors.count(item.fqn) || !seen_bytes.emplace(item.fqn, true).second)
        return item_error(item.fqn, "written twice");
      bytes.push_back({item.fqn, StorageInfo{file.name, cursor, item.bytes.size(), {}}});
      order.push_back(item.fqn);
      cursor += item.bytes.size();
      before += item.bytes;
    }
    std::vector<TorchZipFraming> frames;
    std::vector<PlacedTensor> placed;
    std::string header;
    for (auto& chunk : file.chunks) {
      const Shape& box = chunk.data.shape;
      if (seen_bytes.count(chunk.fqn)) return item_error(chunk.fqn, "both bytes and a tensor");
      if (box.size() != chunk.global_shape.size() || chunk.offsets.size() != box.size())
        return item_error(chunk.fqn, "chunk " + shape_text(box) + " at " +
                                         shape_text(chunk.offsets) + " does not match rank of " +
                                         shape_text(chunk.global_shape));
      for (std::size_t d = 0; d < box.size(); ++d)
        if (chunk.offsets[d] < 0 || box[d] < 0 || chunk.offsets[d] + box[d] > chunk.global_shape[d])
          return item_error(chunk.fqn, "chunk " + shape_text(box) + " at " +
                                           shape_text(chunk.offsets) + " lies outside " +
                                           shape_text(chunk.global_shape));
      auto [it, fresh] = tensors.try_emplace(chunk.fqn);
      TensorEntry& entry = it->second;
      if (fresh) {
        entry.size = chunk.global_shape;
        entry.dtype = chunk.data.dtype;
        order.push_back(chunk.fqn);
      } else if (entry.size != chunk.global_shape || entry.dtype != chunk.data.dtype) {
        return item_error(chunk.fqn, "given as " + shape_text(entry.size) + " " +
                                         std::string(torch_name(entry.dtype)) + " and as " +
                                         shape_text(chunk.global_shape) + " " +
                                         std::string(torch_name(chunk.data.dtype)));
      }
      TorchWriteOptions options;
      options.root = TorchObject::tensor_at(0);
      options.serialization_id = false;
      CKPT_ASSIGN_OR_RETURN(
          TorchZipLayout layout,
          plan_torch_zip({TorchWriteTensor{{"chunk"}, chunk.data.dtype, box}}, options));
      const TorchZipRecord& record = layout.records[layout.tensor_record[0]];
      std::uint64_t archive_size = layout.file_size;
      std::uint64_t data_at = cursor + record.data_offset;
      entry.chunks.push_back(
          {chunk.offsets, box, StorageInfo{file.name, cursor, archive_size, {}}});
      TorchZipFraming frame(std::move(layout));
      if (frames.empty()) header = before + frame.header();
      std::uint64_t begin = data_at - header.size();
      placed.push_back(PlacedTensor{std::move(chunk.data), begin, begin + record.size});
      frames.push_back(std::move(frame));
      cursor += archive_size;
    }
    OutputFile output;
    output.name = prefix + file.name;
    if (frames.empty()) {
      output.header = std::move(before);
    } else {
      output.header = std::move(header);
      output.tail_bytes = frames.back().tail_bytes();
      output.tensors = std::move(placed);
      output.framing = std::make_shared<DistcpFraming>(std::move(frames));
    }
    out.files.push_back(std::move(output));
  }
  MetadataPickler pickler;
  std::vector<std::pair<std::string, const TensorEntry*>> tensor_list;
  for (const auto& [fqn, entry] : tensors) tensor_list.push_back({fqn, &entry});
  out.metadata = pickler.build(tensor_list, bytes, order);
  return out;
}

}  // namespace ckptstream::dcp
