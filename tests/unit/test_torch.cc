#include <doctest/doctest.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "pickle/value.h"
#include "temp_dir.h"
#include "torch/torch_checkpoint.h"
#include "zip/zip_archive.h"

using namespace ckptstream;
namespace fs = std::filesystem;
using ckptstream::testing::TempDir;

namespace {

// ---- a minimal JSON reader for the expected files ------------------------------------------
struct Json {
  enum Type { kNull, kBool, kNumber, kString, kArray, kObject } type = kNull;
  bool b = false;
  double number = 0;
  std::string str;
  std::vector<Json> array;
  std::vector<std::pair<std::string, Json>> object;  // in file order

  const Json& operator[](const std::string& key) const {
    for (const auto& [k, v] : object)
      if (k == key) return v;
    static const Json null;
    return null;
  }
  bool has(const std::string& key) const {
    for (const auto& [k, v] : object)
      if (k == key) return true;
    return false;
  }
  std::vector<std::int64_t> ints() const {
    std::vector<std::int64_t> out;
    for (const auto& v : array) out.push_back(static_cast<std::int64_t>(v.number));
    return out;
  }
};

struct JsonParser {
  const std::string& s;
  std::size_t i = 0;
  void ws() {
    while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  }
  Json parse() {
    ws();
    Json j;
    REQUIRE(i < s.size());
    char c = s[i];
    if (c == '{') {
      j.type = Json::kObject;
      ++i;
      ws();
      if (s[i] == '}') return ++i, j;
      while (true) {
        ws();
        std::string key = parse().str;
        ws();
        REQUIRE(s[i] == ':');
        ++i;
        j.object.emplace_back(key, parse());
        ws();
        if (s[i++] == '}') return j;
      }
    }
    if (c == '[') {
      j.type = Json::kArray;
      ++i;
      ws();
      if (s[i] == ']') return ++i, j;
      while (true) {
        j.array.push_back(parse());
        ws();
        if (s[i++] == ']') return j;
      }
    }
    if (c == '"') {
      j.type = Json::kString;
      ++i;
      while (s[i] != '"') {
        if (s[i] == '\\') ++i;
        j.str.push_back(s[i++]);
      }
      ++i;
      return j;
    }
    if (s.compare(i, 4, "true") == 0) return i += 4, j.type = Json::kBool, j.b = true, j;
    if (s.compare(i, 5, "false") == 0) return i += 5, j.type = Json::kBool, j;
    if (s.compare(i, 4, "null") == 0) return i += 4, j;
    j.type = Json::kNumber;
    std::size_t used = 0;
    j.number = std::stod(s.substr(i, 40), &used);
    i += used;
    return j;
  }
};

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  return std::string(std::istreambuf_iterator<char>(in), {});
}

Json read_json(const fs::path& path) {
  std::string text = read_text(path);
  JsonParser p{text};
  return p.parse();
}

const fs::path kDir = fs::path(CKPT_FIXTURES) / "torch";

// The tensor's elements in row-major order, gathered through its storage offset and strides
// from the file, as contiguous little-endian bytes (hex).
std::string gather_hex(const TorchCheckpoint& ckpt, std::size_t i, const std::string& file) {
  TensorRef r = ckpt.ref(i, 0);
  std::size_t size = element_size(r.dtype);
  bool complex = dtype_info(r.dtype).is_complex;
  std::size_t n = 1;
  for (auto d : r.shape) n *= static_cast<std::size_t>(d);
  std::string out;
  std::vector<std::int64_t> index(r.shape.size(), 0);
  char buf[3];
  for (std::size_t k = 0; k < n; ++k) {
    std::int64_t element = r.offset;
    for (std::size_t d = 0; d < r.shape.size(); ++d) element += index[d] * r.strides[d];
    std::uint64_t at = r.storage_begin + static_cast<std::uint64_t>(element) * size;
    REQUIRE(static_cast<std::uint64_t>(element + 1) * size <= r.storage_nbytes);
    REQUIRE(at + size <= file.size());
    std::string e = file.substr(at, size);
    if (r.byteswap) {
      std::size_t part = complex ? size / 2 : size;
      for (std::size_t p = 0; p < size; p += part)
        std::reverse(e.begin() + static_cast<long>(p), e.begin() + static_cast<long>(p + part));
    }
    for (char c : e) {
      std::snprintf(buf, sizeof buf, "%02x", static_cast<unsigned char>(c));
      out += buf;
    }
    for (std::size_t d = r.shape.size(); d-- > 0;) {
      if (++index[d] < r.shape[d]) break;
      index[d] = 0;
    }
  }
  return out;
}

