// safetensors reader/writer and atomic file writes: round trips of every dtype, metadata, a file
// built byte by byte, the exact bytes the writer produces, hostile and truncated files (each a
// frugal::Error naming the file, never a crash), and atomic replacement that never loses the old
// file.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"

namespace frugal {
namespace {

namespace fs = std::filesystem;

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static int counter = 0;
    dir_ = fs::temp_directory_path() /
           ("frugal_io_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ignored;
    fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::add, ignored);
    fs::remove_all(dir_, ignored);
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::set<std::string> listing() const {
    std::set<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir_)) names.insert(entry.path().filename());
    return names;
  }
  fs::path dir_;
};

void write_raw(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string read_raw(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string length_prefix(uint64_t length) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((length >> (8 * i)) & 0xFF);
  return bytes;
}

// 8-byte little-endian header length, the header, then the data section.
std::string safetensors_bytes(const std::string& header, const std::string& data) {
  return length_prefix(header.size()) + header + data;
}

template <class T>
std::string bytes_of(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

// Opening `path` must throw frugal::Error whose message names the file and contains `problem`.
void expect_open_error(const std::string& path, const std::string& problem) {
  try {
    SafetensorsFile::open(path);
    ADD_FAILURE() << "expected an error containing '" << problem << "' for " << path;
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(path), std::string::npos) << "message lacks the path: " << message;
    EXPECT_NE(message.find(problem), std::string::npos)
        << "message lacks '" << problem << "': " << message;
  }
}

const DType kAllDtypes[] = {DType::F64, DType::F32, DType::F16, DType::BF16, DType::F8_E4M3,
                            DType::F8_E5M2, DType::I64, DType::I32, DType::I16, DType::I8,
                            DType::U64, DType::U32, DType::U16, DType::U8, DType::BOOL};

TEST_F(SafetensorsTest, RoundTripsEveryDtype) {
  // Values exact in every dtype (non-negative small integers, halves for the float types).
  const std::vector<double> integers = {0, 1, 2, 3, 7, 100};
  const std::vector<double> floats = {0, 1.5, -2, 0.25, -448, 96};
  const std::vector<double> bools = {0, 1, 1, 0, 0, 1};
  auto values_for = [&](DType dtype) -> const std::vector<double>& {
    if (dtype == DType::BOOL) return bools;
    if (dtype == DType::F64 || dtype == DType::F32 || dtype == DType::F16 ||
        dtype == DType::BF16 || dtype == DType::F8_E4M3 || dtype == DType::F8_E5M2) {
      return floats;
    }
    return integers;
  };
  SafetensorsWriter writer;
  for (DType dtype : kAllDtypes) {
    writer.add_converted<double>(std::string("t_") + std::string(dtype_name(dtype)), dtype, {2, 3},
                                 values_for(dtype).data());
  }
  const std::vector<float> view_values = {1.0f, -3.5f};
  writer.add_view("view", DType::F32, {2}, view_values.data(), 8);
  writer.add("scalar", DType::I32, {}, bytes_of(std::vector<int32_t>{-42}));
  writer.add("empty", DType::F32, {0, 4}, "");
  writer.write(path("all.safetensors"));

  const SafetensorsFile file = SafetensorsFile::open(path("all.safetensors"));
  EXPECT_EQ(file.names().size(), std::size(kAllDtypes) + 3);
  for (DType dtype : kAllDtypes) {
    const std::string name = std::string("t_") + std::string(dtype_name(dtype));
    ASSERT_TRUE(file.contains(name));
    const TensorInfo& info = file.info(name);
    EXPECT_EQ(info.dtype, dtype);
    EXPECT_EQ(info.shape, (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(info.numel(), 6u);
    EXPECT_EQ(info.byte_size(), 6 * dtype_size(dtype));
    // Each tensor starts on a multiple of its element size.
    EXPECT_EQ(reinterpret_cast<uintptr_t>(file.data(name)) % dtype_size(dtype), 0u) << name;
    // The stored bytes are exactly what the conversion produces.
    std::string expected(6 * dtype_size(dtype), '\0');
    convert_from_double(values_for(dtype).data(), dtype, expected.data(), 6);
    EXPECT_EQ(std::string(static_cast<const char*>(file.data(name)), info.byte_size()), expected);
    EXPECT_EQ(file.read_as<double>(name), values_for(dtype)) << name;
    const std::vector<float> as_float = file.read_as<float>(name);
    for (size_t i = 0; i < 6; ++i) EXPECT_EQ(as_float[i], static_cast<float>(values_for(dtype)[i]));
  }
  EXPECT_EQ(file.read_as<float>("view"), view_values);
  EXPECT_EQ(file.info("scalar").shape.size(), 0u);
  EXPECT_EQ(file.read_as<double>("scalar"), std::vector<double>{-42});
  EXPECT_EQ(file.info("empty").byte_size(), 0u);
  EXPECT_TRUE(file.read_as<double>("empty").empty());
  EXPECT_FALSE(file.contains("missing"));
  // Data section is exactly the tensors: no gaps, nothing after.
  uint64_t total = 0;
  for (const std::string& name : file.names()) total += file.info(name).byte_size();
  EXPECT_EQ(total, file.data_size());
}

TEST_F(SafetensorsTest, MetadataRoundTrips) {
  SafetensorsWriter writer;
  writer.set_metadata("format", "pt");
  writer.set_metadata("note", "ünïcode \"quoted\" \\ and\nnewline");
  writer.add_converted<float>("w", DType::BF16, {1}, std::vector<float>{2.0f}.data());
  writer.write(path("meta.safetensors"));
  const SafetensorsFile file = SafetensorsFile::open(path("meta.safetensors"));
  EXPECT_EQ(file.metadata().size(), 2u);
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_EQ(file.metadata().at("note"), "ünïcode \"quoted\" \\ and\nnewline");
  EXPECT_EQ(file.names(), std::vector<std::string>{"w"});

  SafetensorsWriter plain;
  plain.add("x", DType::U8, {1}, std::string(1, '\x05'));
  plain.write(path("plain.safetensors"));
  EXPECT_TRUE(SafetensorsFile::open(path("plain.safetensors")).metadata().empty());
}

TEST_F(SafetensorsTest, ReadsAFileBuiltByHand) {
  // Header as another writer might lay it out: metadata first, extra spaces, names out of order.
  const std::string header =
      R"({"__metadata__":{"format":"pt"}, "b":{"dtype":"BF16","shape":[1,2],"data_offsets":[8,12]},)"
      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  std::string data;
  data += bytes_of(std::vector<float>{1.5f, -0.25f});
  data += std::string("\x80\x3F\x40\xC0", 4);  // BF16 1.0, -3.0 little-endian
  write_raw(path("hand.safetensors"), safetensors_bytes(header, data));

  const SafetensorsFile file = SafetensorsFile::open(path("hand.safetensors"));
  EXPECT_EQ(file.names(), (std::vector<std::string>{"a", "b"}));  // by data offset
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_EQ(file.info("a").dtype, DType::F32);
  EXPECT_EQ(file.info("b").shape, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(file.info("b").data_begin, 8u);
  EXPECT_EQ(file.info("b").data_end, 12u);
  EXPECT_EQ(file.read_as<float>("a"), (std::vector<float>{1.5f, -0.25f}));
  EXPECT_EQ(file.read_as<double>("b"), (std::vector<double>{1.0, -3.0}));
  EXPECT_EQ(file.data_size(), 12u);
}

TEST_F(SafetensorsTest, WriterProducesTheExactFormatBytes) {
  SafetensorsWriter writer;
  writer.add("b", DType::BF16, {2}, std::string("\x80\x3F\x00\xC0", 4));
  writer.add("c", DType::F32, {1}, bytes_of(std::vector<float>{2.0f}));
  writer.add("a", DType::F32, {1}, bytes_of(std::vector<float>{1.0f}));
  writer.set_metadata("format", "pt");
  writer.write(path("exact.safetensors"));

  // Larger elements first, then by name; header padded with spaces to a multiple of 8.
  std::string header =
      R"({"__metadata__":{"format":"pt"},)"
      R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
      R"("c":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},)"
      R"("b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  ASSERT_EQ(header.size() % 8, 0u);
  const std::string expected =
      safetensors_bytes(header, bytes_of(std::vector<float>{1.0f, 2.0f}) +
                                    std::string("\x80\x3F\x00\xC0", 4));
  EXPECT_EQ(writer.header_json(), header);
  EXPECT_EQ(read_raw(path("exact.safetensors")), expected);
}

TEST_F(SafetensorsTest, ReadsLargeTensorsInChunks) {
  std::vector<float> values(300000);
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i) * 0.5f - 7.0f;
  SafetensorsWriter writer;
  writer.add_view("big", DType::F32, {300, 1000}, values.data(), values.size() * 4);
  writer.add_converted<float>("big_bf16", DType::BF16, {300000}, values.data());
  writer.write(path("big.safetensors"));
  const SafetensorsFile file = SafetensorsFile::open(path("big.safetensors"));
  EXPECT_EQ(file.read_as<float>("big"), values);
  const std::vector<float> rounded = file.read_as<float>("big_bf16");
  for (size_t i = 0; i < values.size(); i += 997) EXPECT_EQ(rounded[i], round_to_bf16(values[i]));
  EXPECT_EQ(rounded.back(), round_to_bf16(values.back()));
}

TEST_F(SafetensorsTest, MissingTensorNamesFileAndTensor) {
  SafetensorsWriter writer;
  writer.add("x", DType::U8, {1}, std::string(1, '\0'));
  writer.write(path("one.safetensors"));
  const SafetensorsFile file = SafetensorsFile::open(path("one.safetensors"));
  try {
    file.info("nope");
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path("one.safetensors")), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("'nope'"), std::string::npos);
  }
  EXPECT_THROW(file.data("nope"), Error);
}

TEST_F(SafetensorsTest, WriterRejectsBadInput) {
  SafetensorsWriter writer;
  writer.add("x", DType::F32, {2}, std::string(8, '\0'));
  EXPECT_THROW(writer.add("x", DType::F32, {2}, std::string(8, '\0')), Error);   // duplicate
  EXPECT_THROW(writer.add("y", DType::F32, {3}, std::string(8, '\0')), Error);   // size mismatch
  EXPECT_THROW(writer.add("z", DType::F32, {-1}, std::string()), Error);         // negative dim
  EXPECT_THROW(writer.add("__metadata__", DType::U8, {1}, std::string(1, '\0')), Error);
  EXPECT_THROW(writer.add("bad\xff", DType::U8, {1}, std::string(1, '\0')), Error);  // not UTF-8
  EXPECT_THROW(writer.add("huge", DType::F64, {int64_t{1} << 40, int64_t{1} << 40}, ""), Error);
  EXPECT_EQ(writer.size(), 1u);
}

// --- hostile and truncated files -----------------------------------------------------------------

std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  const std::string& offsets) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
         ",\"data_offsets\":" + offsets + "}";
}

