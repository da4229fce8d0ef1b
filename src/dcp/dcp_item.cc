#include "dcp/dcp_item.h"

#include <fcntl.h>
#include <unistd.h>
#include <zstd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <vector>

#include "pickle/unpickler.h"
#include "pickle/value.h"
#include "torch/tensor_interpreter.h"
#include "torch/torch_checkpoint.h"
#include "zip/zip_archive.h"

namespace ckptstream::dcp {
namespace {

using pickle::Kind;
using pickle::Value;
using pickle::ValuePtr;

constexpr std::string_view kZstd = "stream.zstd";
constexpr std::size_t kMaxOpenFiles = 64;

// "(4, 2)", as torch.Size prints.
std::string size_text(const Shape& s) {
  std::string out = "(";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + ")";
}

bool starts_with(std::span<const std::byte> bytes, std::string_view magic) {
  return bytes.size() >= magic.size() && std::memcmp(bytes.data(), magic.data(), magic.size()) == 0;
}

// A descriptor "name[@domain][/version]": its name and major version ("" when absent).
struct Descriptor {
  std::string name;
  std::string major;
};

Descriptor split_descriptor(const std::string& text) {
  Descriptor d;
  auto slash = text.find('/');
  d.name = text.substr(0, slash);
  if (slash != std::string::npos) {
    std::string version = text.substr(slash + 1);
    d.major = version.substr(0, version.find('.'));
  }
  return d;
}

// Reads within one item, at offsets relative to it. A torch.save item keeps its metadata at its
// two ends: local headers, data.pkl and byteorder before the tensor bytes; the last records, the
// central directory and the end records after them (under 1 KiB each for a tensor chunk). Each
// end is fetched with one read, and the zip parser's dozen small reads (one per record) are
// served from those: a DeepSeek-V3-sized checkpoint has over 700 000 items. The windows end at
// page boundaries, so that they bring no page into the cache that the records do not touch
// (reading 4 KiB at each end instead took twice as long: each read pulled in pages of tensor
// bytes). A read outside both windows (an unusual archive) goes to the file.
class ItemWindows {
 public:
  static constexpr std::uint64_t kMetadataBytes = 1024;
  static constexpr std::uint64_t kPage = 4096;

  ItemWindows(const InputFile& file, std::uint64_t begin, std::uint64_t length)
      : file_(file), begin_(begin), length_(length) {
    const std::uint64_t end = begin + length;
    head_end_ = std::min(end, round_up(begin + std::min(kMetadataBytes, length))) - begin;
    tail_begin_ = std::max(begin, round_down(end - std::min(kMetadataBytes, length))) - begin;
    if (tail_begin_ <= head_end_) head_end_ = length;  // a small item: one read of it all
  }

  Status read(std::uint64_t offset, std::span<std::byte> out) {
    if (!range_fits(offset, out.size(), length_))
      return invalid_input("a read of " + std::to_string(out.size()) + " bytes at offset " +
                           std::to_string(offset) + " lies past the end of the item (" +
                           std::to_string(length_) + " bytes)");
    if (out.empty()) return {};
    if (offset + out.size() <= head_end_) return from(head_, 0, head_end_, offset, out);
    if (offset >= tail_begin_) return from(tail_, tail_begin_, length_, offset, out);
    return file_.read_at(begin_ + offset, out);
  }

 private:
  static std::uint64_t round_down(std::uint64_t x) { return x / kPage * kPage; }
  static std::uint64_t round_up(std::uint64_t x) { return round_down(x + kPage - 1); }

  // Serves `out` from the window [start, end) of the item, read on first use.
  Status from(std::vector<std::byte>& window, std::uint64_t start, std::uint64_t end,
              std::uint64_t offset, std::span<std::byte> out) {
    if (window.empty()) {
      window.resize(static_cast<std::size_t>(end - start));
      CKPT_TRY(file_.read_at(begin_ + start, window));
    }
    std::memcpy(out.data(), window.data() + (offset - start), out.size());
    return {};
  }

