// DCP .metadata parsing and .distcp item access (src/dcp), on pickles written by real torch
// (tests/fixtures/dcp/<case>/.metadata, tools/fixtures/make_dcp_fixtures.py) and on synthetic
// pickles with the class paths and enum forms of other torch / Python versions
// (tests/fixtures/dcp/synthetic/).
#include <doctest/doctest.h>

#include "temp_dir.h"

#include <unistd.h>
#include <filesystem>
#include <fstream>
#include <string>

#include "dcp/dcp_item.h"
#include "dcp/dcp_metadata.h"
#include "io/input_file.h"

using namespace ckptstream;
using namespace ckptstream::dcp;
namespace fs = std::filesystem;

namespace {

const fs::path kFixtures = fs::path(CKPT_FIXTURES) / "dcp";

using testing::TempDir;
using testing::write_file;

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

Result<Metadata> parse_file(const fs::path& path) {
  std::string bytes = read_file(path);
  return parse_metadata(std::as_bytes(std::span(bytes.data(), bytes.size())), path.string());
}

Result<Metadata> parse_text(const std::string& bytes) {
  return parse_metadata(std::as_bytes(std::span(bytes.data(), bytes.size())), "test.metadata");
}

const StateDictEntry* entry(const Metadata& md, const std::string& fqn) {
  for (const auto& e : md.entries)
    if (e.fqn == fqn) return &e;
  return nullptr;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// The synthetic pickles describe the same checkpoint in every spelling.
void check_synthetic(const Metadata& md) {
  REQUIRE(md.entries.size() == 3);
  CHECK(md.entries[0].fqn == "model.embed_tokens.weight");
  CHECK(md.entries[1].fqn == "step");
  CHECK(md.entries[2].fqn == "lm_head.weight");
  const auto& emb = md.entries[0];
  CHECK(emb.kind == StateDictEntry::Kind::kTensor);
  CHECK(emb.dtype == DType::kBF16);
  CHECK(emb.size == Shape{5, 4});
  REQUIRE(emb.chunks.size() == 2);
  CHECK(emb.chunks[1].offsets == Shape{3, 0});
  CHECK(emb.chunks[1].sizes == Shape{2, 4});
  CHECK(md.entries[1].kind == StateDictEntry::Kind::kBytes);
  CHECK(md.entries[2].dtype == DType::kF32);
  // Each item with its chunk or byte entry; none left over.
  CHECK(md.entries[0].chunks[0].storage.has_value());
  CHECK(md.entries[0].chunks[1].storage.has_value());
  CHECK(md.entries[1].storage.has_value());
  REQUIRE(md.entries[2].chunks.size() == 1);
  CHECK(md.entries[2].chunks[0].storage.has_value());
  CHECK(md.other_storage.empty());
  const StorageInfo* second = md.find("model.embed_tokens.weight", Shape{3, 0});
  REQUIRE(second);
  CHECK(second->relative_path == "__1_0.distcp");
  CHECK(second->offset == 0);
  CHECK(second->length == 650);
  CHECK(second->transforms.empty());
  const StorageInfo* step = md.find("step", std::nullopt);  // byte item: no offset in its key
  REQUIRE(step);
  CHECK(step->offset == 700);
  CHECK(step->length == 400);
  CHECK(!md.find("step", Shape{}));
  CHECK(!md.find("model.embed_tokens.weight", Shape{2, 0}));
  REQUIRE(md.planner_paths.size() == 3);
  CHECK(md.planner_paths[0].second == std::vector<std::string>{"model.embed_tokens.weight"});
}

}  // namespace

TEST_CASE("metadata: torch 1.13 class paths, protocol 2, getattr(Enum, 'NAME') enums") {
  auto md = parse_file(kFixtures / "synthetic" / "v113_p2.metadata");
  REQUIRE_MESSAGE(md.ok(), md.error().message);
  check_synthetic(*md);
  CHECK(md->class_name == "Metadata");
  CHECK(md->version.empty());
}

TEST_CASE("metadata: torch 2.x paths, protocol 4, Enum(value), extra fields and PosixPath") {
  auto md = parse_file(kFixtures / "synthetic" / "v2x_p4.metadata");
  REQUIRE_MESSAGE(md.ok(), md.error().message);
  check_synthetic(*md);
  CHECK(md->version == "1.0.0");
}

TEST_CASE("metadata written by torch 2.6 (protocol 4): nested app state with optimizer") {
  auto md = read_metadata(kFixtures / "nested_w2");
  REQUIRE_MESSAGE(md.ok(), md.error().message);
  const auto* emb = entry(*md, "model.model.embed_tokens.weight");
  REQUIRE(emb);
  CHECK(emb->size == Shape{37, 14});
  REQUIRE(emb->chunks.size() == 2);
  CHECK(emb->chunks[0].sizes == Shape{19, 14});
  CHECK(emb->chunks[1].offsets == Shape{19, 0});
  const StorageInfo* info = md->find("model.model.embed_tokens.weight", Shape{19, 0});
  REQUIRE(info);
  CHECK(info->relative_path == "__1_0.distcp");
  CHECK(info->transforms.empty());
  CHECK(entry(*md, "optim.state.1.exp_avg") != nullptr);
  bool has_bytes = false;
  for (const auto& e : md->entries) has_bytes = has_bytes || e.kind == StateDictEntry::Kind::kBytes;
  CHECK(has_bytes);  // optimizer param_groups hyper-parameters
  CHECK(md->find("optim.param_groups.0.lr", std::nullopt) != nullptr);
}

TEST_CASE("metadata written by torch 2.14 under Python 3.14 (protocol 5, pathlib._local)") {
  std::string bytes = read_file(kFixtures / "sid_plain_w2" / ".metadata");
  REQUIRE(bytes.size() > 2);
  CHECK(static_cast<unsigned char>(bytes[1]) == 5);
  auto md = read_metadata(kFixtures / "sid_plain_w2");
  REQUIRE_MESSAGE(md.ok(), md.error().message);
  CHECK(md->version == "1.0.0");
  const auto* q = entry(*md, "model.layers.0.self_attn.k_proj.weight");
  REQUIRE(q);
  CHECK(q->size == Shape{6, 14});
  CHECK(q->chunks.size() == 2);
}

TEST_CASE("metadata: zstd items carry transform descriptors") {
  auto md = read_metadata(kFixtures / "zstd_w2");
  REQUIRE_MESSAGE(md.ok(), md.error().message);
  const StorageInfo* info = md->find("model.lm_head.weight", Shape{0, 0});
  REQUIRE(info);
  CHECK(info->transforms == std::vector<std::string>{"stream.zstd/1"});
}

TEST_CASE("transform descriptors: only stream.zstd with major version 1") {
  CHECK(check_transforms({}).ok());
  CHECK(check_transforms({"stream.zstd/1"}).ok());
  CHECK(check_transforms({"stream.zstd/1.1"}).ok());
  auto rot13 = check_transforms({"stream.rot13/1"});
  REQUIRE(!rot13.ok());
  CHECK(rot13.error().kind == ErrorKind::kUnsupported);
  CHECK(contains(rot13.error().message, "unknown stream transform 'stream.rot13/1'"));
  auto v2 = check_transforms({"stream.zstd/2"});
  REQUIRE(!v2.ok());
  CHECK(contains(v2.error().message, "version 2"));
  CHECK(!check_transforms({"stream.zstd"}).ok());
}

TEST_CASE("corrupt metadata: truncated, garbage, or not a Metadata object") {
  std::string good = read_file(kFixtures / "nested_w2" / ".metadata");
  auto truncated = parse_text(good.substr(0, good.size() / 2));
  REQUIRE(!truncated.ok());
  CHECK(contains(truncated.error().message, "test.metadata: pickle:"));
  auto garbage = parse_text("this is not a pickle at all");
  REQUIRE(!garbage.ok());
  CHECK(contains(garbage.error().message, "test.metadata"));
  auto empty = parse_text("");
  REQUIRE(!empty.ok());
  // pickle.dumps({"a": 1}, protocol=2)
  auto dict =
      parse_text(std::string("\x80\x02}q\x00X\x01\x00\x00\x00"
                             "aq\x01K\x01s.",
                             17));
  REQUIRE(!dict.ok());
  CHECK(contains(dict.error().message, "not a DCP Metadata pickle"));

  TempDir tmp("missing");
  auto missing = read_metadata(tmp.path);
  REQUIRE(!missing.ok());
  CHECK(contains(missing.error().message, ".metadata"));
}

TEST_CASE("items: a chunk is a TensorRef into its .distcp file, in place") {
  auto md = read_metadata(kFixtures / "nested_w2");
  REQUIRE(md.ok());
  const auto* emb = entry(*md, "model.model.embed_tokens.weight");
  REQUIRE(emb);
  const StorageInfo* info = md->find(emb->fqn, emb->chunks[1].offsets);
  REQUIRE(info);
  TempDir scratch("scratch");
  ItemReader reader(kFixtures / "nested_w2", scratch.path);
  auto loc = reader.tensor_chunk(*emb, emb->chunks[1], *info);
  REQUIRE_MESSAGE(loc.ok(), loc.error().message);
  CHECK(loc->file == kFixtures / "nested_w2" / "__1_0.distcp");
  CHECK(loc->ref.dtype == DType::kF32);
  CHECK(loc->ref.shape == Shape{18, 14});
  CHECK(loc->ref.strides == Shape{14, 1});
  CHECK(loc->ref.offset == 0);
  CHECK(loc->ref.storage_nbytes == 18 * 14 * 4);
  // The storage lies inside the item, 64-byte aligned relative to the item start.
  CHECK(loc->ref.storage_begin > info->offset);
  CHECK(loc->ref.storage_begin + loc->ref.storage_nbytes <= info->offset + info->length);
  CHECK((loc->ref.storage_begin - info->offset) % 64 == 0);
  CHECK(fs::is_empty(scratch.path));  // nothing decoded

  // The metadata and the item must agree on dtype and shape.
  StateDictEntry wrong = *emb;
  wrong.dtype = DType::kBF16;
  auto dtype = reader.tensor_chunk(wrong, emb->chunks[1], *info);
  REQUIRE(!dtype.ok());
  CHECK(contains(dtype.error().message, "the chunk is float32, but the metadata says bfloat16"));
  ChunkMeta other = emb->chunks[1];
  other.sizes = {17, 14};
  auto shape = reader.tensor_chunk(*emb, other, *info);
  REQUIRE(!shape.ok());
  CHECK(contains(shape.error().message, "'model.model.embed_tokens.weight'"));
  CHECK(contains(shape.error().message, "shape (18, 14)"));
}

namespace {

// What this process has read through read(2) and pread(2) so far (/proc/self/io).
struct ReadCount {
  std::uint64_t bytes = 0;  // rchar
  std::uint64_t calls = 0;  // syscr
};

ReadCount reads_so_far() {
  std::ifstream io("/proc/self/io");
  ReadCount count;
  std::string key;
  std::uint64_t value = 0;
  while (io >> key >> value) {
    if (key == "rchar:") count.bytes = value;
    if (key == "syscr:") count.calls = value;
  }
  REQUIRE(count.calls > 0);
  return count;
}

bool mapped_in_this_process(const fs::path& file) {
  std::ifstream maps("/proc/self/maps");
  const std::string name = fs::canonical(file).string();
  for (std::string line; std::getline(maps, line);)
    if (line.size() >= name.size() &&
        line.compare(line.size() - name.size(), name.size(), name) == 0)
      return true;
  return false;
}

}  // namespace

TEST_CASE("items: two reads each (the item's two ends), never a mapping") {
  // A mapping of the .distcp file made every header read fault in the cached tensor bytes around
  // it (216 MB of RSS in a 1 GB merge); one read per zip record made 8 million reads for the
  // 726 000 items of a DeepSeek-V3-sized checkpoint. The metadata lies at the item's two ends.
  auto md = read_metadata(kFixtures / "nested_w2");
  REQUIRE(md.ok());
  std::size_t items = 0;
  for (const auto& e : md->entries) {
    if (e.kind != StateDictEntry::Kind::kTensor) continue;
    for (const auto& chunk : e.chunks) {
      CAPTURE(e.fqn);
      ++items;
      const StorageInfo* info = md->find(e.fqn, chunk.offsets);
      REQUIRE(info);
      const fs::path distcp = kFixtures / "nested_w2" / info->relative_path;
      TempDir scratch("scratch");
      ItemReader reader(kFixtures / "nested_w2", scratch.path);
      const ReadCount start = reads_so_far();
      const ReadCount probe = reads_so_far();  // what one look at /proc/self/io costs
      auto loc = reader.tensor_chunk(e, chunk, *info);
      const ReadCount end = reads_so_far();
      REQUIRE_MESSAGE(loc.ok(), loc.error().message);
      const std::uint64_t calls = end.calls - start.calls - 2 * (probe.calls - start.calls);
      const std::uint64_t bytes = end.bytes - start.bytes - 2 * (probe.bytes - start.bytes);
      CHECK(calls >= 1);
      CHECK(calls <= 2);
      // (+ 16: /proc/self/io's text, read by each probe, grows as its counters gain digits)
      CHECK(bytes <= std::min<std::uint64_t>(info->length, 2 * 4096) + 16);
      CHECK(!mapped_in_this_process(distcp));  // the reader still holds the file open
    }
  }
  CHECK(items > 20);
  const fs::path distcp = kFixtures / "nested_w2" / "__0_0.distcp";
  // The probe sees a mapping when there is one.
  auto file = InputFile::open(distcp);
  REQUIRE(file.ok());
  REQUIRE(file->mapped().ok());
  CHECK(mapped_in_this_process(distcp));
}

TEST_CASE("items: zstd items are decoded into the scratch directory") {
  auto md = read_metadata(kFixtures / "zstd_w2");
  REQUIRE(md.ok());
  const auto* head = entry(*md, "model.lm_head.weight");
  REQUIRE(head);
  const StorageInfo* info = md->find(head->fqn, head->chunks[0].offsets);
  REQUIRE(info);
  TempDir scratch("zstd");
  ItemReader reader(kFixtures / "zstd_w2", scratch.path / "sub");
  auto loc = reader.tensor_chunk(*head, head->chunks[0], *info);
  REQUIRE_MESSAGE(loc.ok(), loc.error().message);
  CHECK(loc->file.parent_path() == scratch.path / "sub");
  CHECK(loc->ref.shape == head->chunks[0].sizes);
  auto file = InputFile::open(loc->file);
  REQUIRE(file.ok());
  CHECK(loc->ref.storage_begin + loc->ref.storage_nbytes <= file->size());

  // Without a scratch directory a compressed item cannot be read.
  ItemReader no_scratch(kFixtures / "zstd_w2", "");
  CHECK(!no_scratch.tensor_chunk(*head, head->chunks[0], *info).ok());

  // A frame cut short.
  StorageInfo cut = *info;
  cut.length = info->length / 2;
  auto truncated = reader.tensor_chunk(*head, head->chunks[0], cut);
  REQUIRE(!truncated.ok());
  CHECK(contains(truncated.error().message, "zstd"));
  CHECK(contains(truncated.error().message, "'model.lm_head.weight'"));
}

TEST_CASE("items: truncated .distcp files, bad relative paths, items that are not zips") {
  auto md = read_metadata(kFixtures / "nested_w2");
  REQUIRE(md.ok());
  const auto* head = entry(*md, "model.lm_head.weight");
  REQUIRE(head);
  const StorageInfo* info = md->find(head->fqn, head->chunks[0].offsets);
  REQUIRE(info);
  TempDir tmp("trunc");
  std::string bytes = read_file(kFixtures / "nested_w2" / info->relative_path);
  write_file(tmp.path / info->relative_path, bytes.substr(0, info->offset + info->length / 2));
  ItemReader reader(tmp.path, tmp.path / "scratch");
  auto truncated = reader.tensor_chunk(*head, head->chunks[0], *info);
  REQUIRE(!truncated.ok());
  CHECK(contains(truncated.error().message, info->relative_path));
  CHECK(contains(truncated.error().message, "past the end of the file"));

  StorageInfo escape = *info;
  escape.relative_path = "../x.distcp";
  CHECK(contains(reader.tensor_chunk(*head, head->chunks[0], escape).error().message,
                 "leaves the directory"));

  // A SerializationFormat.SAFETENSORS blob (8-byte header length, JSON header).
  write_file(tmp.path / "st.distcp", std::string("\x10\0\0\0\0\0\0\0", 8) +
                                         R"({"__metadata__":{}})" + std::string(64, '\0'));
  StorageInfo st{"st.distcp", 0, 64, {}};
  auto safetensors = reader.tensor_chunk(*head, head->chunks[0], st);
  REQUIRE(!safetensors.ok());
  CHECK(safetensors.error().kind == ErrorKind::kUnsupported);
  CHECK(contains(safetensors.error().message, "SerializationFormat.SAFETENSORS"));

  // A zstd frame whose metadata forgot the descriptor.
  write_file(tmp.path / "z.distcp", std::string("\x28\xB5\x2F\xFD", 4) + std::string(60, '\0'));
  StorageInfo z{"z.distcp", 0, 64, {}};
  CHECK(contains(reader.tensor_chunk(*head, head->chunks[0], z).error().message,
                 "lists no transform_descriptors"));

  write_file(tmp.path / "junk.distcp", std::string(4096, 'x'));
  StorageInfo junk{"junk.distcp", 0, 4096, {}};
  CHECK(contains(reader.tensor_chunk(*head, head->chunks[0], junk).error().message,
                 "not a torch.save zip"));
}

TEST_CASE("metadata streamed item by item equals the whole read, for every fixture") {
  std::size_t compared = 0, streamed = 0, with_other_storage = 0;
  for (const auto& file : fs::recursive_directory_iterator(kFixtures)) {
    const auto name = file.path().filename().string();
    if (!file.is_regular_file() || (name != ".metadata" && file.path().extension() != ".metadata"))
      continue;
    CAPTURE(file.path().string());
    const std::string bytes = read_file(file.path());
    const auto span = std::as_bytes(std::span(bytes.data(), bytes.size()));
    auto a = parse_metadata(span, "x", true);
    auto b = parse_metadata(span, "x", false);
    REQUIRE(a.ok() == b.ok());
    ++compared;
    if (!a.ok()) {
      CHECK(a.error().message == b.error().message);
      continue;
    }
    CHECK(b->streamed_items == 0);
    if (a->streamed_items > 0) ++streamed;
    CHECK(a->class_name == b->class_name);
    CHECK(a->version == b->version);
    CHECK(a->planner_paths == b->planner_paths);
    REQUIRE(a->entries.size() == b->entries.size());
    for (std::size_t i = 0; i < a->entries.size(); ++i) {
      const auto& x = a->entries[i];
      const auto& y = b->entries[i];
      CHECK(x.fqn == y.fqn);
      CHECK(x.kind == y.kind);
      CHECK(x.dtype == y.dtype);
      CHECK(x.size == y.size);
      REQUIRE(x.chunks.size() == y.chunks.size());
      auto same = [](const std::optional<StorageInfo>& p, const std::optional<StorageInfo>& q) {
        REQUIRE(p.has_value() == q.has_value());
        if (!p) return;
        CHECK(p->relative_path == q->relative_path);
        CHECK(p->offset == q->offset);
        CHECK(p->length == q->length);
        CHECK(p->transforms == q->transforms);
      };
      same(x.storage, y.storage);
      for (std::size_t c = 0; c < x.chunks.size(); ++c) {
        CHECK(x.chunks[c].offsets == y.chunks[c].offsets);
        CHECK(x.chunks[c].sizes == y.chunks[c].sizes);
        same(x.chunks[c].storage, y.chunks[c].storage);
      }
    }
    REQUIRE(a->other_storage.size() == b->other_storage.size());
    if (!a->other_storage.empty()) ++with_other_storage;
    for (auto i = a->other_storage.begin(), j = b->other_storage.begin();
         i != a->other_storage.end(); ++i, ++j)
      CHECK(i->first == j->first);
  }
  CHECK(compared >= 10);
  CHECK(streamed >= 6);            // every real torch checkpoint's metadata streams
  CHECK(with_other_storage >= 1);  // errors/hole.metadata: an item whose chunk was removed
}

TEST_CASE("metadata: a key set twice is read as Python reads the dict") {
  // nested_w2's .metadata with one fqn renamed to its neighbour's: the dict keeps the first
  // position and the last value, which the streamed read cannot follow (it reads whole instead).
  std::string bytes = read_file(kFixtures / "nested_w2" / ".metadata");
  auto original = parse_metadata(std::as_bytes(std::span(bytes.data(), bytes.size())), "x");
  REQUIRE(original.ok());
  std::string first, second;  // two fqns of one length (q_proj and k_proj of a layer)
  for (std::size_t i = 0; i < original->entries.size() && second.empty(); ++i)
    for (std::size_t j = i + 1; j < original->entries.size() && second.empty(); ++j)
      if (original->entries[i].fqn.size() == original->entries[j].fqn.size()) {
        first = original->entries[i].fqn;
        second = original->entries[j].fqn;
      }
  REQUIRE(!second.empty());
  auto at = bytes.find(second);
  REQUIRE(at != std::string::npos);
  std::string renamed = bytes;
  renamed.replace(at, second.size(), first);
  const auto span = std::as_bytes(std::span(renamed.data(), renamed.size()));
  auto a = parse_metadata(span, "x", true);
  auto b = parse_metadata(span, "x", false);
  REQUIRE(a.ok() == b.ok());
  if (a.ok()) {
    CHECK(a->streamed_items == 0);
    REQUIRE(a->entries.size() == b->entries.size());
    for (std::size_t i = 0; i < a->entries.size(); ++i)
      CHECK(a->entries[i].fqn == b->entries[i].fqn);
  } else {
    CHECK(a.error().message == b.error().message);
  }
}
