#include "pickle/pickler.h"

#include <bit>
#include <cstring>

namespace ckptstream::pickle {
namespace {

using namespace opcode;

void put16(std::string& out, std::uint64_t v) {
  out.push_back(static_cast<char>(v & 0xFF));
  out.push_back(static_cast<char>((v >> 8) & 0xFF));
}
void put32(std::string& out, std::uint64_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
void put_op(std::string& out, Op opcode) {
  out.push_back(static_cast<char>(opcode));
}

}  // namespace

void Pickler::proto(std::uint8_t version) {
  put_op(out_, kProto);
  out_.push_back(static_cast<char>(version));
}
void Pickler::stop() {
  put_op(out_, kStop);
}
void Pickler::mark() {
  put_op(out_, kMark);
}
void Pickler::op(Op opcode) {
  put_op(out_, opcode);
}

void Pickler::global(std::string_view module, std::string_view name) {
  std::string id = "g:" + std::string(module) + "\n" + std::string(name);
  if (get_shared(id)) return;
  put_op(out_, kGlobal);
  out_ += module;
  out_ += '\n';
  out_ += name;
  out_ += '\n';
  remember(id);
}

void Pickler::string(std::string_view text, std::string_view shared_id) {
  std::string id = shared_id.empty() ? std::string() : "s:" + std::string(shared_id);
  if (!id.empty() && get_shared(id)) return;
  put_op(out_, kBinUnicode);
  put32(out_, text.size());
  out_ += text;
  if (id.empty()) {
    put();
  } else {
    remember(id);
  }
}

void Pickler::integer(std::int64_t v) {
  if (v >= 0 && v <= 0xFF) {
    put_op(out_, kBinInt1);
    out_ += static_cast<char>(v);
  } else if (v >= 0 && v <= 0xFFFF) {
    put_op(out_, kBinInt2);
    put16(out_, static_cast<std::uint64_t>(v));
  } else if (v >= -0x80000000LL && v <= 0x7FFFFFFFLL) {
    put_op(out_, kBinInt);
    put32(out_, static_cast<std::uint32_t>(static_cast<std::int32_t>(v)));
  } else {
    // LONG1: minimal two's complement, little-endian (pickle.encode_long).
    std::string bytes;
    auto u = static_cast<std::uint64_t>(v);
    for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>((u >> (8 * i)) & 0xFF));
    while (bytes.size() > 1) {
      auto last = static_cast<unsigned char>(bytes.back());
      auto prev = static_cast<unsigned char>(bytes[bytes.size() - 2]);
      bool redundant = (last == 0x00 && !(prev & 0x80)) || (last == 0xFF && (prev & 0x80));
      if (!redundant) break;
      bytes.pop_back();
    }
    put_op(out_, kLong1);
    out_ += static_cast<char>(bytes.size());
    out_ += bytes;
  }
}

void Pickler::floating(double value) {
  put_op(out_, kBinFloat);
  auto bits = std::bit_cast<std::uint64_t>(value);
  for (int i = 7; i >= 0; --i) out_.push_back(static_cast<char>((bits >> (8 * i)) & 0xFF));
}

void Pickler::boolean(bool value) {
  put_op(out_, value ? kNewTrue : kNewFalse);
}
void Pickler::none() {
  put_op(out_, kNone);
}

void Pickler::int_tuple(const std::vector<std::int64_t>& values) {
  if (values.empty()) {
    put_op(out_, kEmptyTuple);  // never memoized
    return;
  }
  if (values.size() > 3) mark();
  for (std::int64_t v : values) integer(v);
  static constexpr Op kTupleN[] = {kEmptyTuple, kTuple1, kTuple2, kTuple3};
  put_op(out_, values.size() > 3 ? kTuple : kTupleN[values.size()]);
  put();
}

void Pickler::empty_dict() {
  put_op(out_, kEmptyDict);
  put();
}
void Pickler::empty_list() {
  put_op(out_, kEmptyList);
  put();
}

void Pickler::put() {
  std::uint32_t index = next_memo_++;
  if (index < 256) {
    put_op(out_, kBinPut);
    out_ += static_cast<char>(index);
  } else {
    put_op(out_, kLongBinPut);
    put32(out_, index);
  }
}

bool Pickler::get_shared(const std::string& id) {
  auto it = shared_.find(id);
  if (it == shared_.end()) return false;
  if (it->second < 256) {
    put_op(out_, kBinGet);
    out_ += static_cast<char>(it->second);
  } else {
    put_op(out_, kLongBinGet);
    put32(out_, it->second);
  }
  return true;
}

void Pickler::remember(const std::string& id) {
  shared_[id] = next_memo_;
  put();
}

}  // namespace ckptstream::pickle