  const InputFile& file_;
  std::uint64_t begin_;
  std::uint64_t length_;
  std::uint64_t head_end_ = 0;    // the head window: [0, head_end_)
  std::uint64_t tail_begin_ = 0;  // the tail window: [tail_begin_, length_)
  std::vector<std::byte> head_, tail_;
};

// relative_path must name a file inside the checkpoint directory.
Status check_relative_path(const std::string& path) {
  std::filesystem::path p(path);
  if (p.is_absolute()) return invalid_input("relative_path '" + path + "' is absolute");
  for (const auto& part : p)
    if (part == "..") return invalid_input("relative_path '" + path + "' leaves the directory");
  return {};
}

// The persistent id ('storage', storage class, key, location, numel) of a torch.save pickle.
struct StorageId {
  DType dtype = DType::kU8;
  std::string key;
  std::uint64_t numel = 0;
};

Result<StorageId> parse_storage_id(const Value& pid) {
  if (!pid.is(Kind::kTuple) || pid.items().size() < 5 || pid.items()[0]->as_string() != "storage")
    return invalid_input("data.pkl: a persistent id is not a ('storage', ...) tuple");
  const auto& f = pid.items();
  std::string cls(f[1]->class_name());
  StorageId id;
  if (cls != "UntypedStorage") {
    auto dtype = dtype_from_storage_class(cls);
    if (!dtype) return unsupported("data.pkl: unknown storage class '" + cls + "'");
    id.dtype = *dtype;
  }
  auto key = f[2]->as_string();
  auto numel = f[4]->as_int();
  if (!key || !numel || *numel < 0) return invalid_input("data.pkl: malformed storage id");
  id.key = std::string(*key);
  id.numel = static_cast<std::uint64_t>(*numel);
  return id;
}

// An item's data.pkl is a few hundred bytes; this bounds what a corrupt size makes us allocate.
constexpr std::uint64_t kMaxItemPickle = 64u << 20;

// The one tensor of an item's torch.save zip of `size` bytes, read through `read` (offsets
// relative to the item). Positional reads, not a mapping: faulting in an item's headers through a
// mapping of the .distcp file mapped the cached tensor bytes around them too (fault-around), and
// the peak RSS of a 1 GB merge was 216 MB of them.
Result<TorchTensor> read_item_tensor(std::uint64_t size, const zip::ReadAt& read,
                                     const std::string& label, TorchCheckpoint& ckpt) {
  CKPT_ASSIGN_OR_RETURN(auto archive, zip::Archive::parse(size, read, label));
  if (archive.entries().empty()) return invalid_input("zip archive has no entries");
  const std::string& first = archive.entries().front().name;
  std::string prefix = first.substr(0, first.find('/') + 1);
  if (!archive.find(prefix + "data.pkl"))
    return invalid_input("no " + prefix + "data.pkl record: not a torch.save archive");
  CKPT_ASSIGN_OR_RETURN(const zip::Entry* pkl, archive.stored(prefix + "data.pkl"));
  if (const zip::Entry* order = archive.find(prefix + "byteorder")) {
    CKPT_TRY(archive.stored(order->name));
    std::array<std::byte, 8> buffer{};
    const auto length = static_cast<std::size_t>(std::min<std::uint64_t>(order->size, 8));
    CKPT_TRY(read(order->data_offset, std::span(buffer).first(length)));
    std::string_view text(reinterpret_cast<const char*>(buffer.data()), length);
    if (order->size > 8 || (text != "little" && text != "big"))
      return invalid_input("byteorder record says '" + std::string(text) + "'");
    ckpt.big_endian = text == "big";
  }
  if (pkl->size > kMaxItemPickle)
    return invalid_input(prefix + "data.pkl of " + std::to_string(pkl->size) +
                         " bytes is implausibly large for one chunk");
  std::vector<std::byte> pkl_bytes(static_cast<std::size_t>(pkl->size));
  CKPT_TRY(read(pkl->data_offset, pkl_bytes));
  auto pickled = pickle::unpickle(pkl_bytes);
  if (!pickled.ok()) return pickled.error().with_context("data.pkl");
  ckpt.root = pickled->value;

  const std::vector<const Value*>& pids = pickled->persistent_ids;
  torch_internal::StorageUses uses;
  std::map<std::string, std::size_t> by_key;
  for (const Value* pid : pids) {
    if (!pid->args) return invalid_input("data.pkl: empty persistent id");
    CKPT_ASSIGN_OR_RETURN(StorageId id, parse_storage_id(*pid->args));
    auto [it, fresh] = by_key.emplace(id.key, ckpt.storages.size());
    if (fresh) {
      StorageRecord s;
      s.key = id.key;
      s.dtype = id.dtype;
      if (__builtin_mul_overflow(id.numel, element_size(id.dtype), &s.nbytes))
        return invalid_input("storage '" + id.key + "': element count overflows");
      std::string name = prefix + "data/" + id.key;
      if (!archive.find(name)) return invalid_input("record " + name + " is missing");
      CKPT_ASSIGN_OR_RETURN(const zip::Entry* e, archive.stored(name));
      if (e->size != s.nbytes)
        return invalid_input("record " + name + " holds " + std::to_string(e->size) +
                             " bytes, but its storage id says " + std::to_string(s.nbytes));
      s.file_offset = e->data_offset;
      if (e->crc32 != 0 && e->size > 0) s.crc32 = e->crc32;
      ckpt.storages.push_back(std::move(s));
    }
    uses[pid] = torch_internal::StorageUse{it->second, id.dtype};
  }
  CKPT_TRY(torch_internal::collect_tensors(*pickled->value, uses, read, ckpt, pkl_bytes.size()));
  if (ckpt.tensors.size() != 1 || !ckpt.tensors[0].name.empty())
    return invalid_input("data.pkl holds " + std::to_string(ckpt.tensors.size()) +
                         " tensors, expected the chunk alone");
  TorchTensor& t = ckpt.tensors[0];
  if (t.dtensor) return unsupported("the item is a DTensor, not a local chunk");
  if (t.conj || t.neg) return unsupported("the chunk is a conj/neg view");
  return t;
}

class FileWriter {
 public:
  explicit FileWriter(const std::filesystem::path& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  }
  ~FileWriter() {
    if (fd_ >= 0) ::close(fd_);
  }
  FileWriter(const FileWriter&) = delete;
  FileWriter& operator=(const FileWriter&) = delete;

