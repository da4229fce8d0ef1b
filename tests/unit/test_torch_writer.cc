// Tests of the torch.save writer (torch_writer.h): the pickle and zip bytes against a file torch
// 2.6 wrote, the zip64 logic on planned huge sizes, round trips through our own zip and torch
// readers, streaming rules and errors. With CKPT_TORCH_WRITER_OUT set, also writes the files that
// tests/interop/test_torch_writer.sh checks with real torch (see write_interop_cases).
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "core/crc32.h"
#include "exec/executor.h"
#include "temp_dir.h"
#include "torch/torch_checkpoint.h"
#include "torch/torch_writer.h"
#include "zip/zip_archive.h"

using namespace ckptstream;
namespace fs = std::filesystem;
using ckptstream::testing::TempDir;

namespace {

// torch.save(OrderedDict(a=torch.arange(12.).reshape(3, 4), b=torch.tensor(3),
//   c=torch.zeros(0, 5, dtype=torch.bfloat16), d=torch.arange(5,
//   dtype=torch.int32).to(torch.uint16), e=torch.ones(3, dtype=torch.float8_e4m3fn)), "ref.pt")
//   with torch 2.6.0 (Debian trixie).
const char* const kTorchRefHex[] = {
    "504b0304000008080000000000000000000000000000000000000c0016007265662f646174612e706b6c464212005a"
    "5a"
    "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a800263636f6c6c656374696f6e730a4f726465726564446963740a71002952"
    "71"
    "0128580100000061710263746f7263682e5f7574696c730a5f72656275696c645f74656e736f725f76320a71032828"
    "58"
    "0700000073746f72616765710463746f7263680a466c6f617453746f726167650a7105580100000030710658030000"
    "00"
    "63707571074b0c747108514b004b034b048671094b044b0186710a8968002952710b74710c52710d58010000006271"
    "0e"
    "68032828680463746f7263680a4c6f6e6753746f726167650a710f580100000031711068074b01747111514b002929"
    "89"
    "680029527112747113527114580100000063711568032828680463746f7263680a42466c6f6174313653746f726167"
    "65"
    "0a7116580100000032711768074b00747118514b004b004b058671194b054b0186711a8968002952711b74711c5271"
    "1d"
    "580100000064711e63746f7263682e5f7574696c730a5f72656275696c645f74656e736f725f76330a711f28286804"
    "63"
    "746f7263682e73746f726167650a556e747970656453746f726167650a7120580100000033712168074b0a74712251"
    "4b"
    "004b058571234b018571248968002952712563746f7263680a75696e7431360a712674712752712858010000006571"
    "29"
    "681f282868046820580100000034712a68074b0374712b514b004b0385712c4b0185712d8968002952712e63746f72"
    "63"
    "680a666c6f6174385f65346d33666e0a712f747130527131752e504b0708ab2ed0551a0200001a020000504b030400"
    "00"
    "08080000000000000000000000000000000000000d002b007265662f627974656f72646572464227005a5a5a5a5a5a"
    "5a"
    "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a6c6974746c65504b0708853de31906"
    "00"
    "000006000000504b0304000008080000000000000000000000000000000000000a0042007265662f646174612f3046"
    "42"
    "3e005a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"
    "5a"
    "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a000000000000803f0000004000004040000080400000a0400000c0400000e0"
    "40"
    "00000041000010410000204100003041504b0708787d663e3000000030000000504b03040000080800000000000000"
    "00"
    "000000000000000000000a0018007265662f646174612f31464214005a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"
    "5a"
    "0300000000000000504b07088ad8adeb0800000008000000504b030400000008000000000000000000000000000000"
    "00"
    "00000a0040007265662f646174612f3246423c005a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"
    "5a"
    "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a504b03040000080800000000000000"
    "00"
    "000000000000000000000a0018007265662f646174612f33464214005a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"
    "5a"
    "00000100020003000400504b070809a331140a0000000a000000504b03040000080800000000000000000000000000"
    "00"
    "000000000a003e007265662f646174612f3446423a005a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"
    "5a"
    "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a383838504b07085f69a4ea03000000"
    "03"
    "000000504b0304000008080000000000000000000000000000000000000b0004007265662f76657273696f6e464200"
    "00"
    "330a504b0708d19e67550200000002000000504b0304000008080000000000000000000000000000000000001a0036"
    "00"
    "7265662f2e646174612f73657269616c697a6174696f6e5f6964464232005a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"
    "5a"
    "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a303630313138393831383737313233"
    "33"
    "323230333037383834383239393937373531323735323533504b07086ef882702800000028000000504b0102000000"
    "00"
    "0808000000000000ab2ed0551a0200001a0200000c00000000000000000000000000000000007265662f646174612e"
    "70"
    "6b6c504b0102000000000808000000000000853de31906000000060000000d000000000000000000000000006a0200"
    "00"
    "7265662f627974656f72646572504b0102000000000808000000000000787d663e30000000300000000a0000000000"
    "00"
    "00000000000000d60200007265662f646174612f30504b01020000000008080000000000008ad8adeb080000000800"
    "00"
    "000a00000000000000000000000000800300007265662f646174612f31504b01020000000000080000000000000000"
    "00"
    "0000000000000000000a00000000000000000000000000d80300007265662f646174612f32504b0102000000000808"
    "00"
    "000000000009a331140a0000000a0000000a00000000000000000000000000400400007265662f646174612f33504b"
    "01"
    "020000000008080000000000005f69a4ea03000000030000000a000000000000000000000000009a0400007265662f"
    "64"
    "6174612f34504b0102000000000808000000000000d19e675502000000020000000b00000000000000000000000000"
    "13"
    "0500007265662f76657273696f6e504b01020000000008080000000000006ef8827028000000280000001a00000000"
    "00"
    "0000000000000000520500007265662f2e646174612f73657269616c697a6174696f6e5f6964504b06062c00000000"
    "00"
    "00001e032d000000000000000000090000000000000009000000000000000e02000000000000f80500000000000050"
    "4b"
    "060700000000060800000000000001000000504b050600000000090009000e020000f80500000000"};

std::string unhex(const char* const* lines, std::size_t count) {
  std::string out;
  for (std::size_t i = 0; i < count; ++i)
    for (const char* p = lines[i]; p[0] && p[1]; p += 2)
      out.push_back(static_cast<char>(std::stoi(std::string(p, 2), nullptr, 16)));
  return out;
}

std::string hex(const std::string& s) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (char c : s) {
    out += kDigits[static_cast<unsigned char>(c) >> 4];
    out += kDigits[static_cast<unsigned char>(c) & 0xF];
  }
  return out.empty() ? "-" : out;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::span<const std::byte> as_bytes(const std::string& s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

std::uint32_t le32(const std::string& s, std::size_t at) {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(s[at + i]);
  return v;
}
std::uint64_t le64(const std::string& s, std::size_t at) {
  return le32(s, at) | std::uint64_t{le32(s, at + 4)} << 32;
}
std::uint16_t le16(const std::string& s, std::size_t at) {
  return static_cast<std::uint16_t>(static_cast<unsigned char>(s[at]) |
                                    static_cast<unsigned char>(s[at + 1]) << 8);
}

// What a failed or finished write leaves in `dir`: no temporary may stay behind.
std::size_t entry_count(const fs::path& dir) {
  return static_cast<std::size_t>(
      std::distance(fs::directory_iterator(dir), fs::directory_iterator()));
}

// Deterministic tensor bytes, shared with tools/interop/check_torch_writer.py: byte k of tensor i
// is (131 k + 17 i + 7) mod 256, masked to 0/1 for bool.
std::string pattern_bytes(std::size_t i, std::uint64_t nbytes, DType dtype) {
  std::string out(nbytes, '\0');
  for (std::uint64_t k = 0; k < nbytes; ++k) {
    auto b = static_cast<unsigned char>((131 * k + 17 * i + 7) & 0xFF);
    if (dtype == DType::kBool) b &= 1;
    out[k] = static_cast<char>(b);
  }
  return out;
}

std::uint64_t tensor_nbytes(const TorchWriteTensor& t) {
  std::uint64_t n = element_size(t.dtype);
  for (auto d : t.shape) n *= static_cast<std::uint64_t>(d);
  return n;
}

// The bytes of `data` (one string per tensor) stored one after another in an input file, and the
// plan of the torch zip at `target` whose tensors read them: the file is written by the executor
// (execute_to_file) as `convert --to torch` writes it.
Result<Plan> pattern_plan(const fs::path& target, const fs::path& input,
                          const std::vector<TorchWriteTensor>& tensors,
                          const std::vector<std::string>& data, bool ordered_dict) {
  TorchWriteOptions options;
  options.ordered_dict = ordered_dict;
  CKPT_ASSIGN_OR_RETURN(options.prefix, torch_archive_name(target));
  CKPT_ASSIGN_OR_RETURN(auto layout, plan_torch_zip(tensors, options));
  std::ofstream in(input, std::ios::binary);
  std::vector<LogicalTensor> logical;
  std::uint64_t at = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    in << data[i];
    LogicalTensor t;
    for (const auto& part : tensors[i].path) t.name += (t.name.empty() ? "" : "/") + part;
    t.source_dtype = t.dtype = tensors[i].dtype;
    t.shape = tensors[i].shape;
    TensorRef ref;
    ref.storage_begin = at;
    ref.storage_nbytes = data[i].size();
    ref.dtype = t.dtype;
    ref.shape = t.shape;
    ref.strides = Shape(t.shape.size(), 1);
    for (std::size_t d = t.shape.size(); d-- > 1;) ref.strides[d - 1] = ref.strides[d] * t.shape[d];
    t.fragments.push_back(Fragment{ref, Shape(t.shape.size(), 0)});
    logical.push_back(std::move(t));
    at += data[i].size();
  }
  in.close();
  Plan plan;
  plan.inputs = {input};
  CKPT_ASSIGN_OR_RETURN(auto file, torch_zip_output_file(target.filename().string(),
                                                         std::move(layout), std::move(logical)));
  plan.files.push_back(std::move(file));
  return plan;
}

// Plans and writes `tensors` holding their pattern bytes to `target`, through windows of
// `window` bytes (ExecOptions::buffer_bytes), the input file kept outside target's directory.
Status write_pattern_file(const fs::path& target, const std::vector<TorchWriteTensor>& tensors,
                          bool ordered_dict, std::size_t window = 64) {
  TempDir inputs("torch_writer_in");
  std::vector<std::string> data;
  for (std::size_t i = 0; i < tensors.size(); ++i)
    data.push_back(pattern_bytes(i, tensor_nbytes(tensors[i]), tensors[i].dtype));
  CKPT_ASSIGN_OR_RETURN(auto plan,
                        pattern_plan(target, inputs.path / "in.bin", tensors, data, ordered_dict));
  ExecOptions options;
  options.buffer_bytes = window;
  return execute_to_file(plan, target, options);
}

TorchWriteTensor tensor(std::string name, DType dtype, Shape shape) {
  return TorchWriteTensor{{std::move(name)}, dtype, std::move(shape)};
}

std::vector<TorchWriteTensor> all_dtype_tensors() {
  const DType dtypes[] = {
      DType::kBool,       DType::kU8,     DType::kI8,       DType::kI16,        DType::kU16,
      DType::kI32,        DType::kU32,    DType::kI64,      DType::kU64,        DType::kF16,
      DType::kBF16,       DType::kF32,    DType::kF64,      DType::kComplex32,  DType::kComplex64,
      DType::kComplex128, DType::kF8E5M2, DType::kF8E4M3FN, DType::kF8E5M2FNUZ, DType::kF8E4M3FNUZ};
  std::vector<TorchWriteTensor> out;
  int n = 0;
  for (DType d : dtypes) {
    std::string name(torch_name(d));
    out.push_back(tensor("w." + name, d, {3, 5 + n % 3}));
    out.push_back(tensor("scalar." + name, d, {}));
    out.push_back(tensor("empty." + name, d, {0, 4}));
    ++n;
  }
  out.push_back(tensor("big", DType::kF32, {300, 70}));        // BININT2 dims
  out.push_back(tensor("huge_dim", DType::kU8, {70000, 1}));   // BININT dims
  out.push_back(tensor("rank4", DType::kBF16, {2, 3, 1, 4}));  // MARK ... TUPLE
  out.push_back(tensor("zero_mid", DType::kF16, {3, 0, 2}));   // strides (2, 2, 1)
  return out;
}

}  // namespace