const char* placement_kind(Placement::Kind k) {
  switch (k) {
    case Placement::Kind::kShard:
      return "Shard";
    case Placement::Kind::kReplicate:
      return "Replicate";
    case Placement::Kind::kPartial:
      return "Partial";
    case Placement::Kind::kStridedShard:
      return "_StridedShard";
    case Placement::Kind::kOther:
      return "?";
  }
  return "?";
}

void check_read(const std::string& name, const Result<TorchCheckpoint>& ckpt);

// Read whole, and streamed (TorchReadOptions::stream_items): the same tensors, those torch wrote.
void check_fixture(const std::string& name) {
  CAPTURE(name);
  auto whole = read_torch_file(kDir / name);
  check_read(name, whole);
  TorchReadOptions streaming;
  streaming.stream_items = true;
  auto pending = PendingTorchFile::open(kDir / name, streaming);
  REQUIRE(pending.ok());
  INFO("streamed");
  auto streamed = std::move(*pending).read();
  check_read(name, streamed);
  // It was streamed (zip files only): the saved dict's items went to the collector, not the dict.
  if (whole->format == TorchCheckpoint::Format::kZip && whole->root->is(pickle::Kind::kDict)) {
    CHECK(!whole->root->entries().empty());
    CHECK(streamed->root->entries().empty());
  }
}

void check_read(const std::string& name, const Result<TorchCheckpoint>& ckpt) {
  REQUIRE_MESSAGE(ckpt.ok(), (ckpt.ok() ? "" : ckpt.error().message));
  Json expected = read_json(kDir / (name + ".json"));
  std::string file = read_text(kDir / name);
  CHECK(ckpt->format == (expected["format"].str == "zip" ? TorchCheckpoint::Format::kZip
                                                         : TorchCheckpoint::Format::kLegacy));
  CHECK(ckpt->big_endian == expected["big_endian"].b);
  const auto& tensors = expected["tensors"].object;
  REQUIRE(ckpt->tensors.size() == tensors.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto& [tname, e] = tensors[i];
    const TorchTensor& t = ckpt->tensors[i];
    CAPTURE(tname);
    CHECK(t.name == tname);
    CHECK(torch_name(t.dtype) == e["dtype"].str);
    CHECK(t.shape == e["shape"].ints());
    CHECK(t.strides == e["stride"].ints());
    CHECK(t.storage_offset == static_cast<std::int64_t>(e["storage_offset"].number));
    CHECK(t.requires_grad == e["requires_grad"].b);
    CHECK(t.is_parameter == e["is_parameter"].b);
    CHECK(t.subclass == e["subclass"].str);
    CHECK(t.conj == e["conj"].b);
    CHECK(t.neg == e["neg"].b);
    CHECK(gather_hex(*ckpt, i, file) == e["hex"].str);
    CHECK(t.dtensor.has_value() == e.has("dtensor"));
    if (t.dtensor && e.has("dtensor")) {
      const Json& d = e["dtensor"];
      CHECK(t.dtensor->global_shape == d["global_shape"].ints());
      CHECK(t.dtensor->global_stride == d["global_stride"].ints());
      CHECK(t.dtensor->mesh->ranks == d["mesh"].ints());
      CHECK(t.dtensor->mesh->shape == d["mesh_shape"].ints());
      CHECK(t.dtensor->mesh->device_type == d["device_type"].str);
      std::vector<std::string> names;
      for (const auto& n : d["dim_names"].array) names.push_back(n.str);
      CHECK(t.dtensor->mesh->dim_names == names);
      REQUIRE(t.dtensor->placements.size() == d["placements"].array.size());
      for (std::size_t p = 0; p < t.dtensor->placements.size(); ++p) {
        const Json& ep = d["placements"].array[p];
        const Placement& got = t.dtensor->placements[p];
        CHECK(placement_kind(got.kind) == ep["kind"].str);
        if (ep.has("dim")) CHECK(got.dim == static_cast<std::int64_t>(ep["dim"].number));
        if (ep.has("reduce_op")) CHECK(got.reduce_op == ep["reduce_op"].str);
      }
    }
  }
}