TEST_F(SafetensorsTest, HostileFilesThrowErrorsNamingTheFile) {
  const std::string eight(8, '\0');
  struct Case {
    const char* file;
    std::string bytes;
    const char* problem;
  };
  const std::vector<Case> cases = {
      {"empty", "", "too short"},
      {"seven_bytes", std::string(7, '\x01'), "too short"},
      {"huge_header_length", length_prefix(uint64_t{1} << 62) + "{}", "exceeds"},
      {"header_past_eof", length_prefix(100) + "{\"a\":1}", "runs past the end"},
      {"zero_header", length_prefix(0), "not valid JSON"},
      {"not_json", safetensors_bytes("{not json}", ""), "not valid JSON"},
      {"trailing_garbage", safetensors_bytes("{} x", ""), "not valid JSON"},
      {"json_array", safetensors_bytes("[1,2]", ""), "not a JSON object"},
      {"json_string", safetensors_bytes("\"hello\"", ""), "not a JSON object"},
      {"bad_utf8", safetensors_bytes("{\"\xC3\x28\":1}", ""), "not valid JSON"},
      {"deep", safetensors_bytes("{\"a\":{\"shape\":[[[[1]]]]}}", ""), "nests deeper"},
      {"entry_not_object", safetensors_bytes("{\"a\":5}", ""), "not a JSON object"},
      {"no_offsets", safetensors_bytes("{\"a\":{\"dtype\":\"F32\",\"shape\":[]}}", eight),
       "no \"data_offsets\""},
      {"unknown_dtype", safetensors_bytes("{" + entry("a", "F128", "[1]", "[0,8]") + "}", eight),
       "unknown dtype 'F128'"},
      {"dtype_not_string",
       safetensors_bytes(R"({"a":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", eight),
       "\"dtype\" is not a string"},
      {"negative_shape", safetensors_bytes("{" + entry("a", "F32", "[-1]", "[0,4]") + "}", eight),
       "not a non-negative integer"},
      {"float_shape", safetensors_bytes("{" + entry("a", "F32", "[2.0]", "[0,8]") + "}", eight),
       "not a non-negative integer"},
      {"string_shape", safetensors_bytes("{" + entry("a", "F32", "[\"2\"]", "[0,8]") + "}", eight),
       "not a non-negative integer"},
      {"shape_not_list", safetensors_bytes("{" + entry("a", "F32", "2", "[0,8]") + "}", eight),
       "not a list"},
      {"shape_overflow",
       safetensors_bytes("{" + entry("a", "F32", "[4294967296,4294967296,16]", "[0,8]") + "}",
                         eight),
       "too large"},
      {"offsets_reversed", safetensors_bytes("{" + entry("a", "F32", "[2]", "[8,0]") + "}", eight),
       "end before they begin"},
      {"offsets_three", safetensors_bytes("{" + entry("a", "F32", "[2]", "[0,4,8]") + "}", eight),
       "not two non-negative integers"},
      {"offsets_negative",
       safetensors_bytes("{" + entry("a", "F32", "[2]", "[-8,0]") + "}", eight),
       "not two non-negative integers"},
      {"span_mismatch", safetensors_bytes("{" + entry("a", "F32", "[3]", "[0,8]") + "}", eight),
       "needs 12"},
      {"span_beyond_file",
       safetensors_bytes("{" + entry("a", "F32", "[100]", "[0,400]") + "}", eight),
       "past the data section"},
      {"overlap",
       safetensors_bytes("{" + entry("a", "F32", "[2]", "[0,8]") + "," +
                             entry("b", "F32", "[2]", "[4,12]") + "}",
                         std::string(12, '\0')),
       "overlap"},
      {"duplicate_name",
       safetensors_bytes("{" + entry("a", "F32", "[1]", "[0,4]") + "," +
                             entry("a", "F32", "[1]", "[4,8]") + "}",
                         eight),
       "'a' twice"},
      {"metadata_not_string",
       safetensors_bytes(R"({"__metadata__":{"k":1}})", ""), "is not a string"},
      {"metadata_not_object", safetensors_bytes(R"({"__metadata__":[]})", ""),
       "is not a JSON object"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.file);
    const std::string file_path = path(std::string(c.file) + ".safetensors");
    write_raw(file_path, c.bytes);
    expect_open_error(file_path, c.problem);
  }
  // Tensor-level problems also name the tensor.
  expect_open_error(path("unknown_dtype.safetensors"), "tensor 'a'");
  expect_open_error(path("span_mismatch.safetensors"), "tensor 'a'");
  expect_open_error(path("does_not_exist.safetensors"), "cannot open");
  expect_open_error(dir_.string(), "not a regular file");
}