TEST_CASE("torch_archive_name follows torch's basename rule") {
  CHECK(torch_archive_name("/x/model.pt").value() == "model");
  CHECK(torch_archive_name("pytorch_model.bin").value() == "pytorch_model");
  CHECK(torch_archive_name("/x/a.b.pt").value() == "a.b");
  CHECK(torch_archive_name("/x.y/noext").value() == "noext");
  CHECK(torch_archive_name("/x/\xc3\xa9.pt").value() == "archive");
  CHECK(!torch_archive_name("/x/.pt").ok());
}

TEST_CASE("the file is byte-identical to torch 2.6's torch.save") {
  std::string expected = unhex(kTorchRefHex, std::size(kTorchRefHex));
  TempDir dir("torch_writer");
  fs::path target = dir.path / "ref.pt";
  std::vector<TorchWriteTensor> tensors = {
      tensor("a", DType::kF32, {3, 4}), tensor("b", DType::kI64, {}),
      tensor("c", DType::kBF16, {0, 5}), tensor("d", DType::kU16, {5}),
      tensor("e", DType::kF8E4M3FN, {3})};
  std::string a, b(8, '\0'), d, e(3, '\x38');
  for (int i = 0; i < 12; ++i) {
    float f = static_cast<float>(i);
    a.append(reinterpret_cast<const char*>(&f), 4);
  }
  b[0] = 3;
  for (int i = 0; i < 5; ++i) d += {static_cast<char>(i), '\0'};

  TorchWriteOptions options;
  options.ordered_dict = true;
  options.prefix = torch_archive_name(target).value();
  auto layout = plan_torch_zip(tensors, options);
  REQUIRE(layout.ok());
  CHECK(layout->file_size == expected.size());
  CHECK(layout->tensor_key == std::vector<std::string>{"0", "1", "2", "3", "4"});
  TempDir inputs("torch_writer_in");
  auto plan = pattern_plan(target, inputs.path / "in.bin", tensors, {a, b, "", d, e}, true);
  REQUIRE_MESSAGE(plan.ok(), plan.error().message);
  CHECK(plan->files.front().size() == expected.size());
  for (std::uint64_t window : {64ull, 5ull, 16ull << 20}) {  // windows in pieces, or whole
    ExecOptions exec;
    exec.buffer_bytes = window;
    auto finished = execute_to_file(*plan, target, exec);
    REQUIRE_MESSAGE(finished.ok(), finished.error().message);
  }
  std::string actual = read_file(target);
  REQUIRE(actual.size() == expected.size());
#ifdef __GLIBCXX__
  CHECK(actual == expected);
#else
  // The name half of .data/serialization_id follows the standard library's std::hash.
  CHECK(actual.substr(0, 1300) == expected.substr(0, 1300));
#endif
  CHECK(entry_count(dir.path) == 1);  // no temporary left
}

