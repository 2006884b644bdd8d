// Element types and exact scalar conversions: BF16, IEEE half, FP8 E4M3 (e4m3fn) and E5M2.
//
// Every narrowing conversion goes through one encoder that works on the bits of a double: a float
// widens to double exactly, so float and double inputs are rounded once, to nearest even. This is
// the method of CUDA's host path (__nv_cvt_float_to_fp8 widens to double, then rounds), and the
// results match it bit for bit:
//   - FP8 under __NV_SATFINITE: finite values past the largest finite code, and infinities,
//     become +-max (448 for E4M3, 57344 for E5M2); any NaN becomes 0x7F (the sign is dropped).
//   - BF16 / F16: overflow rounds to +-inf as IEEE does; any NaN becomes 0x7FFF.
// Decoding is exact (every narrow value is a float).
#include "core/dtype.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

namespace frugal {
namespace {

// A binary floating-point format narrower than float, described by its fields.
struct NarrowFormat {
  int total_bits;          // 8 or 16
  int mantissa_bits;       // explicit fraction bits
  int exponent_bias;
  uint32_t max_finite;     // largest finite magnitude code
  uint32_t on_overflow;    // magnitude code for finite overflow and for infinite input
  uint32_t nan_code;       // what any NaN becomes (positive canonical NaN)
  uint32_t infinity;       // magnitude code of infinity; 0 when the format has none
};

constexpr NarrowFormat kBF16{16, 7, 127, 0x7F7F, 0x7F80, 0x7FFF, 0x7F80};
constexpr NarrowFormat kF16{16, 10, 15, 0x7BFF, 0x7C00, 0x7FFF, 0x7C00};
// e4m3fn: no infinities; S.1111.111 is NaN, so S.1111.110 = 448 is the largest finite value.
constexpr NarrowFormat kE4M3{8, 3, 7, 0x7E, 0x7E, 0x7F, 0};
constexpr NarrowFormat kE5M2{8, 2, 15, 0x7B, 0x7B, 0x7F, 0x7C};

// Round x to the nearest value of `format` (ties to even) and return its bit pattern.
uint32_t encode(double x, const NarrowFormat& format) {
  const uint64_t bits = std::bit_cast<uint64_t>(x);
  const uint32_t sign_code = static_cast<uint32_t>(bits >> 63) << (format.total_bits - 1);
  const uint64_t magnitude = bits & ~(uint64_t{1} << 63);
  constexpr uint64_t kInfinityBits = 0x7FF0000000000000ULL;
  if (magnitude > kInfinityBits) return format.nan_code;
  if (magnitude == kInfinityBits) return sign_code | format.on_overflow;

  // x = significand * 2^(exponent - 52), with the hidden bit made explicit for normal doubles.
  const int biased_exponent = static_cast<int>(magnitude >> 52);
  const uint64_t fraction = magnitude & ((uint64_t{1} << 52) - 1);
  const int exponent = biased_exponent == 0 ? -1022 : biased_exponent - 1023;
  const uint64_t significand = biased_exponent == 0 ? fraction : fraction | (uint64_t{1} << 52);

  // The target's spacing at this magnitude is 2^(max(exponent, min_exponent) - mantissa_bits);
  // below min_exponent the spacing stays fixed (subnormals).
  const int min_exponent = 1 - format.exponent_bias;
  const int scale_exponent = std::max(exponent, min_exponent);
  const int shift = (scale_exponent - format.mantissa_bits) - (exponent - 52);  // always >= 1
  uint64_t units = 0;  // x in multiples of the target spacing, rounded
  if (shift < 63) {
    units = significand >> shift;
    const uint64_t remainder = significand & ((uint64_t{1} << shift) - 1);
    const uint64_t half = uint64_t{1} << (shift - 1);
    if (remainder > half || (remainder == half && (units & 1))) ++units;
  }
  // Codes are monotonic in value: each exponent step above the minimum adds 2^mantissa_bits codes,
  // and a rounding carry out of the mantissa lands on the next exponent by itself.
  const uint64_t code =
      (static_cast<uint64_t>(scale_exponent - min_exponent) << format.mantissa_bits) + units;
  if (code > format.max_finite) return sign_code | format.on_overflow;
  return sign_code | static_cast<uint32_t>(code);
}

float decode(uint32_t code, const NarrowFormat& format) {
  const int exponent_bits = format.total_bits - 1 - format.mantissa_bits;
  const uint32_t mantissa_mask = (1u << format.mantissa_bits) - 1;
  const uint32_t exponent_field = (code >> format.mantissa_bits) & ((1u << exponent_bits) - 1);
  const uint32_t mantissa = code & mantissa_mask;
  const bool negative = (code >> (format.total_bits - 1)) & 1;
  const uint32_t magnitude = code & ((1u << (format.total_bits - 1)) - 1);
  float value;
  if (magnitude > format.max_finite) {
    // Everything past the largest finite code is infinity (if the format has one) or NaN.
    value = magnitude == format.infinity ? std::numeric_limits<float>::infinity()
                                         : std::numeric_limits<float>::quiet_NaN();
  } else if (exponent_field == 0) {
    value = std::ldexp(static_cast<float>(mantissa), 1 - format.exponent_bias - format.mantissa_bits);
  } else {
    value = std::ldexp(static_cast<float>(mantissa | (1u << format.mantissa_bits)),
                       static_cast<int>(exponent_field) - format.exponent_bias - format.mantissa_bits);
  }
  return negative ? -value : value;
}

template <class T>
T load(const void* base, size_t index) {
  T value;
  std::memcpy(&value, static_cast<const char*>(base) + index * sizeof(T), sizeof(T));
  return value;
}

template <class T>
void store(void* base, size_t index, T value) {
  std::memcpy(static_cast<char*>(base) + index * sizeof(T), &value, sizeof(T));
}

template <class Int>
void integers_to_double(const void* src, double* dst, size_t count) {
  for (size_t i = 0; i < count; ++i) dst[i] = static_cast<double>(load<Int>(src, i));
}

// Round to nearest even and clamp to Int's range; NaN becomes 0.
template <class Int>
Int double_to_integer(double x) {
  if (std::isnan(x)) return 0;
  const double rounded = std::nearbyint(x);  // default rounding mode: to nearest even
  // The limits as doubles: min is a power of two (exact); max + 1 is a power of two (exact).
  const double lowest = static_cast<double>(std::numeric_limits<Int>::min());
  const double past_max = 2.0 * static_cast<double>(std::numeric_limits<Int>::max() / 2 + 1);
  if (rounded <= lowest) return std::numeric_limits<Int>::min();
  if (rounded >= past_max) return std::numeric_limits<Int>::max();
  return static_cast<Int>(rounded);
}

template <class Int>
void double_to_integers(const double* src, void* dst, size_t count) {
  for (size_t i = 0; i < count; ++i) store<Int>(dst, i, double_to_integer<Int>(src[i]));
}

}  // namespace

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F64: case DType::I64: case DType::U64: return 8;
    case DType::F32: case DType::I32: case DType::U32: return 4;
    case DType::F16: case DType::BF16: case DType::I16: case DType::U16: return 2;
    case DType::F8_E4M3: case DType::F8_E5M2: case DType::I8: case DType::U8: case DType::BOOL:
      return 1;
  }
  return 0;
}

