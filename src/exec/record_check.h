// Checks the CRC-32 that a zip archive records for each storage record a plan reads from
// (TensorRef::crc32), while the bytes stream through: a flipped byte in a rank file is an error
// naming the file, the record and both checksums, not a silently wrong model. No extra pass:
// every read of a fragment reports the CRC of the contiguous bytes it read (source_gather.h);
// pieces of one record are joined as they meet (crc32_combine: any order), and a record whose
// pieces cover it is compared with its archive's CRC and forgotten. What no fragment reads (a
// storage's padding past its view, a view's skipped parts) is read at the end, by finish(): for
// the common layouts, nothing. Memory holds the records being read, not every record.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "ckptstream/result.h"
#include "io/input_file.h"
#include "plan/plan.h"

namespace ckptstream {

// A contiguous run of bytes of one record, [begin, end) relative to the record's first byte.
struct RecordPiece {
  std::uint64_t begin = 0;
  std::uint64_t end = 0;
  std::uint32_t crc32 = 0;
};

class RecordChecker {
 public:
  explicit RecordChecker(std::span<const InputFile> inputs) : inputs_(inputs) {}

  // Pieces of the record `ref` views (ref.has_crc32), read by one gather. A mismatch found now
  // (the record complete) is an error naming the file, the record's bytes and both CRCs.
  // Threads may call it at once.
  Status add(const TensorRef& ref, std::span<const RecordPiece> pieces);

  // Reads what no piece covered of the records still open and checks them all.
  Status finish();

  // Bytes finish() read: what the plan's fragments did not read themselves (for tests).
  std::uint64_t completion_bytes() const { return completion_bytes_; }

 private:
  struct OpenRecord {
    std::uint64_t size = 0;
    std::uint32_t expected = 0;
    std::vector<RecordPiece> pieces;  // disjoint, sorted; neighbours that meet are joined
  };
  using Key = std::pair<std::size_t, std::uint64_t>;  // input, first byte of the record

  static void insert(OpenRecord& record, const RecordPiece& piece);
  Status check(const Key& key, const OpenRecord& record) const;

  std::span<const InputFile> inputs_;
  std::mutex mutex_;
  std::map<Key, OpenRecord> open_;
  std::uint64_t completion_bytes_ = 0;
};

}  // namespace ckptstream