TEST_CASE("our zip and torch readers read what we write") {
  TempDir dir("torch_writer");
  fs::path target = dir.path / "all.pt";
  auto tensors = all_dtype_tensors();
  auto written = write_pattern_file(target, tensors, false, 13);
  REQUIRE_MESSAGE(written.ok(), written.error().message);
  CHECK(entry_count(dir.path) == 1);

  std::string bytes = read_file(target);
  auto archive = zip::Archive::parse(as_bytes(bytes), target.string());
  REQUIRE_MESSAGE(archive.ok(), archive.error().message);
  // Record order: data.pkl, byteorder, data/<lexicographic>, version, .data/serialization_id.
  const auto& entries = archive->entries();
  REQUIRE(entries.size() == tensors.size() + 4);
  CHECK(entries[0].name == "all/data.pkl");
  CHECK(entries[1].name == "all/byteorder");
  CHECK(entries[2].name == "all/data/0");
  CHECK(entries[3].name == "all/data/1");
  CHECK(entries[4].name == "all/data/10");
  CHECK(entries[entries.size() - 2].name == "all/version");
  CHECK(entries.back().name == "all/.data/serialization_id");
  for (const auto& entry : entries) {
    CHECK(entry.is_stored());
    CHECK(entry.data_offset % 64 == 0);
    std::string data = bytes.substr(entry.data_offset, entry.size);
    CHECK(crc32_update(0, as_bytes(data)) == entry.crc32);
    if (entry.size > 0) {
      CHECK(le32(bytes, entry.data_offset + entry.size) == 0x08074b50u);
      CHECK(le32(bytes, entry.data_offset + entry.size + 4) == entry.crc32);
    }
  }
  CHECK(bytes.substr(archive->find("all/byteorder")->data_offset, 6) == "little");
  CHECK(bytes.substr(archive->find("all/version")->data_offset, 2) == "3\n");

  auto checkpoint = read_torch_file(target);
  REQUIRE_MESSAGE(checkpoint.ok(), checkpoint.error().message);
  REQUIRE(checkpoint->tensors.size() == tensors.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const TorchTensor& t = checkpoint->tensors[i];
    CAPTURE(tensors[i].path[0]);
    CHECK(t.name == tensors[i].path[0]);
    CHECK(t.dtype == tensors[i].dtype);
    CHECK(t.shape == tensors[i].shape);
    CHECK(t.storage_offset == 0);
    const StorageRecord& storage = checkpoint->storages[t.storage];
    CHECK(storage.key == std::to_string(i));
    std::uint64_t nbytes = tensor_nbytes(tensors[i]);
    CHECK(storage.nbytes == nbytes);
    CHECK(bytes.substr(storage.file_offset, nbytes) == pattern_bytes(i, nbytes, tensors[i].dtype));
  }
  const TorchTensor& zero_mid = checkpoint->tensors.back();
  CHECK(zero_mid.strides == Shape{2, 2, 1});
}