std::string_view dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F64: return "F64";
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::F8_E4M3: return "F8_E4M3";
    case DType::F8_E5M2: return "F8_E5M2";
    case DType::I64: return "I64";
    case DType::I32: return "I32";
    case DType::I16: return "I16";
    case DType::I8: return "I8";
    case DType::U64: return "U64";
    case DType::U32: return "U32";
    case DType::U16: return "U16";
    case DType::U8: return "U8";
    case DType::BOOL: return "BOOL";
  }
  return "?";
}

bool dtype_from_name(std::string_view name, DType* out) {
  constexpr DType kAll[] = {DType::F64, DType::F32, DType::F16, DType::BF16, DType::F8_E4M3,
                            DType::F8_E5M2, DType::I64, DType::I32, DType::I16, DType::I8,
                            DType::U64, DType::U32, DType::U16, DType::U8, DType::BOOL};
  for (DType dtype : kAll) {
    if (dtype_name(dtype) == name) {
      *out = dtype;
      return true;
    }
  }
  return false;
}

uint16_t double_to_bf16_bits(double x) { return static_cast<uint16_t>(encode(x, kBF16)); }
uint16_t double_to_f16_bits(double x) { return static_cast<uint16_t>(encode(x, kF16)); }
uint8_t double_to_e4m3_bits(double x) { return static_cast<uint8_t>(encode(x, kE4M3)); }
uint8_t double_to_e5m2_bits(double x) { return static_cast<uint8_t>(encode(x, kE5M2)); }

