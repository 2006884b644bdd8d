#include <cstring>

#include "kernels/embedding/embedding.h"

namespace frugal::cpu {

template <class T>
void embedding_fwd(T* out, const T* table, const int32_t* ids, int64_t n, int64_t d) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) std::memcpy(out + i * d, table + int64_t{ids[i]} * d, d * sizeof(T));
}

template <class T>
void embedding_bwd_weight(T* dtable, const T* dout, const int32_t* ids, int64_t n, int64_t d) {
  for (int64_t i = 0; i < n; ++i) {  // sequential: repeated ids must add in a fixed order
    T* row = dtable + int64_t{ids[i]} * d;
    const T* g = dout + i * d;
    for (int64_t j = 0; j < d; ++j) row[j] += g[j];
  }
}

template void embedding_fwd<float>(float*, const float*, const int32_t*, int64_t, int64_t);
template void embedding_fwd<double>(double*, const double*, const int32_t*, int64_t, int64_t);
template void embedding_bwd_weight<float>(float*, const float*, const int32_t*, int64_t, int64_t);
template void embedding_bwd_weight<double>(double*, const double*, const int32_t*, int64_t, int64_t);

}  // namespace frugal::cpu
