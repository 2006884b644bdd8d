// Model parameters <-> safetensors files, under Hugging Face tensor names.
//
// Loading checks every parameter: present, same shape, a floating dtype; each mismatch is an
// error naming the tensor and the file. Tensors in the file that the model does not have are an
// error too, unless their names start with one of `ignore_prefixes` (e.g. MTP layers that
// transformers' checkpoints carry while a model built without MTP does not).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/param.h"

namespace frugal {

class SafetensorsFile;

struct ParamLoadOptions {
  std::vector<std::string> ignore_prefixes;
  bool allow_missing_buffers = false;  // buffers (the routing bias) absent from a file stay as they are
};

template <class T>
void save_params(const ParamStore<T>& store, const std::string& path, DType dtype,
                 const std::map<std::string, std::string>& metadata = {});
template <class T>
void load_params(ParamStore<T>& store, const std::string& path,
                 const ParamLoadOptions& options = {});
template <class T>
void load_params(ParamStore<T>& store, const SafetensorsFile& file,
                 const ParamLoadOptions& options = {});

}  // namespace frugal
