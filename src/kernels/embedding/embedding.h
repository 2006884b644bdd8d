// Token embedding lookup:  out[n,d] = table[ids[n], :];  backward: dtable[ids[n], :] += dout[n,:].
// Ids are validated by the caller (the model checks them against vocab_size once per batch).
#pragma once

#include <cstdint>

namespace frugal::cpu {

template <class T>
void embedding_fwd(T* out, const T* table, const int32_t* ids, int64_t n, int64_t d);
template <class T>
void embedding_bwd_weight(T* dtable, const T* dout, const int32_t* ids, int64_t n, int64_t d);

}  // namespace frugal::cpu