TEST_F(SafetensorsTest, EveryTruncationOfAValidFileIsRejected) {
  SafetensorsWriter writer;
  writer.set_metadata("format", "pt");
  writer.add_converted<float>("a", DType::F32, {3}, std::vector<float>{1, 2, 3}.data());
  writer.add_converted<float>("b", DType::BF16, {2}, std::vector<float>{4, 5}.data());
  writer.write(path("full.safetensors"));
  const std::string full = read_raw(path("full.safetensors"));
  const std::string truncated_path = path("truncated.safetensors");
  for (size_t length = 0; length < full.size(); ++length) {
    write_raw(truncated_path, full.substr(0, length));
    EXPECT_THROW(SafetensorsFile::open(truncated_path), Error) << "length " << length;
  }
  // Cutting only into the data section gives the data-section message.
  write_raw(truncated_path, full.substr(0, full.size() - 1));
  expect_open_error(truncated_path, "past the data section");
  write_raw(truncated_path, full);
  EXPECT_EQ(SafetensorsFile::open(truncated_path).read_as<float>("b"),
            (std::vector<float>{4, 5}));
}

TEST_F(SafetensorsTest, RandomByteCorruptionNeverCrashes) {
  SafetensorsWriter writer;
  writer.set_metadata("k", "v");
  writer.add_converted<float>("alpha", DType::F32, {2, 2}, std::vector<float>{1, 2, 3, 4}.data());
  writer.add_converted<float>("beta", DType::F8_E4M3, {3}, std::vector<float>{1, 2, 3}.data());
  writer.write(path("base.safetensors"));
  const std::string base = read_raw(path("base.safetensors"));
  std::mt19937 rng(3);
  const std::string corrupt_path = path("corrupt.safetensors");
  int rejected = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    std::string bytes = base;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int f = 0; f < flips; ++f) {
      bytes[rng() % bytes.size()] = static_cast<char>(rng() & 0xFF);
    }
    write_raw(corrupt_path, bytes);
    try {
      const SafetensorsFile file = SafetensorsFile::open(corrupt_path);
      // Whatever was accepted must be readable within the file.
      for (const std::string& name : file.names()) {
        const TensorInfo& info = file.info(name);
        ASSERT_LE(info.data_end, file.data_size());
        (void)file.read_as<double>(name);
      }
    } catch (const Error& e) {
      ++rejected;
      EXPECT_NE(std::string(e.what()).find(corrupt_path), std::string::npos) << e.what();
    }
  }
  EXPECT_GT(rejected, 0);
}