  Status opened() const {
    if (fd_ < 0) return io_error(path_.string() + ": cannot create: " + std::strerror(errno));
    return {};
  }
  Status write(const std::byte* data, std::size_t size) {
    while (size > 0) {
      ssize_t n = ::write(fd_, data, size);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return io_error(path_.string() + ": write failed: " + std::strerror(errno));
      data += n;
      size -= static_cast<std::size_t>(n);
    }
    return {};
  }
  Status close() {
    int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0)
      return io_error(path_.string() + ": close failed: " + std::strerror(errno));
    return {};
  }

 private:
  std::filesystem::path path_;
  int fd_ = -1;
};

// Decompresses the single zstd frame in [offset, offset + length) of `in` into `out`, through
// buffers of ZSTD_DStreamInSize / ZSTD_DStreamOutSize bytes.
Status zstd_decompress(const InputFile& in, std::uint64_t offset, std::uint64_t length,
                       FileWriter& out) {
  std::unique_ptr<ZSTD_DCtx, size_t (*)(ZSTD_DCtx*)> ctx(ZSTD_createDCtx(), ZSTD_freeDCtx);
  if (!ctx) return io_error("zstd: cannot create a decompression context");
  std::vector<std::byte> in_buf(ZSTD_DStreamInSize());
  std::vector<std::byte> out_buf(ZSTD_DStreamOutSize());
  ZSTD_inBuffer input{in_buf.data(), 0, 0};
  std::uint64_t remaining = length;
  for (;;) {
    if (input.pos == input.size && remaining > 0) {
      std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(in_buf.size(), remaining));
      CKPT_TRY(in.read_at(offset, std::span<std::byte>(in_buf.data(), n)));
      offset += n;
      remaining -= n;
      input = ZSTD_inBuffer{in_buf.data(), n, 0};
    }
    ZSTD_outBuffer output{out_buf.data(), out_buf.size(), 0};
    std::size_t ret = ZSTD_decompressStream(ctx.get(), &output, &input);
    if (ZSTD_isError(ret)) return invalid_input(std::string("zstd: ") + ZSTD_getErrorName(ret));
    CKPT_TRY(out.write(out_buf.data(), output.pos));
    if (ret == 0) return {};  // the frame is complete (torch reads only the first frame)
    if (output.pos == 0 && input.pos == input.size && remaining == 0)
      return invalid_input("zstd: the frame is truncated (the item ends inside it)");
  }
}

}  // namespace

