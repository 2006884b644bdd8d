// Element types and the exact scalar conversions between them.
//
// BF16 and FP8 conversions round to nearest even. FP8 E4M3 ("e4m3fn": no infinities, one NaN
// pattern per sign, max finite 448) saturates finite values to +-448, bit-identical to CUDA's
// __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3). FP8 E5M2 saturates to +-57344 likewise.
// NaN maps to NaN in every format.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace frugal {

enum class DType : uint8_t { F64, F32, F16, BF16, F8_E4M3, F8_E5M2, I64, I32, I16, I8, U64, U32, U16, U8, BOOL };

// Size of one element in bytes.
size_t dtype_size(DType dtype);
// The safetensors name ("F32", "BF16", "F8_E4M3", ...).
std::string_view dtype_name(DType dtype);
// Parse a safetensors dtype name; returns false for an unknown name.
bool dtype_from_name(std::string_view name, DType* out);

uint16_t float_to_bf16_bits(float x);
float bf16_bits_to_float(uint16_t bits);
uint16_t float_to_f16_bits(float x);
float f16_bits_to_float(uint16_t bits);
uint8_t float_to_e4m3_bits(float x);
float e4m3_bits_to_float(uint8_t bits);
uint8_t float_to_e5m2_bits(float x);
float e5m2_bits_to_float(uint8_t bits);

// The same conversions from double, rounded once (no double rounding through float); the float
// versions above equal these applied to the exactly widened float. The FP8 ones match CUDA's
// __nv_cvt_double_to_fp8(x, __NV_SATFINITE, ...) except that NaN is always the canonical 0x7F.
uint16_t double_to_bf16_bits(double x);
uint16_t double_to_f16_bits(double x);
uint8_t double_to_e4m3_bits(double x);
uint8_t double_to_e5m2_bits(double x);

// Round-trip a float through BF16 (what a BF16 store then load does).
inline float round_to_bf16(float x) { return bf16_bits_to_float(float_to_bf16_bits(x)); }

// Convert `count` elements of raw bytes in dtype `from` to doubles / from doubles to `to`.
// Integer types convert by value; BOOL is 0/1. From double, integers round to nearest even and
// saturate to the type's range (NaN -> 0); BOOL stores x != 0. NaN converts to the canonical NaN
// of each float format (positive, as CUDA does: 0x7FFF for BF16/F16, 0x7F for both FP8 formats).
void convert_to_double(const void* src, DType from, double* dst, size_t count);
void convert_from_double(const double* src, DType to, void* dst, size_t count);

}  // namespace frugal