// ---- bad inputs, made by mutating good fixtures in a temp dir --------------------------------
void replace_all(std::string& s, const std::string& from, const std::string& to) {
  REQUIRE(from.size() == to.size());
  std::size_t n = 0;
  for (auto at = s.find(from); at != std::string::npos; at = s.find(from, at + 1), ++n)
    s.replace(at, from.size(), to);
  REQUIRE(n > 0);
}

std::string read_error(const fs::path& path) {
  auto r = read_torch_file(path);
  REQUIRE(!r.ok());
  CHECK(r.error().message.rfind(path.string() + ": ", 0) == 0);  // names the file
  return r.error().message;
}

// A fixed-seed generator, so that a failing mutation is the same on every run.
struct Lcg {
  std::uint64_t seed;
  std::uint64_t operator()() {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    return seed >> 33;
  }
};

std::uint64_t data_offset(const std::string& bytes, const std::string& entry) {
  auto archive = zip::Archive::parse(
      std::span(reinterpret_cast<const std::byte*>(bytes.data()), bytes.size()), "x");
  REQUIRE(archive.ok());
  REQUIRE(archive->find(entry));
  return archive->find(entry)->data_offset;
}

}  // namespace

TEST_CASE("every dtype torch can save") {
  check_fixture("dtypes.pt");
}
TEST_CASE("views, shared storages, one tensor under two names, conj/neg bits") {
  check_fixture("views.pt");
}
TEST_CASE("nested state: module state_dict, optimizer, lists, objects (pickle protocol 2)") {
  check_fixture("module_p2.pt");
}
TEST_CASE("pickle protocol 4") {
  check_fixture("module_p4.pt");
}
TEST_CASE("pickle protocol 5") {
  check_fixture("module_p5.pt");
}
TEST_CASE("parameters, requires_grad and a tensor subclass") {
  check_fixture("params.pt");
}
TEST_CASE("legacy (non-zip) format") {
  check_fixture("legacy.pt");
}
TEST_CASE("big-endian archive") {
  check_fixture("big_endian.pt");
}
TEST_CASE("DTensor shards of two ranks") {
  check_fixture("dtensor_rank0.pt");
  check_fixture("dtensor_rank1.pt");
}

TEST_CASE("details of the flattened names and the root object") {
  auto ckpt = read_torch_file(kDir / "module_p2.pt");
  REQUIRE(ckpt.ok());
  std::vector<std::string> names;
  for (const auto& t : ckpt->tensors) names.push_back(t.name);
  CHECK(names.front() == "model.0.weight");
  CHECK(std::find(names.begin(), names.end(), "optim.state.0.exp_avg") != names.end());
  CHECK(std::find(names.begin(), names.end(), "obj.inner.b") != names.end());
  REQUIRE(ckpt->root);
  auto model = ckpt->root->find("model");
  REQUIRE(model);
  CHECK(model->is(pickle::Kind::kDict));       // an OrderedDict
  CHECK(model->attr("_metadata") != nullptr);  // BUILD attributes kept aside, not flattened
  auto views = read_torch_file(kDir / "views.pt");
  REQUIRE(views.ok());
  CHECK(views->tensors[0].storage == views->tensors[1].storage);  // w and w.t()
  TensorRef r = views->ref(1, 3);
  CHECK(r.input == 3);
  CHECK(r.shape == Shape{6, 8});
  CHECK(r.strides == Shape{1, 6});
  CHECK(r.storage_nbytes == 8 * 6 * 4);
  CHECK(r.storage_begin % 64 == 0);
  CHECK(!r.byteswap);
}