// --- atomic writes -------------------------------------------------------------------------------

TEST_F(SafetensorsTest, AtomicWriteReplacesExistingFile) {
  const std::string target = path("file.bin");
  write_file_atomic(target, "old contents");
  EXPECT_EQ(read_raw(target), "old contents");
  write_file_atomic(target, "new");
  EXPECT_EQ(read_raw(target), "new");
  EXPECT_EQ(listing(), std::set<std::string>{"file.bin"});

  // Streaming: chunks smaller and larger than the internal buffer arrive in order.
  std::string expected;
  write_file_atomic(target, [&](AtomicFileWriter& out) {
    std::mt19937 rng(5);
    for (int chunk = 0; chunk < 40; ++chunk) {
      const size_t size = chunk % 7 == 0 ? (size_t{3} << 19) + chunk : rng() % 5000;
      std::string piece(size, static_cast<char>('a' + chunk % 26));
      expected += piece;
      out.write(piece);
    }
    EXPECT_EQ(out.bytes_written(), expected.size());
  });
  EXPECT_EQ(read_raw(target), expected);
  EXPECT_EQ(listing(), std::set<std::string>{"file.bin"});

  // Safetensors files are replaced the same way.
  SafetensorsWriter writer;
  writer.add("t", DType::U8, {1}, std::string(1, '\x07'));
  writer.write(path("model.safetensors"));
  SafetensorsWriter second;
  second.add("u", DType::U8, {2}, std::string("\x01\x02", 2));
  second.write(path("model.safetensors"));
  const SafetensorsFile file = SafetensorsFile::open(path("model.safetensors"));
  EXPECT_EQ(file.names(), std::vector<std::string>{"u"});
}