Status check_transforms(const std::vector<std::string>& descriptors) {
  for (const auto& text : descriptors) {
    Descriptor d = split_descriptor(text);
    if (d.name != kZstd)
      return unsupported("unknown stream transform '" + text + "' (known: stream.zstd/1)");
    if (d.major != "1")
      return unsupported("stream transform '" + text + "': version " +
                         (d.major.empty() ? std::string("(none)") : d.major) +
                         " is not supported (known: stream.zstd/1)");
  }
  return {};
}

ItemReader::ItemReader(std::filesystem::path dir, std::filesystem::path scratch_dir)
    : dir_(std::move(dir)), scratch_dir_(std::move(scratch_dir)) {}

Result<std::shared_ptr<const InputFile>> ItemReader::open(const std::filesystem::path& path) {
  {
    std::shared_lock lock(mutex_);  // nearly every call: the files are few and open already
    auto it = files_.find(path);
    if (it != files_.end()) return it->second;
  }
  std::unique_lock lock(mutex_);
  auto it = files_.find(path);
  if (it != files_.end()) return it->second;
  // One file per item (single_file_per_rank=False) or per zstd item would otherwise keep
  // thousands of descriptors open.
  if (files_.size() >= kMaxOpenFiles) files_.clear();
  CKPT_ASSIGN_OR_RETURN(InputFile file, InputFile::open(path));
  // Only each item's few headers are read here: kernel readahead would pull the tensor bytes
  // after them into the cache (1.2 GB of a cold 5 GB merge), where the merge then found them and
  // took the file for warm.
  file.random_access();
  auto shared = std::make_shared<const InputFile>(std::move(file));
  files_.emplace(path, shared);
  return shared;
}

Result<std::filesystem::path> ItemReader::decode_to_scratch(const StorageInfo& info,
                                                            const InputFile& file,
                                                            const std::string& what) {
  if (scratch_dir_.empty())
    return usage_error(what + ": the item is compressed and no scratch directory was given");
  std::error_code ec;
  std::filesystem::create_directories(scratch_dir_, ec);
  if (ec) return io_error(scratch_dir_.string() + ": cannot create: " + ec.message());
  std::string name = info.relative_path;
  for (char& c : name)
    if (c == '/') c = '_';
  // Each descriptor is one stage: stage k decodes the output of stage k - 1.
  std::filesystem::path source = file.path();
  std::uint64_t offset = info.offset;
  std::uint64_t length = info.length;
  std::shared_ptr<const InputFile> in;
  for (std::size_t stage = info.transforms.size(); stage-- > 0;) {
    std::filesystem::path target = scratch_dir_ / (name + "@" + std::to_string(info.offset) + "." +
                                                   std::to_string(stage) + ".item");
    FileWriter out(target);
    CKPT_TRY(out.opened());
    Status status = zstd_decompress(in ? *in : file, offset, length, out);
    if (!status.ok()) return status.error().with_context(what);
    CKPT_TRY(out.close());
    CKPT_ASSIGN_OR_RETURN(in, open(target));
    source = target;
    offset = 0;
    length = in->size();
  }
  return source;
}

