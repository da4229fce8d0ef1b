// The pickle opcodes (CPython's Lib/pickletools.py), protocols 0 to 5: one table for the
// reading VM (unpickler.h) and the writer (pickler.h). Each line says what the opcode does to
// the VM's stack and memo, as pickletools documents it.
#pragma once

#include <cstdint>

namespace ckptstream::pickle::opcode {

enum Op : std::uint8_t {
  kMark = '(',              // push a mark: the start of a variable-length group
  kStop = '.',              // end of the pickle: the top of the stack is its value
  kPop = '0',               // discard the top of the stack
  kPopMark = '1',           // discard everything down to and including the topmost mark
  kDup = '2',               // push the top of the stack again
  kFloat = 'F',             // a float written as decimal text up to a newline (protocol 0)
  kInt = 'I',               // an int as decimal text; "00" / "01" are False / True
  kBinInt = 'J',            // a signed 4-byte little-endian int
  kBinInt1 = 'K',           // a 1-byte unsigned int
  kLong = 'L',              // a long as decimal text ending in 'L'
  kBinInt2 = 'M',           // a 2-byte little-endian unsigned int
  kNone = 'N',              // push None
  kPersId = 'P',            // persistent id from a text line, resolved by the loader
  kBinPersId = 'Q',         // persistent id from the stack (torch's storages)
  kReduce = 'R',            // callable(*args): pop args and callable, push the call
  kString = 'S',            // a quoted byte string on a text line
  kBinString = 'T',         // bytes with a 4-byte length (protocol 1 str)
  kShortBinString = 'U',    // bytes with a 1-byte length
  kUnicode = 'V',           // a raw-unicode-escaped text line
  kBinUnicode = 'X',        // UTF-8 text with a 4-byte length
  kAppend = 'a',            // list.append(top)
  kBuild = 'b',             // obj.__setstate__(state), or update its __dict__
  kGlobal = 'c',            // push module.name, read from two text lines
  kDict = 'd',              // a dict of the key/value pairs above the topmost mark
  kEmptyDict = '}',         // push {}
  kAppends = 'e',           // list.extend(items above the topmost mark)
  kGet = 'g',               // push the memo entry named by a text line
  kBinGet = 'h',            // push the memo entry of a 1-byte index
  kInst = 'i',              // module.name(*items above the mark), class named inline
  kLongBinGet = 'j',        // push the memo entry of a 4-byte index
  kList = 'l',              // a list of the items above the topmost mark
  kEmptyList = ']',         // push []
  kObj = 'o',               // cls(*args): class and args above the topmost mark
  kPut = 'p',               // store the top in the memo under a text-line index
  kBinPut = 'q',            // ... under a 1-byte index
  kLongBinPut = 'r',        // ... under a 4-byte index
  kSetItem = 's',           // dict[key] = value
  kTuple = 't',             // a tuple of the items above the topmost mark
  kEmptyTuple = ')',        // push ()
  kSetItems = 'u',          // dict.update(pairs above the topmost mark)
  kBinFloat = 'G',          // an 8-byte big-endian IEEE double
  kProto = 0x80,            // protocol version (1 byte); the first opcode from protocol 2 on
  kNewObj = 0x81,           // cls.__new__(cls, *args)
  kExt1 = 0x82,             // copyreg extension registry code, 1 byte
  kExt2 = 0x83,             // ..., 2 bytes
  kExt4 = 0x84,             // ..., 4 bytes
  kTuple1 = 0x85,           // a tuple of the top item
  kTuple2 = 0x86,           // ... of the top two items
  kTuple3 = 0x87,           // ... of the top three items
  kNewTrue = 0x88,          // push True
  kNewFalse = 0x89,         // push False
  kLong1 = 0x8a,            // a two's-complement int of a 1-byte length
  kLong4 = 0x8b,            // ... of a 4-byte length
  kBinBytes = 'B',          // bytes with a 4-byte length (protocol 3)
  kShortBinBytes = 'C',     // bytes with a 1-byte length
  kShortBinUnicode = 0x8c,  // UTF-8 text with a 1-byte length (protocol 4)
  kBinUnicode8 = 0x8d,      // UTF-8 text with an 8-byte length
  kBinBytes8 = 0x8e,        // bytes with an 8-byte length
  kEmptySet = 0x8f,         // push set()
  kAddItems = 0x90,         // set.update(items above the topmost mark)
  kFrozenSet = 0x91,        // a frozenset of the items above the topmost mark
  kNewObjEx = 0x92,         // cls.__new__(cls, *args, **kwargs)
  kStackGlobal = 0x93,      // push module.name, both strings taken from the stack
  kMemoize = 0x94,          // store the top in the memo under the next index
  kFrame = 0x95,            // the next 8-byte length of bytes is one frame (a read hint)
  kByteArray8 = 0x96,       // a bytearray with an 8-byte length (protocol 5)
  kNextBuffer = 0x97,       // push the next out-of-band buffer
  kReadOnlyBuffer = 0x98,   // make the top buffer read-only
};

}  // namespace ckptstream::pickle::opcode