TEST_CASE("bad inputs give clear errors naming the file and the problem") {
  TempDir dir("torch");
  std::string views = read_text(kDir / "views.pt");

  SUBCASE("truncated zip") {
    auto p = dir.write("truncated.pt", views.substr(0, views.size() / 2));
    CHECK(read_error(p).find("zip: no end-of-central-directory record") != std::string::npos);
  }
  SUBCASE("corrupt central directory") {
    std::string bad = views;
    auto cd = bad.find("PK\x01\x02");
    REQUIRE(cd != std::string::npos);
    bad[cd + 3] = 'X';
    CHECK(read_error(dir.write("corrupt.pt", bad)).find("corrupt") != std::string::npos);
  }
  SUBCASE("compressed entry") {
    std::string bad = views;
    auto cd = bad.find("PK\x01\x02");
    REQUIRE(bad.compare(cd + 46, 14, "views/data.pkl") == 0);
    bad[cd + 10] = 8;  // method DEFLATE
    std::string e = read_error(dir.write("compressed.pt", bad));
    CHECK(e.find("entry 'views/data.pkl' is compressed (method 8)") != std::string::npos);
  }
  SUBCASE("TorchScript-like archive") {
    std::string bad = views;
    replace_all(bad, "views/byteorder", "views/code/abcd");
    CHECK(read_error(dir.write("script.pt", bad)).find("TorchScript archive") != std::string::npos);
  }
  SUBCASE("unknown pickle opcode") {
    std::string bad = views;
    auto at = data_offset(bad, "views/data.pkl");
    bad[at + 2] = '\xff';
    CHECK(read_error(dir.write("opcode.pt", bad))
              .find("data.pkl: pickle: unknown opcode 0xff at offset 2") != std::string::npos);
  }
  SUBCASE("missing storage record") {
    std::string bad = views;
    replace_all(bad, "views/data/0", "views/data/X");
    CHECK(read_error(dir.write("missing.pt", bad))
              .find("storage '0': record views/data/0 is missing") != std::string::npos);
  }
  SUBCASE("shape reaching past the storage") {
    std::string bad = views;
    auto at = bad.find(std::string("K\x08K\x06\x86", 5));  // w's size (8, 6)
    REQUIRE(at != std::string::npos);
    bad[at + 1] = '\x09';
    std::string e = read_error(dir.write("view.pt", bad));
    CHECK(e.find("tensor 'w': view (offset 0, size [9, 6], stride [6, 1]) reaches past storage "
                 "'0' of 48 float32 elements") != std::string::npos);
  }
  SUBCASE("storage record size disagreeing with the persistent id") {
    std::string bad = views;
    auto at = bad.find(std::string("K\x30t", 3));  // numel 48 of storage '0'
    REQUIRE(at != std::string::npos);
    bad[at + 1] = '\x31';
    CHECK(read_error(dir.write("numel.pt", bad)).find("holds 192 bytes") != std::string::npos);
  }
  SUBCASE("legacy file truncated in the storages") {
    std::string legacy = read_text(kDir / "legacy.pt");
    auto p = dir.write("legacy_cut.pt", legacy.substr(0, legacy.size() - 2));
    std::string e = read_error(p);
    CHECK(e.find("runs past the end of the file") != std::string::npos);
    CHECK(e.find("truncated") != std::string::npos);
    // Cut inside a storage's element count.
    p = dir.write("legacy_cut2.pt", legacy.substr(0, legacy.size() - 10));
    CHECK(read_error(p).find("element count at offset") != std::string::npos);
  }
  SUBCASE("not a checkpoint, old formats") {
    CHECK(read_error(dir.write("text.pt", "hello world")).find("not a torch.save") !=
          std::string::npos);
    CHECK(read_error(dir.write("p1.pt", "PYTORCH1....")).find("PYTORCH1") != std::string::npos);
    std::string tar(512, '\0');
    tar.replace(257, 5, "ustar");
    CHECK(read_error(dir.write("tar.pt", tar)).find("tar-based") != std::string::npos);
    CHECK(read_error(dir.write("pickle.pt", "\x80\x02K\x01.")).find("magic") != std::string::npos);
  }
  SUBCASE("every truncation of a zip and of a legacy file fails cleanly") {
    std::string legacy = read_text(kDir / "legacy.pt");
    for (const std::string* src : {&views, &legacy})
      for (std::size_t n = 0; n < src->size(); n += 97) {
        auto p = dir.write("cut.pt", src->substr(0, n));
        CHECK(!read_torch_file(p).ok());
      }
  }
}

TEST_CASE("random byte mutations of fixtures never crash") {
  TempDir dir("torch");
  Lcg next{12345};
  for (const char* name : {"views.pt", "legacy.pt", "dtensor_rank0.pt", "module_p4.pt"}) {
    std::string good = read_text(kDir / name);
    for (int round = 0; round < 150; ++round) {
      std::string bad = good;
      for (int k = 0; k < 4; ++k) bad[next() % bad.size()] = static_cast<char>(next() & 0xFF);
      auto p = dir.write("mutated.pt", bad);
      auto r = read_torch_file(p);  // either outcome is fine; crashing is not
      if (!r.ok()) CHECK(!r.error().message.empty());
    }
  }
}