TEST_CASE("more than 1000 tensors: SETITEMS batches and LONG_BINPUT memo") {
  TempDir dir("torch_writer");
  fs::path target = dir.path / "many.pt";
  std::vector<TorchWriteTensor> tensors;
  for (int i = 0; i < 2001; ++i)
    tensors.push_back(
        tensor("layer." + std::to_string(i), i % 2 ? DType::kBF16 : DType::kU32, {i % 5}));
  REQUIRE(write_pattern_file(target, tensors, true, 3).ok());
  auto checkpoint = read_torch_file(target);
  REQUIRE_MESSAGE(checkpoint.ok(), checkpoint.error().message);
  REQUIRE(checkpoint->tensors.size() == tensors.size());
  for (std::size_t i = 0; i < tensors.size(); i += 97) {
    CHECK(checkpoint->tensors[i].name == tensors[i].path[0]);
    CHECK(checkpoint->tensors[i].dtype == tensors[i].dtype);
  }
  auto layout = plan_torch_zip(tensors, {});
  REQUIRE(layout.ok());
  const std::string& pickle = layout->pickle;
  CHECK(pickle.find("r\x00\x01\x00\x00", 0) != std::string::npos);  // LONG_BINPUT 256
  // Batches: two MARK..SETITEMS of 1000 and one lone SETITEM; the pickle ends "s." or "u.".
  CHECK(pickle.substr(pickle.size() - 2) == "s.");
}