Result<ChunkLocation> ItemReader::tensor_chunk(const StateDictEntry& entry, const ChunkMeta& chunk,
                                               const StorageInfo& info) {
  std::string what = "'" + entry.fqn + "' chunk at " + size_text(chunk.offsets);
  CKPT_TRY_CTX(check_relative_path(info.relative_path), what);
  CKPT_TRY_CTX(check_transforms(info.transforms),
               (dir_ / info.relative_path).string() + ": " + what);
  CKPT_ASSIGN_OR_RETURN(std::shared_ptr<const InputFile> file, open(dir_ / info.relative_path));
  what = file->path().string() + ": " + what;
  if (!range_fits(info.offset, info.length, file->size()))
    return invalid_input(what + ": item [" + std::to_string(info.offset) + ", " +
                         std::to_string(info.offset + info.length) +
                         ") lies past the end of the file (" + std::to_string(file->size()) +
                         " bytes; truncated?)");
  ChunkLocation location;
  location.file = file->path();
  std::uint64_t item_begin = info.offset;
  std::uint64_t item_length = info.length;
  if (!info.transforms.empty()) {
    CKPT_ASSIGN_OR_RETURN(location.file, decode_to_scratch(info, *file, what));
    CKPT_ASSIGN_OR_RETURN(file, open(location.file));
    item_begin = 0;
    item_length = file->size();
  }
  ItemWindows windows(*file, item_begin, item_length);
  zip::ReadAt read = [&windows](std::uint64_t offset, std::span<std::byte> out) {
    return windows.read(offset, out);
  };
  std::array<std::byte, 9> head{};
  const auto head_length = static_cast<std::size_t>(std::min<std::uint64_t>(item_length, 9));
  CKPT_TRY(read(0, std::span(head).first(head_length)));
  const auto item = std::span<const std::byte>(head).first(head_length);
  if (!starts_with(item, "PK\x03\x04")) {
    if (starts_with(item, "\x28\xB5\x2F\xFD"))
      return invalid_input(what +
                           ": the item is a zstd frame but its metadata lists no "
                           "transform_descriptors");
    if (item.size() > 8 && static_cast<char>(item[8]) == '{')
      return unsupported(what +
                         ": the item is a safetensors blob "
                         "(SerializationFormat.SAFETENSORS), which is not supported");
    return invalid_input(what + ": the item is not a torch.save zip archive");
  }
  TorchCheckpoint ckpt;
  ckpt.path = location.file;
  auto tensor = read_item_tensor(item_length, read, what, ckpt);
  if (!tensor.ok()) {
    // Zip errors already name the item.
    if (tensor.error().message.rfind(what, 0) == 0) return tensor.error();
    return tensor.error().with_context(what);
  }
  const TorchTensor& t = *tensor;
  if (t.dtype != entry.dtype)
    return invalid_input(what + ": the chunk is " + std::string(torch_name(t.dtype)) +
                         ", but the metadata says " + std::string(torch_name(entry.dtype)));
  if (t.shape != chunk.sizes)
    return invalid_input(what + ": the chunk has shape " + size_text(t.shape) +
                         ", but the metadata says " + size_text(chunk.sizes));
  location.ref = tensor_ref(t, ckpt.storages[t.storage], ckpt.big_endian, location.ref.input);
  location.ref.storage_begin += item_begin;  // the item is a zip embedded in the .distcp file
  return location;
}

}  // namespace ckptstream::dcp
