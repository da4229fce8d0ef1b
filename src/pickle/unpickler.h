// A pickle VM (protocols 0-5) that builds plain values (value.h) and never executes anything.
//
// A pickle is a stream of one-byte opcodes with inline arguments, run by a stack machine with a
// mark stack and a memo; STOP returns the top of the stack. The opcode table is in
// ../shared/docs/formats/torch.md §5. Multi-byte integers are little-endian except BINFLOAT,
// which is a big-endian IEEE double. Text opcodes of protocol 0 (INT, LONG, FLOAT, STRING,
// UNICODE, GET, PUT, GLOBAL, INST, PERSID) carry newline-terminated arguments.
//
// Calls are not made. REDUCE / NEWOBJ / NEWOBJ_EX / INST / OBJ produce an Object node, except for
// these harmless constructors, which produce plain values:
//   collections.OrderedDict(), collections.Counter()     -> Dict (module/name record the class)
//   _codecs.encode(str, 'latin1'), builtins.bytes(...)   -> Bytes
//   builtins.bytearray(...)                              -> Bytes
//   builtins.set(list), builtins.frozenset(list)         -> Set, FrozenSet
//   torch.Size(tuple)                                    -> Tuple
//   builtins.getattr(Global, 'Name')                     -> Global (name "Outer.Name")
//   copyreg._reconstructor(cls, base, state)             -> Object of cls (args empty)
// ("builtins" also matches the protocol-2 spelling "__builtin__", "copyreg" also "copy_reg".)
// BUILD stores its state on the node (Object, Dict, ...); attributes are read with Value::attr.
// Persistent ids become PersistentId nodes for the caller to interpret. None, booleans, ints and
// the empty tuple are immutable, so equal ones are one shared node (BUILD on them is an error, as
// in Python).
//
// Every length is checked against the bytes left, so a malformed stream gives an error naming
// the opcode and offset, never a crash or an oversized allocation.
// A pickle of 4 GiB or more is refused (its containers' counts are 32-bit).
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <vector>

#include "ckptstream/result.h"
#include "pickle/value.h"

namespace ckptstream::pickle {

struct Unpickled {
  // The object; the pointer shares ownership of the arena that holds the whole graph.
  std::shared_ptr<Value> value;
  std::size_t end = 0;  // offset just past the STOP opcode
  // Every persistent-id node, in the order the stream made them (what torch's persistent_load
  // would have been called with), so that callers need not walk the graph to find storages.
  std::vector<const Value*> persistent_ids;
};

// Runs the pickle that starts at `offset` of `data` up to its STOP. Errors read
// "pickle: <problem> at offset N" (offsets relative to data[0]).
// `pool`, when given, lends and takes back the arena's large blocks.
Result<Unpickled> unpickle(std::span<const std::byte> data, std::size_t offset = 0,
                           std::shared_ptr<BlockPool> pool = nullptr);

}  // namespace ckptstream::pickle