TEST_CASE("nested dicts are built in first-use order and numbered depth first") {
  std::vector<TorchWriteTensor> tensors = {
      TorchWriteTensor{{"model", "a"}, DType::kF32, {2}},
      TorchWriteTensor{{"optim", "x"}, DType::kF32, {2}},
      TorchWriteTensor{{"model", "b"}, DType::kF32, {2}},
      TorchWriteTensor{{"top"}, DType::kI64, {}},
  };
  auto layout = plan_torch_zip(tensors, {});
  REQUIRE(layout.ok());
  CHECK(layout->tensor_key == std::vector<std::string>{"0", "2", "1", "3"});
  TempDir dir("torch_writer");
  REQUIRE(write_pattern_file(dir.path / "nested.pt", tensors, false).ok());
  auto checkpoint = read_torch_file(dir.path / "nested.pt");
  REQUIRE_MESSAGE(checkpoint.ok(), checkpoint.error().message);
  REQUIRE(checkpoint->tensors.size() == 4);
  CHECK(checkpoint->tensors[0].name == "model.a");
  CHECK(checkpoint->tensors[1].name == "model.b");
  CHECK(checkpoint->tensors[2].name == "optim.x");
  CHECK(checkpoint->tensors[3].name == "top");
}

TEST_CASE("zip64 fields on planned huge sizes") {
  // A 4 GiB + 100 record (never written: only the layout and header bytes are checked), then a
  // small and an empty record whose headers lie past 4 GiB.
  std::vector<TorchWriteTensor> tensors = {tensor("big", DType::kU8, {4294967396LL}),
                                           tensor("after", DType::kF32, {2}),
                                           tensor("empty", DType::kF32, {0})};
  TorchWriteOptions options;
  options.prefix = "big";
  auto layout = plan_torch_zip(tensors, options);
  REQUIRE(layout.ok());
  const auto& records = layout->records;
  const TorchZipRecord& big = records[layout->tensor_record[0]];
  CHECK(big.name == "data/0");
  CHECK(big.zip64_size);
  CHECK(!big.zip64_offset);
  CHECK(big.descriptor_size() == 24);
  CHECK(big.data_offset % 64 == 0);

  // The local header of the verified torch example (torch.md §1.3): big/data/0 right after a
  // 64-aligned data.pkl + byteorder, zip64 extra 01 00 10 00 | size | 0, then FB padding.
  std::string local = torch_zip_local_header(*layout, big);
  CHECK(le32(local, 0) == 0x04034b50u);
  CHECK(le16(local, 6) == 0x0808);
  CHECK(le32(local, 18) == 0);
  CHECK(le32(local, 22) == 0);
  std::size_t name_len = le16(local, 26);
  CHECK(local.substr(30, name_len) == "big/data/0");
  CHECK(le16(local, 28) == local.size() - 30 - name_len);
  std::size_t extra = 30 + name_len;
  CHECK(le16(local, extra) == 0x0001);
  CHECK(le16(local, extra + 2) == 16);
  CHECK(le64(local, extra + 4) == 4294967396ULL);
  CHECK(le64(local, extra + 12) == 0);
  CHECK(local.substr(extra + 20, 2) == "FB");
  CHECK(le16(local, extra + 22) == local.size() - extra - 24);
  CHECK(big.header_offset + local.size() == big.data_offset);

  std::string central = torch_zip_central_entry(*layout, big, 0x12345678u);
  CHECK(le32(central, 16) == 0x12345678u);
  CHECK(le32(central, 20) == 0xFFFFFFFFu);
  CHECK(le32(central, 24) == 0xFFFFFFFFu);
  CHECK(le16(central, 30) == 20);
  CHECK(le32(central, 42) == big.header_offset);
  CHECK(le16(central, 46 + name_len) == 0x0001);
  CHECK(le16(central, 48 + name_len) == 16);
  CHECK(le64(central, 50 + name_len) == 4294967396ULL);
  CHECK(le64(central, 58 + name_len) == 4294967396ULL);

  const TorchZipRecord& after = records[layout->tensor_record[1]];
  CHECK(after.header_offset == big.end());
  CHECK(after.header_offset >= 0xFFFFFFFFULL);
  CHECK(after.zip64_offset);
  CHECK(!after.zip64_size);
  CHECK(after.descriptor_size() == 24);
  local = torch_zip_local_header(*layout, after);
  name_len = le16(local, 26);
  extra = 30 + name_len;
  CHECK(le16(local, extra) == 0x0001);
  CHECK(le16(local, extra + 2) == 8);
  CHECK(le64(local, extra + 4) == after.header_offset);
  CHECK(local.substr(extra + 12, 2) == "FB");
  CHECK(after.data_offset % 64 == 0);
  central = torch_zip_central_entry(*layout, after, 1);
  CHECK(le32(central, 20) == 8);
  CHECK(le32(central, 42) == 0xFFFFFFFFu);
  CHECK(le16(central, 30) == 12);
  CHECK(le64(central, 50 + name_len) == after.header_offset);

  const TorchZipRecord& empty = records[layout->tensor_record[2]];
  CHECK(empty.zip64_offset);
  CHECK(empty.descriptor_size() == 0);
  CHECK(empty.header_offset == after.end());
  CHECK(le16(torch_zip_local_header(*layout, empty), 6) == 0x0800);
  CHECK(layout->central_directory_offset == records.back().end());
}