TEST_CASE("read in two steps: the same checkpoint, errors naming the file at either step") {
  for (const char* name : {"views.pt", "dtypes.pt", "legacy.pt", "dtensor_rank1.pt"}) {
    INFO(name);
    if (!fs::exists(kDir / name)) continue;
    auto whole = read_torch_file(kDir / name);
    REQUIRE_MESSAGE(whole.ok(), whole.error().message);
    auto pending = PendingTorchFile::open(kDir / name);
    REQUIRE(pending.ok());
    auto stepped = std::move(*pending).read();
    REQUIRE_MESSAGE(stepped.ok(), stepped.error().message);
    REQUIRE(stepped->tensors.size() == whole->tensors.size());
    for (std::size_t i = 0; i < whole->tensors.size(); ++i) {
      const auto& a = whole->tensors[i];
      const auto& b = stepped->tensors[i];
      CHECK(a.name == b.name);
      CHECK(a.shape == b.shape);
      CHECK(a.strides == b.strides);
      CHECK(whole->ref(i, 0).storage_begin == stepped->ref(i, 0).storage_begin);
    }
  }
  TempDir dir("torch");
  std::string views = read_text(kDir / "views.pt");
  // Step 1 fails on a broken zip; step 2 on a broken pickle.
  auto truncated = dir.write("t.pt", views.substr(0, views.size() / 2));
  auto opened = PendingTorchFile::open(truncated);
  REQUIRE(!opened.ok());
  CHECK(opened.error().message.rfind(truncated.string() + ": ", 0) == 0);
  std::string bad = views;
  auto pkl = data_offset(views, "views/data.pkl");
  bad[pkl + 2] = '\xff';  // an unknown opcode right after PROTO
  auto broken = dir.write("b.pt", bad);
  auto pending = PendingTorchFile::open(broken);
  REQUIRE(pending.ok());
  auto read = std::move(*pending).read();
  REQUIRE(!read.ok());
  CHECK(read.error().message.rfind(broken.string() + ": ", 0) == 0);
  CHECK(read.error().message.find("unknown opcode") != std::string::npos);
}

TEST_CASE("a streamed read falls back to the whole graph where streaming cannot follow Python") {
  // views.pt with its key 'b' renamed 'a': the dict keeps the first position of 'a' and the last
  // value, which a streamed read, having handed the first 'a' over, cannot undo.
  TempDir dir("torch");
  std::string bytes = read_text(kDir / "views.pt");
  replace_all(bytes,
              std::string("X\x01\x00\x00\x00"
                          "b",
                          6),
              std::string("X\x01\x00\x00\x00"
                          "a",
                          6));
  auto path = dir.write("dup.pt", bytes);
  auto whole = read_torch_file(path);
  REQUIRE_MESSAGE(whole.ok(), whole.error().message);
  TorchReadOptions streaming;
  streaming.stream_items = true;
  auto pending = PendingTorchFile::open(path, streaming);
  REQUIRE(pending.ok());
  auto streamed = std::move(*pending).read();
  REQUIRE_MESSAGE(streamed.ok(), streamed.error().message);
  std::vector<std::string> names;
  for (const auto& t : whole->tensors) names.push_back(t.name);
  CHECK(std::count(names.begin(), names.end(), "a") == 1);
  CHECK(std::count(names.begin(), names.end(), "b") == 0);
  auto original = read_torch_file(kDir / "views.pt");
  REQUIRE(original.ok());
  CHECK(whole->tensors.size() + 1 == original->tensors.size());
  REQUIRE(streamed->tensors.size() == whole->tensors.size());
  for (std::size_t i = 0; i < whole->tensors.size(); ++i) {
    CAPTURE(i);
    CHECK(streamed->tensors[i].name == whole->tensors[i].name);
    CHECK(streamed->tensors[i].shape == whole->tensors[i].shape);
    CHECK(streamed->ref(i, 0).storage_begin == whole->ref(i, 0).storage_begin);
    CHECK(streamed->tensors[i].storage_offset == whole->tensors[i].storage_offset);
  }
  // 'a' holds what 'b' held.
  std::size_t a =
      static_cast<std::size_t>(std::find(names.begin(), names.end(), "a") - names.begin());
  std::size_t b_orig = 0;
  while (original->tensors[b_orig].name != "b") ++b_orig;
  CHECK(whole->tensors[a].shape == original->tensors[b_orig].shape);
  CHECK(whole->ref(a, 0).storage_begin == original->ref(b_orig, 0).storage_begin);
  CHECK(whole->tensors[a].storage_offset == original->tensors[b_orig].storage_offset);
}

