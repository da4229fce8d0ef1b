// Writing pickles as CPython's pickler writes them (protocol 2, the protocol torch.save uses), so
// that files we write are byte-identical to what Python would write for the same objects. The
// caller walks its objects and calls one method per opcode group; the pickler owns the memo:
// it memoizes every object written except ints, bools, None and the empty tuple (BINPUT with the
// next memo index), and writes BINGET for an object met again when the caller names it with a
// shared id (classes and functions are met again; so are CPython's interned strings).
// Opcodes come from the table the reading VM uses (opcodes.h).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "pickle/opcodes.h"

namespace ckptstream::pickle {

class Pickler {
 public:
  std::string take() { return std::move(out_); }

  void proto(std::uint8_t version = 2);  // PROTO n
  void stop();                           // STOP
  void mark();                           // MARK
  void op(opcode::Op opcode);            // any opcode without argument (TUPLE, REDUCE, BUILD...)

  // GLOBAL module\nname\n, memoized once per (module, name): met again, a BINGET.
  void global(std::string_view module, std::string_view name);
  // BINUNICODE, memoized; with a `shared_id` met before, a BINGET of that object instead.
  void string(std::string_view text, std::string_view shared_id = {});
  // BININT1 / BININT2 / BININT / LONG1: the shortest CPython picks.
  void integer(std::int64_t value);
  void floating(double value);  // BINFLOAT (big-endian IEEE 754 double)
  void boolean(bool value);     // NEWTRUE / NEWFALSE
  void none();                  // NONE
  // A tuple of ints: EMPTY_TUPLE (not memoized), TUPLE1..3, or MARK ... TUPLE; memoized.
  void int_tuple(const std::vector<std::int64_t>& values);
  void empty_dict();  // EMPTY_DICT, memoized
  void empty_list();  // EMPTY_LIST, memoized
  // Memoizes the object just written.
  void put();

 private:
  bool get_shared(const std::string& id);
  void remember(const std::string& id);

  std::string out_;
  std::uint32_t next_memo_ = 0;
  std::unordered_map<std::string, std::uint32_t> shared_;
};

}  // namespace ckptstream::pickle
