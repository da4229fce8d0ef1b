#include "formats/replica_hash.h"

#include <xxhash.h>

#include <algorithm>
#include <memory>
#include <numeric>

#include "plan/tiling.h"

namespace ckptstream {

Result<ValueDigest> hash_view_values(const InputFile& file, const TensorRef& ref,
                                     std::span<const std::size_t> order) {
  constexpr std::uint64_t kWindow = 1u << 20;
  std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> state(XXH3_createState(),
                                                                 &XXH3_freeState);
  XXH3_128bits_reset(state.get());
  auto count = checked_numel(ref.shape);
  if (!count) return invalid_input("bad shape " + shape_text(ref.shape));
  const std::uint64_t es = element_size(ref.dtype);
  for (auto stride : ref.strides)
    if (stride < 0) return invalid_input("negative stride in " + shape_text(ref.strides));
  if (*count > 0) {
    std::size_t inner = order.empty() ? 0 : order.back();
    std::int64_t run = order.empty() ? 1 : ref.shape[inner];
    std::uint64_t step = order.empty() ? 0 : static_cast<std::uint64_t>(ref.strides[inner]) * es;
    std::uint64_t per_window =
        step == 0 ? static_cast<std::uint64_t>(run) : std::max<std::uint64_t>(1, kWindow / step);
    std::vector<std::byte> window, packed;
    std::vector<std::int64_t> index(order.size(), 0);  // over order[0..n-2]
    for (std::int64_t done = 0; done < *count; done += run) {
      std::int64_t element = ref.offset;
      for (std::size_t k = 0; k + 1 < order.size(); ++k)
        element += index[k] * ref.strides[order[k]];
      for (std::int64_t i = 0; i < run;) {  // one run of the innermost dim
        std::uint64_t m = std::min<std::uint64_t>(per_window, static_cast<std::uint64_t>(run - i));
        std::uint64_t begin = static_cast<std::uint64_t>(element + i * (step / es)) * es;
        std::uint64_t length = (m - 1) * step + es;
        if (!range_fits(begin, length, ref.storage_nbytes))
          return invalid_input("view reaches past its storage");
        window.resize(length);
        CKPT_TRY(file.read_at(ref.storage_begin + begin, window));
        if (step == es) {
          XXH3_128bits_update(state.get(), window.data(), length);
        } else {
          packed.resize(m * es);
          for (std::uint64_t e = 0; e < m; ++e)
            std::copy_n(window.data() + e * step, es, packed.data() + e * es);
          XXH3_128bits_update(state.get(), packed.data(), packed.size());
        }
        i += static_cast<std::int64_t>(m);
      }
      for (std::size_t k = order.empty() ? 0 : order.size() - 1; k-- > 0;) {  // next run
        if (++index[k] < ref.shape[order[k]]) break;
        index[k] = 0;
      }
    }
  }
  XXH128_hash_t h = XXH3_128bits_digest(state.get());
  return ValueDigest{h.high64, h.low64};
}

std::vector<std::size_t> visit_order(const Shape& strides) {
  std::vector<std::size_t> order(strides.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return strides[a] > strides[b]; });
  return order;
}

}  // namespace ckptstream
