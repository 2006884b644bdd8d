#include <cblas.h>

#include <type_traits>

#include "kernels/gemm/gemm.h"

namespace frugal::cpu {
namespace {

void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t m, int64_t n, int64_t k, const float* a,
          int64_t lda, const float* b, int64_t ldb, float* c, bool acc) {
  if (m == 0 || n == 0) return;
  cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, 1.0f, a, lda, b, ldb, acc ? 1.0f : 0.0f, c, n);
}
void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t m, int64_t n, int64_t k, const double* a,
          int64_t lda, const double* b, int64_t ldb, double* c, bool acc) {
  if (m == 0 || n == 0) return;
  cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, 1.0, a, lda, b, ldb, acc ? 1.0 : 0.0, c, n);
}

}  // namespace

template <class T>
void matmul_nt(T* c, const T* a, const T* b, int64_t m, int64_t n, int64_t k, bool accumulate) {
  gemm(CblasNoTrans, CblasTrans, m, n, k, a, k, b, k, c, accumulate);
}
template <class T>
void matmul_nn(T* c, const T* a, const T* b, int64_t m, int64_t n, int64_t k, bool accumulate) {
  gemm(CblasNoTrans, CblasNoTrans, m, n, k, a, k, b, n, c, accumulate);
}
template <class T>
void matmul_tn(T* c, const T* a, const T* b, int64_t m, int64_t n, int64_t k, bool accumulate) {
  gemm(CblasTrans, CblasNoTrans, m, n, k, a, m, b, n, c, accumulate);
}

template <class T>
void gemm_strided(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
                  int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  const CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  else
    cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

template void gemm_strided<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*,
                                  int64_t, const float*, int64_t, float, float*, int64_t);
template void gemm_strided<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*,
                                   int64_t, const double*, int64_t, double, double*, int64_t);
template void matmul_nt<float>(float*, const float*, const float*, int64_t, int64_t, int64_t, bool);
template void matmul_nt<double>(double*, const double*, const double*, int64_t, int64_t, int64_t, bool);
template void matmul_nn<float>(float*, const float*, const float*, int64_t, int64_t, int64_t, bool);
template void matmul_nn<double>(double*, const double*, const double*, int64_t, int64_t, int64_t, bool);
template void matmul_tn<float>(float*, const float*, const float*, int64_t, int64_t, int64_t, bool);
template void matmul_tn<double>(double*, const double*, const double*, int64_t, int64_t, int64_t, bool);

}  // namespace frugal::cpu
