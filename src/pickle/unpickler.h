// A pickle VM (protocols 0-5) that builds plain values (value.h) and never executes anything.
//
// A pickle is a stream of one-byte opcodes with inline arguments, run by a stack machine with a
// mark stack and a memo; STOP returns the top of the stack. The opcode table is in
// docs/formats/torch.md §5. Multi-byte integers are little-endian except BINFLOAT,
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
  std::size_t streamed_items = 0;    // unpickle_streaming: items handed to the sink
  std::size_t released_regions = 0;  // ... and how many times the values made since were freed
};

// Receives the items of the pickled dict as SETITEMS adds them, instead of the dict: a torch.save
// of a state dict is one dict of (name, tensor) items, and the graph behind the items handed over
// can then be freed, so that memory holds a batch of items instead of the whole graph.
class RootItemSink {
 public:
  virtual ~RootItemSink() = default;
  // keys_and_values: k0, v0, k1, v1, ... in stream order; persistent_ids: the persistent-id nodes
  // made since the previous call (they are not repeated in Unpickled::persistent_ids).
  virtual Status items(std::span<const ValuePtr> keys_and_values,
                       std::span<const Value* const> persistent_ids) = 0;
  // The nodes reachable only through the last items() call are freed, those persistent ids
  // included: forget any pointer to them.
  virtual void released(std::span<const Value* const> persistent_ids) = 0;

  // Nested dicts: should the items of a dict that is the value of `key`, among the key-value
  // items being added to an outer container (above that container's mark), be streamed to
  // nested_items() instead? (A DCP .metadata holds its 700 000 chunk records in two such dicts
  // of the Metadata object's state.) Such a dict stays empty. Values made for a batch are freed
  // after it when unreachable, as for items(); strings, numbers and globals that a later GET
  // fetches are copied out of the batch first. No persistent ids may be made meanwhile.
  virtual bool streams_nested(std::string_view key) {
    (void)key;
    return false;
  }
  // `dict`: the (empty) dict the items would have gone to, for the caller to recognise it.
  virtual Status nested_items(std::string_view key, const Value* dict,
                              std::span<const ValuePtr> keys_and_values) {
    (void)key;
    (void)dict;
    (void)keys_and_values;
    return {};
  }
};

// Runs the pickle that starts at `offset` of `data` up to its STOP. Errors read
// "pickle: <problem> at offset N" (offsets relative to data[0]).
// `pool`, when given, lends and takes back the arena's large blocks.
Result<Unpickled> unpickle(std::span<const std::byte> data, std::size_t offset = 0,
                           std::shared_ptr<BlockPool> pool = nullptr);

// unpickle(data), streaming the items that SETITEM(S) adds to the dict at the bottom of the stack
// (with no mark below) to `sink`. That dict must be what the pickle returns, and stays empty (an
// error otherwise: parse again with unpickle()). Values made while a batch of items was unpickled
// are freed after the batch when provably unreachable: nothing older was changed meanwhile and no
// later GET (the stream is scanned for them first) fetches one. A stream the scan cannot follow
// is unpickled whole, its items left in the dict.
Result<Unpickled> unpickle_streaming(std::span<const std::byte> data, RootItemSink& sink,
                                     std::shared_ptr<BlockPool> pool = nullptr);

}  // namespace ckptstream::pickle