TEST_CASE("mutated pickles: a streamed read ends as the whole-graph read does, never crashing") {
  TempDir dir("torch");
  Lcg next{777};
  TorchReadOptions streaming;
  streaming.stream_items = true;
  for (const char* name : {"views.pt", "dtensor_rank0.pt", "module_p2.pt", "module_p4.pt"}) {
    INFO(name);
    std::string good = read_text(kDir / name);
    auto archive = zip::Archive::parse(
        std::span(reinterpret_cast<const std::byte*>(good.data()), good.size()), name);
    REQUIRE(archive.ok());
    const zip::Entry* pkl = nullptr;
    for (const auto& e : archive->entries())
      if (e.name.ends_with("/data.pkl")) pkl = &e;
    REQUIRE(pkl);
    for (int round = 0; round < 200; ++round) {
      std::string bad = good;
      for (int k = 0; k < 2; ++k)
        bad[pkl->data_offset + next() % pkl->size] = static_cast<char>(next() & 0xFF);
      auto path = dir.write("mutated.pt", bad);
      auto whole = read_torch_file(path);
      auto pending = PendingTorchFile::open(path, streaming);
      REQUIRE(pending.ok());  // the zip is intact; only data.pkl changed
      auto streamed = std::move(*pending).read();
      CAPTURE(round);
      REQUIRE(streamed.ok() == whole.ok());
      if (!whole.ok()) {
        CHECK(streamed.error().message == whole.error().message);
        continue;
      }
      REQUIRE(streamed->tensors.size() == whole->tensors.size());
      for (std::size_t i = 0; i < whole->tensors.size(); ++i) {
        CHECK(streamed->tensors[i].name == whole->tensors[i].name);
        CHECK(streamed->tensors[i].shape == whole->tensors[i].shape);
        CHECK(streamed->tensors[i].strides == whole->tensors[i].strides);
        CHECK(streamed->tensors[i].dtype == whole->tensors[i].dtype);
        CHECK(streamed->ref(i, 0).storage_begin == whole->ref(i, 0).storage_begin);
      }
    }
  }
}

TEST_CASE("shared containers: walked once, refused when they hold tensors, bounded work") {
  // tools/fixtures/make_hostile_fixtures.py: files real torch writes and reads.
  const fs::path hostile = fs::path(CKPT_FIXTURES) / "hostile";
  struct Case {
    const char* file;
    const char* error;  // empty: reads fine
    std::size_t tensors;
    std::vector<std::string> names = {};
  };
  for (const Case& c : {
           // 10^20 paths to one tensor: the second path to the shared dict is refused.
           Case{"shared_dicts_20.pt",
                "are one and the same container holding tensors: a state dict never shares "
                "containers",
                0},
           // The same shape without a tensor: every dict walked once, nothing found.
           Case{"shared_dicts_empty.pt", "", 0},
           Case{"shared_state_dict.pt",
                "'ema' and 'model' are one and the same container holding tensors", 0},
           // A 200 000-character key fetched from the memo at 150 levels: 2.2 GB of paths.
           Case{"shared_long_key.pt", "-byte pickle (containers or names repeated over and over)",
                0},
           Case{"non_utf8_key.pt", "", 2},
           // A list holding a tensor and itself: the cycle is walked past, as Python would.
           Case{"cyclic.pt", "", 2, {"l.0", "w"}},
       }) {
    CAPTURE(c.file);
    for (bool streamed : {false, true}) {
      CAPTURE(streamed);
      TorchReadOptions options;
      options.stream_items = streamed;
      auto pending = PendingTorchFile::open(hostile / c.file, options);
      REQUIRE_MESSAGE(pending.ok(), pending.error().message);
      auto read = std::move(*pending).read();
      if (*c.error == '\0') {
        REQUIRE_MESSAGE(read.ok(), read.error().message);
        CHECK(read->tensors.size() == c.tensors);
        if (!c.names.empty()) {
          std::vector<std::string> names;
          for (const auto& t : read->tensors) names.push_back(t.name);
          CHECK(names == c.names);
        }
        continue;
      }
      REQUIRE(!read.ok());
      CHECK(read.error().kind == ErrorKind::kInvalidInput);
      CHECK(read.error().message.find(c.error) != std::string::npos);
      CHECK(read.error().message.size() < 2000);  // names in messages are shortened
    }
  }
}