TEST_CASE("a torch zip is an output file like any other: execute_plan stages and commits it") {
  TempDir dir("torch_writer");
  TempDir inputs("torch_writer_in");
  auto tensors = all_dtype_tensors();
  std::vector<std::string> data;
  for (std::size_t i = 0; i < tensors.size(); ++i)
    data.push_back(pattern_bytes(i, tensor_nbytes(tensors[i]), tensors[i].dtype));
  auto plan =
      pattern_plan(dir.path / "one" / "all.pt", inputs.path / "in.bin", tensors, data, false);
  REQUIRE_MESSAGE(plan.ok(), plan.error().message);
  fs::create_directories(dir.path / "one");
  REQUIRE(execute_to_file(*plan, dir.path / "one" / "all.pt", {}).ok());
  ExecOptions small;
  small.buffer_bytes = 4096;
  fs::create_directories(dir.path / "staged");
  auto manifest = execute_plan(*plan, dir.path / "staged", small);
  REQUIRE_MESSAGE(manifest.ok(), manifest.error().message);
  CHECK(read_file(dir.path / "staged" / "all.pt") == read_file(dir.path / "one" / "all.pt"));
  REQUIRE(manifest->files.size() == 1);
  CHECK(manifest->files[0].tensors.size() == tensors.size());
  auto back = read_torch_file(dir.path / "staged" / "all.pt");
  REQUIRE_MESSAGE(back.ok(), back.error().message);
  CHECK(back->tensors.size() == tensors.size());
}

