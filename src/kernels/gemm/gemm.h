// Dense row-major matrix products (CPU reference through OpenBLAS).
//
// Linear layers use the nn.Linear convention y = x W^T with W stored [out, in]:
//   forward          y[M,N]  = x[M,K]  · W[N,K]^T       matmul_nt
//   backward input   dx[M,K] = dy[M,N] · W[N,K]         matmul_nn
//   backward weight  dW[N,K] += dy[M,N]^T · x[M,K]      matmul_tn (accumulate = true)
// `accumulate` adds into C instead of overwriting it.
#pragma once

#include <cstdint>

namespace frugal::cpu {

// C[M,N] (+)= A[M,K] · B[N,K]^T
template <class T>
void matmul_nt(T* c, const T* a, const T* b, int64_t m, int64_t n, int64_t k, bool accumulate);
// C[M,N] (+)= A[M,K] · B[K,N]
template <class T>
void matmul_nn(T* c, const T* a, const T* b, int64_t m, int64_t n, int64_t k, bool accumulate);
// C[M,N] (+)= A[K,M]^T · B[K,N]
template <class T>
void matmul_tn(T* c, const T* a, const T* b, int64_t m, int64_t n, int64_t k, bool accumulate);

// General strided form: C[M,N] = alpha * op(A) · op(B) + beta * C, row-major with leading
// dimensions lda/ldb/ldc (elements between rows), op = transpose when trans_* is true.
template <class T>
void gemm_strided(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
                  int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

}  // namespace frugal::cpu