TEST_F(SafetensorsTest, ProducerThatThrowsLeavesOldFileAndNoTemp) {
  const std::string target = path("keep.bin");
  write_file_atomic(target, "precious");
  struct Boom {};
  EXPECT_THROW(write_file_atomic(target,
                                 [](AtomicFileWriter& out) {
                                   out.write(std::string(3 << 20, 'x'));  // past the buffer
                                   throw Boom{};
                                 }),
               Boom);
  EXPECT_EQ(read_raw(target), "precious");
  EXPECT_EQ(listing(), std::set<std::string>{"keep.bin"});

  // A writer destroyed without commit() also leaves nothing behind.
  {
    AtomicFileWriter out(target);
    out.write("partial");
    EXPECT_TRUE(fs::exists(out.temp_path()));
    EXPECT_EQ(out.temp_path(), target + ".tmp." + std::to_string(::getpid()));
  }
  EXPECT_EQ(read_raw(target), "precious");
  EXPECT_EQ(listing(), std::set<std::string>{"keep.bin"});
}

TEST_F(SafetensorsTest, FailedWritesThrowAndLeaveNoTemp) {
  // Directory that does not exist.
  const std::string missing = path("no_such_dir/file.bin");
  try {
    write_file_atomic(missing, "x");
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(missing), std::string::npos) << e.what();
  }

  // Rename fails: the target is a non-empty directory. It survives, and the temp is removed.
  fs::create_directories(dir_ / "occupied");
  write_raw(path("occupied/inside"), "inside");
  EXPECT_THROW(write_file_atomic(path("occupied"), "data"), Error);
  EXPECT_EQ(read_raw(path("occupied/inside")), "inside");
  EXPECT_EQ(listing(), std::set<std::string>{"occupied"});

  // A write error mid-way (file size limit -> EFBIG) keeps the old file and removes the temp.
  const std::string target = path("limited.bin");
  write_file_atomic(target, "old");
  rlimit saved;
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  rlimit limited = saved;
  limited.rlim_cur = 1 << 20;
  auto* previous_handler = ::signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &limited), 0);
  bool threw = false;
  std::string message;
  try {
    write_file_atomic(target, std::string(4 << 20, 'y'));
  } catch (const Error& e) {
    threw = true;
    message = e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &saved);
  ::signal(SIGXFSZ, previous_handler);
  EXPECT_TRUE(threw);
  EXPECT_NE(message.find(target), std::string::npos) << message;
  EXPECT_EQ(read_raw(target), "old");
  EXPECT_EQ(listing(), (std::set<std::string>{"occupied", "limited.bin"}));

  // A read-only directory (only meaningful without root's override).
  if (::geteuid() != 0) {
    fs::create_directories(dir_ / "readonly");
    write_raw(path("readonly/file.bin"), "kept");
    fs::permissions(dir_ / "readonly", fs::perms::owner_read | fs::perms::owner_exec);
    EXPECT_THROW(write_file_atomic(path("readonly/file.bin"), "new"), Error);
    fs::permissions(dir_ / "readonly", fs::perms::owner_all);
    EXPECT_EQ(read_raw(path("readonly/file.bin")), "kept");
  }
}

}  // namespace
}  // namespace frugal