TEST_CASE("a failed write leaves neither the target nor a temporary; bad targets are named") {
  TempDir dir("torch_writer");
  TempDir inputs("torch_writer_in");
  fs::path target = dir.path / "s.pt";
  std::vector<TorchWriteTensor> tensors = {tensor("a", DType::kF32, {4})};
  auto plan = pattern_plan(target, inputs.path / "in.bin", tensors, {std::string(16, 'x')}, false);
  REQUIRE(plan.ok());
  fs::resize_file(inputs.path / "in.bin", 8);  // the input lost half of the tensor
  auto truncated = execute_to_file(*plan, target, {});
  REQUIRE(!truncated.ok());
  CHECK(entry_count(dir.path) == 0);

  // A temporary that a killed writer left (its lock free) is stale; a live writer's is not.
  std::ofstream(dir.path / ".s.pt.tmp.0000deadbeef") << "x";
  CHECK(remove_stale_temp_files(target) == std::vector<std::string>{".s.pt.tmp.0000deadbeef"});
  CHECK(entry_count(dir.path) == 0);

  std::ofstream(inputs.path / "in.bin") << std::string(16, 'x');  // whole again
  auto missing = execute_to_file(*plan, dir.path / "no" / "such" / "dir.pt", {});
  REQUIRE(!missing.ok());
  CHECK(missing.error().kind == ErrorKind::kIo);
  CHECK(missing.error().message.find("cannot create a temporary file") != std::string::npos);
  std::ofstream(dir.path / "file") << "x";
  auto not_dir = execute_to_file(*plan, dir.path / "file" / "x.pt", {});
  REQUIRE(!not_dir.ok());
  CHECK(entry_count(dir.path) == 1);
  if (::geteuid() != 0) {  // root writes anywhere
    fs::create_directory(dir.path / "ro");
    fs::permissions(dir.path / "ro", fs::perms::owner_read | fs::perms::owner_exec);
    CHECK(!execute_to_file(*plan, dir.path / "ro" / "x.pt", {}).ok());
    CHECK(fs::is_empty(dir.path / "ro"));
  }
}