uint16_t float_to_bf16_bits(float x) { return double_to_bf16_bits(x); }
uint16_t float_to_f16_bits(float x) { return double_to_f16_bits(x); }
uint8_t float_to_e4m3_bits(float x) { return double_to_e4m3_bits(x); }
uint8_t float_to_e5m2_bits(float x) { return double_to_e5m2_bits(x); }

// BF16 is the top half of a float, so widening is a shift (NaN payloads survive).
float bf16_bits_to_float(uint16_t bits) { return std::bit_cast<float>(uint32_t{bits} << 16); }
float f16_bits_to_float(uint16_t bits) { return decode(bits, kF16); }
float e4m3_bits_to_float(uint8_t bits) { return decode(bits, kE4M3); }
float e5m2_bits_to_float(uint8_t bits) { return decode(bits, kE5M2); }

void convert_to_double(const void* src, DType from, double* dst, size_t count) {
  switch (from) {
    case DType::F64:
      std::memcpy(dst, src, count * sizeof(double));
      return;
    case DType::F32:
      for (size_t i = 0; i < count; ++i) dst[i] = load<float>(src, i);
      return;
    case DType::F16:
      for (size_t i = 0; i < count; ++i) dst[i] = f16_bits_to_float(load<uint16_t>(src, i));
      return;
    case DType::BF16:
      for (size_t i = 0; i < count; ++i) dst[i] = bf16_bits_to_float(load<uint16_t>(src, i));
      return;
    case DType::F8_E4M3:
      for (size_t i = 0; i < count; ++i) dst[i] = e4m3_bits_to_float(load<uint8_t>(src, i));
      return;
    case DType::F8_E5M2:
      for (size_t i = 0; i < count; ++i) dst[i] = e5m2_bits_to_float(load<uint8_t>(src, i));
      return;
    case DType::I64: integers_to_double<int64_t>(src, dst, count); return;
    case DType::I32: integers_to_double<int32_t>(src, dst, count); return;
    case DType::I16: integers_to_double<int16_t>(src, dst, count); return;
    case DType::I8: integers_to_double<int8_t>(src, dst, count); return;
    case DType::U64: integers_to_double<uint64_t>(src, dst, count); return;
    case DType::U32: integers_to_double<uint32_t>(src, dst, count); return;
    case DType::U16: integers_to_double<uint16_t>(src, dst, count); return;
    case DType::U8: integers_to_double<uint8_t>(src, dst, count); return;
    case DType::BOOL:
      // Any non-zero byte reads as true.
      for (size_t i = 0; i < count; ++i) dst[i] = load<uint8_t>(src, i) != 0 ? 1.0 : 0.0;
      return;
  }
}

void convert_from_double(const double* src, DType to, void* dst, size_t count) {
  switch (to) {
    case DType::F64:
      std::memcpy(dst, src, count * sizeof(double));
      return;
    case DType::F32:
      for (size_t i = 0; i < count; ++i) store<float>(dst, i, static_cast<float>(src[i]));
      return;
    case DType::F16:
      for (size_t i = 0; i < count; ++i) store<uint16_t>(dst, i, double_to_f16_bits(src[i]));
      return;
    case DType::BF16:
      for (size_t i = 0; i < count; ++i) store<uint16_t>(dst, i, double_to_bf16_bits(src[i]));
      return;
    case DType::F8_E4M3:
      for (size_t i = 0; i < count; ++i) store<uint8_t>(dst, i, double_to_e4m3_bits(src[i]));
      return;
    case DType::F8_E5M2:
      for (size_t i = 0; i < count; ++i) store<uint8_t>(dst, i, double_to_e5m2_bits(src[i]));
      return;
    case DType::I64: double_to_integers<int64_t>(src, dst, count); return;
    case DType::I32: double_to_integers<int32_t>(src, dst, count); return;
    case DType::I16: double_to_integers<int16_t>(src, dst, count); return;
    case DType::I8: double_to_integers<int8_t>(src, dst, count); return;
    case DType::U64: double_to_integers<uint64_t>(src, dst, count); return;
    case DType::U32: double_to_integers<uint32_t>(src, dst, count); return;
    case DType::U16: double_to_integers<uint16_t>(src, dst, count); return;
    case DType::U8: double_to_integers<uint8_t>(src, dst, count); return;
    case DType::BOOL:
      for (size_t i = 0; i < count; ++i) store<uint8_t>(dst, i, src[i] != 0.0 ? 1 : 0);
      return;
  }
}

}  // namespace frugal
