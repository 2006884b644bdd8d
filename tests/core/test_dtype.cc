// Element-type conversions: exhaustive FP8/F16 decoding against the format formulas, round trips,
// ties to even at every midpoint, saturation, subnormals, signed zero, NaN, and convert_to/from
// double for every dtype. The reference rounding here is a brute-force nearest search, written
// independently of the encoder in src/core/dtype.cc.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/dtype.h"

namespace frugal {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// e4m3fn: bias 7, S.1111.111 NaN, no infinity.
float e4m3_formula(int code) {
  const int sign = code >> 7, exponent = (code >> 3) & 15, mantissa = code & 7;
  if (exponent == 15 && mantissa == 7) return kNaN;
  const double magnitude = exponent == 0 ? (mantissa / 8.0) * std::pow(2.0, -6)
                                         : (1.0 + mantissa / 8.0) * std::pow(2.0, exponent - 7);
  return static_cast<float>(sign ? -magnitude : magnitude);
}

// e5m2: bias 15, IEEE-style infinities and NaNs.
float e5m2_formula(int code) {
  const int sign = code >> 7, exponent = (code >> 2) & 31, mantissa = code & 3;
  double magnitude;
  if (exponent == 31) {
    if (mantissa != 0) return kNaN;
    magnitude = std::numeric_limits<double>::infinity();
  } else {
    magnitude = exponent == 0 ? (mantissa / 4.0) * std::pow(2.0, -14)
                              : (1.0 + mantissa / 4.0) * std::pow(2.0, exponent - 15);
  }
  return static_cast<float>(sign ? -magnitude : magnitude);
}

float f16_formula(int code) {
  const int sign = code >> 15, exponent = (code >> 10) & 31, mantissa = code & 1023;
  double magnitude;
  if (exponent == 31) {
    if (mantissa != 0) return kNaN;
    magnitude = std::numeric_limits<double>::infinity();
  } else {
    magnitude = exponent == 0 ? (mantissa / 1024.0) * std::pow(2.0, -14)
                              : (1.0 + mantissa / 1024.0) * std::pow(2.0, exponent - 15);
  }
  return static_cast<float>(sign ? -magnitude : magnitude);
}

// Same value including the sign of zero, or both NaN.
bool same_value(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return a == b && std::signbit(a) == std::signbit(b);
}

// Brute-force round-to-nearest-even onto a table of the non-negative finite values of a format
// (index = code), with SATFINITE saturation. Ties go to the even code.
int nearest_code(double x, const std::vector<double>& values) {
  const double magnitude = std::fabs(x);
  const int sign_bit = std::signbit(x) ? 0x80 : 0;
  if (magnitude >= values.back()) return sign_bit | static_cast<int>(values.size() - 1);
  int best = 0;
  for (int code = 1; code < static_cast<int>(values.size()); ++code) {
    const double d_best = std::fabs(magnitude - values[best]);
    const double d_code = std::fabs(magnitude - values[code]);
    if (d_code < d_best || (d_code == d_best && (code & 1) == 0)) best = code;
  }
  return sign_bit | best;
}

std::vector<double> positive_finite_values(float (*decode)(uint8_t), int max_code) {
  std::vector<double> values;
  for (int code = 0; code <= max_code; ++code) values.push_back(decode(static_cast<uint8_t>(code)));
  return values;
}

TEST(DType, NamesSizesAndParsing) {
  struct Row {
    DType dtype;
    const char* name;
    size_t size;
  };
  const Row rows[] = {{DType::F64, "F64", 8},       {DType::F32, "F32", 4},
                      {DType::F16, "F16", 2},       {DType::BF16, "BF16", 2},
                      {DType::F8_E4M3, "F8_E4M3", 1}, {DType::F8_E5M2, "F8_E5M2", 1},
                      {DType::I64, "I64", 8},       {DType::I32, "I32", 4},
                      {DType::I16, "I16", 2},       {DType::I8, "I8", 1},
                      {DType::U64, "U64", 8},       {DType::U32, "U32", 4},
                      {DType::U16, "U16", 2},       {DType::U8, "U8", 1},
                      {DType::BOOL, "BOOL", 1}};
  for (const Row& row : rows) {
    EXPECT_EQ(dtype_name(row.dtype), row.name);
    EXPECT_EQ(dtype_size(row.dtype), row.size) << row.name;
    DType parsed = DType::BOOL;
    ASSERT_TRUE(dtype_from_name(row.name, &parsed)) << row.name;
    EXPECT_EQ(parsed, row.dtype);
  }
  DType unused;
  EXPECT_FALSE(dtype_from_name("f32", &unused));
  EXPECT_FALSE(dtype_from_name("F8_E4M3FN", &unused));
  EXPECT_FALSE(dtype_from_name("", &unused));
}

TEST(E4M3, DecodesEveryCodeLikeTheFormula) {
  for (int code = 0; code < 256; ++code) {
    EXPECT_TRUE(same_value(e4m3_bits_to_float(code), e4m3_formula(code))) << "code " << code;
  }
  EXPECT_EQ(e4m3_bits_to_float(0x7E), 448.0f);
  EXPECT_EQ(e4m3_bits_to_float(0x01), std::ldexp(1.0f, -9));
  EXPECT_TRUE(std::isnan(e4m3_bits_to_float(0x7F)));
  EXPECT_TRUE(std::isnan(e4m3_bits_to_float(0xFF)));
  EXPECT_TRUE(std::signbit(e4m3_bits_to_float(0x80)));
}

TEST(E5M2, DecodesEveryCodeLikeTheFormula) {
  for (int code = 0; code < 256; ++code) {
    EXPECT_TRUE(same_value(e5m2_bits_to_float(code), e5m2_formula(code))) << "code " << code;
  }
  EXPECT_EQ(e5m2_bits_to_float(0x7B), 57344.0f);
  EXPECT_EQ(e5m2_bits_to_float(0x7C), kInf);
  EXPECT_EQ(e5m2_bits_to_float(0xFC), -kInf);
  EXPECT_EQ(e5m2_bits_to_float(0x01), std::ldexp(1.0f, -16));
}

TEST(FP8, EncodeOfDecodeIsIdentityForEveryNonNaNCode) {
  for (int code = 0; code < 256; ++code) {
    const float e4m3 = e4m3_bits_to_float(code);
    if (!std::isnan(e4m3)) {
      EXPECT_EQ(float_to_e4m3_bits(e4m3), code) << "e4m3 code " << code;
      EXPECT_EQ(double_to_e4m3_bits(e4m3), code) << "e4m3 code " << code;
    }
    const float e5m2 = e5m2_bits_to_float(code);
    if (!std::isnan(e5m2) && !std::isinf(e5m2)) {
      EXPECT_EQ(float_to_e5m2_bits(e5m2), code) << "e5m2 code " << code;
      EXPECT_EQ(double_to_e5m2_bits(e5m2), code) << "e5m2 code " << code;
    }
  }
}

// Midpoints between adjacent codes round to the even code; a hair either side goes to the nearer.
template <class Encode, class Decode>
void check_midpoints(Encode encode, Decode decode, int max_finite_code, const char* label) {
  for (int code = 0; code < max_finite_code; ++code) {
    for (int sign : {0, 0x80}) {
      const float low = decode(static_cast<uint8_t>(sign | code));
      const float high = decode(static_cast<uint8_t>(sign | (code + 1)));
      const float mid = (low + high) / 2;  // exact: FP8 values have at most 4 significant bits
      ASSERT_EQ(static_cast<double>(mid), (static_cast<double>(low) + high) / 2);
      const int even = (code & 1) == 0 ? code : code + 1;
      EXPECT_EQ(encode(mid), sign | even) << label << " midpoint above code " << code;
      const float toward_low = std::nextafter(mid, low);
      const float toward_high = std::nextafter(mid, high);
      EXPECT_EQ(encode(toward_low), sign | code) << label << " just below midpoint " << code;
      EXPECT_EQ(encode(toward_high), sign | (code + 1)) << label << " just above midpoint " << code;
    }
  }
}

TEST(FP8, MidpointsTieToEven) {
  check_midpoints(float_to_e4m3_bits, e4m3_bits_to_float, 0x7E, "e4m3");
  check_midpoints(float_to_e5m2_bits, e5m2_bits_to_float, 0x7B, "e5m2");
}

TEST(FP8, MatchesBruteForceNearestOnRandomFloats) {
  const std::vector<double> e4m3_values = positive_finite_values(e4m3_bits_to_float, 0x7E);
  const std::vector<double> e5m2_values = positive_finite_values(e5m2_bits_to_float, 0x7B);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> log_magnitude(-24.0f, 20.0f);
  for (int i = 0; i < 40000; ++i) {
    float x = std::exp2(log_magnitude(rng));
    if (rng() & 1) x = -x;
    EXPECT_EQ(float_to_e4m3_bits(x), nearest_code(x, e4m3_values)) << "x = " << x;
    EXPECT_EQ(float_to_e5m2_bits(x), nearest_code(x, e5m2_values)) << "x = " << x;
  }
}

TEST(E4M3, SaturatesToMaxUnderSatfinite) {
  for (float x : {448.0f, 449.0f, 463.99f, 464.0f, 464.01f, 480.0f, 1e6f,
                  std::numeric_limits<float>::max(), kInf}) {
    EXPECT_EQ(float_to_e4m3_bits(x), 0x7E) << x;
    EXPECT_EQ(float_to_e4m3_bits(-x), 0xFE) << -x;
  }
  EXPECT_EQ(double_to_e4m3_bits(1e300), 0x7E);
  EXPECT_EQ(float_to_e4m3_bits(432.0f), 0x7E);  // tie between 416 (0x7D) and 448: even is 0x7E
  EXPECT_EQ(float_to_e4m3_bits(431.0f), 0x7D);
}

TEST(E5M2, SaturatesToMaxUnderSatfinite) {
  for (float x : {57344.0f, 57345.0f, 61439.0f, 61440.0f, 61441.0f, 65536.0f, 1e30f, kInf}) {
    EXPECT_EQ(float_to_e5m2_bits(x), 0x7B) << x;
    EXPECT_EQ(float_to_e5m2_bits(-x), 0xFB) << -x;
  }
}

TEST(FP8, NaNBecomesCanonicalNaNLikeCudaHost) {
  // __nv_cvt_float_to_fp8 canonicalises any NaN input to 0x7FFFFFFF first, so the sign is lost.
  for (float nan : {kNaN, -kNaN, std::bit_cast<float>(0x7F800001u), std::bit_cast<float>(0xFFC12345u)}) {
    EXPECT_EQ(float_to_e4m3_bits(nan), 0x7F);
    EXPECT_EQ(float_to_e5m2_bits(nan), 0x7F);
  }
  EXPECT_EQ(double_to_e4m3_bits(-std::numeric_limits<double>::quiet_NaN()), 0x7F);
}

TEST(FP8, SubnormalsRoundToNearestEven) {
  const float ulp_e4m3 = std::ldexp(1.0f, -9);  // smallest e4m3 subnormal
  EXPECT_EQ(float_to_e4m3_bits(ulp_e4m3), 0x01);
  EXPECT_EQ(float_to_e4m3_bits(ulp_e4m3 / 2), 0x00);                              // tie -> 0
  EXPECT_EQ(float_to_e4m3_bits(std::nextafter(ulp_e4m3 / 2, 1.0f)), 0x01);
  EXPECT_EQ(float_to_e4m3_bits(1.5f * ulp_e4m3), 0x02);                           // tie -> 2
  EXPECT_EQ(float_to_e4m3_bits(2.5f * ulp_e4m3), 0x02);                           // tie -> 2
  EXPECT_EQ(float_to_e4m3_bits(7 * ulp_e4m3), 0x07);                              // largest subnormal
  EXPECT_EQ(float_to_e4m3_bits(7.5f * ulp_e4m3), 0x08);                           // tie -> min normal
  EXPECT_EQ(float_to_e4m3_bits(std::ldexp(1.0f, -6)), 0x08);
  EXPECT_EQ(float_to_e4m3_bits(std::ldexp(1.0f, -11)), 0x00);
  EXPECT_EQ(float_to_e4m3_bits(std::numeric_limits<float>::denorm_min()), 0x00);
  EXPECT_EQ(float_to_e4m3_bits(-3 * ulp_e4m3), 0x83);

  const float ulp_e5m2 = std::ldexp(1.0f, -16);
  EXPECT_EQ(float_to_e5m2_bits(ulp_e5m2), 0x01);
  EXPECT_EQ(float_to_e5m2_bits(ulp_e5m2 / 2), 0x00);
  EXPECT_EQ(float_to_e5m2_bits(1.5f * ulp_e5m2), 0x02);
  EXPECT_EQ(float_to_e5m2_bits(3 * ulp_e5m2), 0x03);
  EXPECT_EQ(float_to_e5m2_bits(3.5f * ulp_e5m2), 0x04);  // tie -> min normal 2^-14
}

TEST(FP8, SignedZeroSurvives) {
  EXPECT_EQ(float_to_e4m3_bits(0.0f), 0x00);
  EXPECT_EQ(float_to_e4m3_bits(-0.0f), 0x80);
  EXPECT_EQ(float_to_e4m3_bits(-1e-30f), 0x80);  // underflow keeps the sign
  EXPECT_EQ(float_to_e5m2_bits(-0.0f), 0x80);
  EXPECT_EQ(float_to_e5m2_bits(-1e-30f), 0x80);
  EXPECT_TRUE(std::signbit(e5m2_bits_to_float(0x80)));
  EXPECT_EQ(float_to_bf16_bits(-0.0f), 0x8000);
  EXPECT_EQ(float_to_f16_bits(-0.0f), 0x8000);
}

TEST(BF16, RoundsToNearestEvenAtTies) {
  const float one = 1.0f;
  EXPECT_EQ(float_to_bf16_bits(one), 0x3F80);
  EXPECT_EQ(float_to_bf16_bits(1.0f + std::ldexp(1.0f, -8)), 0x3F80);      // tie, 0x3F80 even
  EXPECT_EQ(float_to_bf16_bits(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3F82);  // tie, 0x3F82 even
  EXPECT_EQ(float_to_bf16_bits(std::nextafter(1.0f + std::ldexp(1.0f, -8), 2.0f)), 0x3F81);
  EXPECT_EQ(float_to_bf16_bits(std::nextafter(1.0f + std::ldexp(1.0f, -8), 0.0f)), 0x3F80);
  EXPECT_EQ(float_to_bf16_bits(-(1.0f + 3 * std::ldexp(1.0f, -8))), 0xBF82);
  // Overflow goes to infinity like IEEE; the largest bf16 stays.
  EXPECT_EQ(float_to_bf16_bits(std::bit_cast<float>(0x7F7F0000u)), 0x7F7F);
  EXPECT_EQ(float_to_bf16_bits(std::numeric_limits<float>::max()), 0x7F80);
  EXPECT_EQ(float_to_bf16_bits(kInf), 0x7F80);
  EXPECT_EQ(float_to_bf16_bits(-kInf), 0xFF80);
  // Float subnormals keep their top bits, rounded.
  EXPECT_EQ(float_to_bf16_bits(std::bit_cast<float>(0x00018000u)), 0x0002);  // tie -> even
  EXPECT_EQ(float_to_bf16_bits(std::bit_cast<float>(0x00008001u)), 0x0001);
  // NaN stays NaN (CUDA's canonical 0x7FFF, quiet).
  EXPECT_EQ(float_to_bf16_bits(kNaN), 0x7FFF);
  EXPECT_EQ(float_to_bf16_bits(std::bit_cast<float>(0xFF800001u)), 0x7FFF);
  EXPECT_TRUE(std::isnan(bf16_bits_to_float(0x7FFF)));
  EXPECT_EQ(round_to_bf16(1.00390625f), 1.0f);
}

TEST(BF16, MatchesBruteForceNearestOnRandomFloats) {
  std::mt19937 rng(11);
  for (int i = 0; i < 200000; ++i) {
    const uint32_t bits = rng();
    const float x = std::bit_cast<float>(bits);
    if (std::isnan(x) || std::isinf(x)) continue;
    const uint32_t truncated = (bits & 0x7FFFFFFFu) >> 16;
    // Candidates: truncated and the next code up; code 0x7F80 stands for 2^128 (overflow).
    auto magnitude_of = [](uint32_t code) {
      return code == 0x7F80 ? std::ldexp(1.0, 128)
                            : static_cast<double>(std::bit_cast<float>(code << 16));
    };
    const double magnitude = std::fabs(static_cast<double>(x));
    const double d_low = magnitude - magnitude_of(truncated);
    const double d_high = magnitude_of(truncated + 1) - magnitude;
    uint32_t expected = truncated;
    if (d_high < d_low || (d_high == d_low && (truncated & 1))) expected = truncated + 1;
    expected |= (bits >> 16) & 0x8000;
    ASSERT_EQ(float_to_bf16_bits(x), expected) << "bits " << std::hex << bits;
  }
}

TEST(F16, DecodesAndRoundTripsEveryCode) {
  for (int code = 0; code < 65536; ++code) {
    const float value = f16_bits_to_float(static_cast<uint16_t>(code));
    ASSERT_TRUE(same_value(value, f16_formula(code))) << "code " << code;
    if (!std::isnan(value)) {
      ASSERT_EQ(float_to_f16_bits(value), code) << "code " << code;
    }
  }
  for (int code = 0; code < 65536; ++code) {
    const float value = bf16_bits_to_float(static_cast<uint16_t>(code));
    if (!std::isnan(value)) {
      ASSERT_EQ(float_to_bf16_bits(value), code) << "bf16 code " << code;
    }
  }
}

TEST(F16, RoundsLikeIeeeHalf) {
  EXPECT_EQ(float_to_f16_bits(1.0f), 0x3C00);
  EXPECT_EQ(float_to_f16_bits(65504.0f), 0x7BFF);
  EXPECT_EQ(float_to_f16_bits(65519.0f), 0x7BFF);
  EXPECT_EQ(float_to_f16_bits(65520.0f), 0x7C00);  // tie between max and 2^16: even -> inf
  EXPECT_EQ(float_to_f16_bits(-1e10f), 0xFC00);
  EXPECT_EQ(float_to_f16_bits(1.0f + std::ldexp(1.0f, -11)), 0x3C00);      // tie -> even
  EXPECT_EQ(float_to_f16_bits(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);  // tie -> even
  EXPECT_EQ(float_to_f16_bits(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(float_to_f16_bits(std::ldexp(1.0f, -25)), 0x0000);             // tie -> 0
  EXPECT_EQ(float_to_f16_bits(1.5f * std::ldexp(1.0f, -24)), 0x0002);      // tie -> 2
  EXPECT_EQ(float_to_f16_bits(kNaN), 0x7FFF);
  EXPECT_TRUE(std::isnan(f16_bits_to_float(0x7E00)));
}

TEST(Convert, DoubleRoundsOnceNotThroughFloat) {
  // Just above a BF16 / E4M3 midpoint, by less than float can hold: float rounding would land
  // exactly on the midpoint and then tie to even, the wrong way.
  const double above_bf16_tie = 1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40);
  EXPECT_EQ(double_to_bf16_bits(above_bf16_tie), 0x3F81);
  EXPECT_EQ(float_to_bf16_bits(static_cast<float>(above_bf16_tie)), 0x3F80);
  uint16_t bf16 = 0;
  convert_from_double(&above_bf16_tie, DType::BF16, &bf16, 1);
  EXPECT_EQ(bf16, 0x3F81);

  const double above_e4m3_tie = 1.0 + std::ldexp(1.0, -4) + std::ldexp(1.0, -40);
  uint8_t e4m3 = 0;
  convert_from_double(&above_e4m3_tie, DType::F8_E4M3, &e4m3, 1);
  EXPECT_EQ(e4m3, 0x39);
  EXPECT_EQ(float_to_e4m3_bits(static_cast<float>(above_e4m3_tie)), 0x38);

  const double above_f16_tie = 1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40);
  EXPECT_EQ(double_to_f16_bits(above_f16_tie), 0x3C01);
  const double above_e5m2_tie = 1.0 + std::ldexp(1.0, -3) + std::ldexp(1.0, -40);
  EXPECT_EQ(double_to_e5m2_bits(above_e5m2_tie), 0x3D);
}

// Convert `values` to `dtype` and back; returns the bytes and the doubles read back. Buffers are
// deliberately misaligned by one byte.
std::vector<double> through(DType dtype, const std::vector<double>& values,
                            std::vector<unsigned char>* bytes_out = nullptr) {
  const size_t size = dtype_size(dtype);
  std::vector<unsigned char> storage(values.size() * size + 1);
  convert_from_double(values.data(), dtype, storage.data() + 1, values.size());
  std::vector<double> back(values.size());
  convert_to_double(storage.data() + 1, dtype, back.data(), values.size());
  if (bytes_out) bytes_out->assign(storage.begin() + 1, storage.end());
  return back;
}

TEST(Convert, FloatTypesBothWays) {
  const std::vector<double> values = {0.0, -0.0, 1.0, -2.5, 0.1, 300.0, 1e-3, 1e10};
  EXPECT_EQ(through(DType::F64, values), values);
  std::vector<double> expected;
  for (double v : values) expected.push_back(static_cast<float>(v));
  EXPECT_EQ(through(DType::F32, values), expected);

  struct Narrow {
    DType dtype;
    float (*reference)(double);
  };
  const Narrow narrow[] = {
      {DType::BF16, [](double v) { return bf16_bits_to_float(double_to_bf16_bits(v)); }},
      {DType::F16, [](double v) { return f16_bits_to_float(double_to_f16_bits(v)); }},
      {DType::F8_E4M3, [](double v) { return e4m3_bits_to_float(double_to_e4m3_bits(v)); }},
      {DType::F8_E5M2, [](double v) { return e5m2_bits_to_float(double_to_e5m2_bits(v)); }},
  };
  for (const Narrow& n : narrow) {
    const std::vector<double> back = through(n.dtype, values);
    for (size_t i = 0; i < values.size(); ++i) {
      EXPECT_TRUE(same_value(back[i], n.reference(values[i])))
          << dtype_name(n.dtype) << " value " << values[i];
    }
  }
  // Spot values with known bits.
  std::vector<unsigned char> bytes;
  through(DType::F8_E4M3, {1.0, -448.0, 1000.0}, &bytes);
  EXPECT_EQ(bytes, (std::vector<unsigned char>{0x38, 0xFE, 0x7E}));
  through(DType::BF16, {1.0, -2.0}, &bytes);
  EXPECT_EQ(bytes, (std::vector<unsigned char>{0x80, 0x3F, 0x00, 0xC0}));  // little-endian
  through(DType::F16, {1.0}, &bytes);
  EXPECT_EQ(bytes, (std::vector<unsigned char>{0x00, 0x3C}));
  through(DType::F8_E5M2, {-57344.0}, &bytes);
  EXPECT_EQ(bytes, (std::vector<unsigned char>{0xFB}));
}

TEST(Convert, IntegersRoundToNearestEvenAndSaturate) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const std::vector<double> values = {0, 1, -1, 2.5, 3.5, -2.5, 127.4, 300, -300, nan};
  EXPECT_EQ(through(DType::I8, values),
            (std::vector<double>{0, 1, -1, 2, 4, -2, 127, 127, -128, 0}));
  EXPECT_EQ(through(DType::U8, values), (std::vector<double>{0, 1, 0, 2, 4, 0, 127, 255, 0, 0}));
  EXPECT_EQ(through(DType::I16, {40000, -40000, -7}), (std::vector<double>{32767, -32768, -7}));
  EXPECT_EQ(through(DType::U16, {70000, 65535, -1}), (std::vector<double>{65535, 65535, 0}));
  EXPECT_EQ(through(DType::I32, {3e9, -3e9, 123456789}),
            (std::vector<double>{2147483647.0, -2147483648.0, 123456789}));
  EXPECT_EQ(through(DType::U32, {5e9, 4294967295.0}),
            (std::vector<double>{4294967295.0, 4294967295.0}));

  std::vector<unsigned char> bytes;
  through(DType::I64, {1e30, -1e30, -5, std::ldexp(1.0, 62)}, &bytes);
  int64_t i64[4];
  std::memcpy(i64, bytes.data(), sizeof(i64));
  EXPECT_EQ(i64[0], std::numeric_limits<int64_t>::max());
  EXPECT_EQ(i64[1], std::numeric_limits<int64_t>::min());
  EXPECT_EQ(i64[2], -5);
  EXPECT_EQ(i64[3], int64_t{1} << 62);
  through(DType::U64, {1e30, std::ldexp(1.0, 63), -1}, &bytes);
  uint64_t u64[3];
  std::memcpy(u64, bytes.data(), sizeof(u64));
  EXPECT_EQ(u64[0], std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(u64[1], uint64_t{1} << 63);
  EXPECT_EQ(u64[2], 0u);

  // Reading integers converts by value.
  const int16_t raw_i16[2] = {-32768, 1234};
  const uint64_t raw_u64[1] = {uint64_t{1} << 60};
  double out[2];
  convert_to_double(raw_i16, DType::I16, out, 2);
  EXPECT_EQ(out[0], -32768.0);
  EXPECT_EQ(out[1], 1234.0);
  convert_to_double(raw_u64, DType::U64, out, 1);
  EXPECT_EQ(out[0], std::ldexp(1.0, 60));
}

TEST(Convert, BoolIsZeroOrOne) {
  std::vector<unsigned char> bytes;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  EXPECT_EQ(through(DType::BOOL, {0.0, -0.0, 2.5, -1.0, nan}, &bytes),
            (std::vector<double>{0, 0, 1, 1, 1}));
  EXPECT_EQ(bytes, (std::vector<unsigned char>{0, 0, 1, 1, 1}));
  const unsigned char raw[3] = {0, 7, 255};
  double out[3];
  convert_to_double(raw, DType::BOOL, out, 3);
  EXPECT_EQ(out[0], 0.0);
  EXPECT_EQ(out[1], 1.0);
  EXPECT_EQ(out[2], 1.0);
}

}  // namespace
}  // namespace frugal