TEST_CASE("bad tensors give clear errors") {
  auto duplicate =
      plan_torch_zip({tensor("a", DType::kF32, {1}), tensor("a", DType::kF32, {1})}, {});
  REQUIRE(!duplicate.ok());
  CHECK(duplicate.error().message.find("appears twice") != std::string::npos);
  auto conflict = plan_torch_zip(
      {tensor("a", DType::kF32, {1}), TorchWriteTensor{{"a", "b"}, DType::kF32, {1}}}, {});
  REQUIRE(!conflict.ok());
  CHECK(conflict.error().message.find("both a tensor and a dict") != std::string::npos);
  CHECK(!plan_torch_zip({tensor("q", DType::kQInt8, {1})}, {}).ok());
  CHECK(!plan_torch_zip({tensor("n", DType::kF32, {-1})}, {}).ok());
  CHECK(!plan_torch_zip({tensor("\xff", DType::kF32, {1})}, {}).ok());
  CHECK(!plan_torch_zip({TorchWriteTensor{{}, DType::kF32, {1}}}, {}).ok());
  CHECK(!plan_torch_zip({tensor("o", DType::kF64, {1LL << 40, 1LL << 30})}, {}).ok());
}

// Files for tests/interop/test_torch_writer.sh, written when CKPT_TORCH_WRITER_OUT names a
// directory: each case <name>.pt plus a line in cases.txt that check_torch_writer.py reads:
//   <file> <dict|ordered> then per tensor: <hex of the path components joined by
//   0x1F>:<dtype>:<d0,d1,..>
TEST_CASE("write interop cases") {
  const char* out_env = std::getenv("CKPT_TORCH_WRITER_OUT");
  if (!out_env) return;
  fs::path out = out_env;
  std::ofstream cases(out / "cases.txt");
  auto emit = [&](const std::string& file, const std::vector<TorchWriteTensor>& tensors,
                  bool ordered) {
    auto status = write_pattern_file(out / file, tensors, ordered, 4096);
    REQUIRE_MESSAGE(status.ok(), status.error().message);
    cases << file << ' ' << (ordered ? "ordered" : "dict");
    for (const auto& t : tensors) {
      std::string key;
      for (std::size_t k = 0; k < t.path.size(); ++k) key += (k ? "\x1f" : "") + t.path[k];
      cases << ' ' << hex(key) << ':' << torch_name(t.dtype) << ':';
      for (std::size_t k = 0; k < t.shape.size(); ++k) cases << (k ? "," : "") << t.shape[k];
    }
    cases << '\n';
  };
  emit("dtypes.pt", all_dtype_tensors(), true);
  emit("plain_dict.pt", all_dtype_tensors(), false);
  std::vector<TorchWriteTensor> many;
  for (int i = 0; i < 1500; ++i)
    many.push_back(tensor("model.layers." + std::to_string(i) + ".weight",
                          i % 3 ? DType::kBF16 : DType::kF32, {i % 4, 3}));
  emit("many.pt", many, false);
  emit("nested.pt",
       {TorchWriteTensor{{"model", "embed.weight"}, DType::kBF16, {4, 3}},
        TorchWriteTensor{{"optim", "state", "0"}, DType::kF32, {4, 3}},
        TorchWriteTensor{{"model", "norm.weight"}, DType::kBF16, {3}},
        TorchWriteTensor{{"0"}, DType::kI64, {}}, TorchWriteTensor{{"1"}, DType::kI64, {}}},
       false);
  emit("large.pt", {tensor("x", DType::kF32, {1024, 1024, 5}), tensor("y", DType::kU8, {3})}, true);
  // Names with odd characters, and a file name whose archive prefix keeps a dot.
  emit("odd.name.pt",
       {tensor("caf\xc3\xa9.\xe2\x82\xac", DType::kF16, {2}), tensor("", DType::kF16, {2}),
        tensor("with space", DType::kF16, {1})},
       false);
}
