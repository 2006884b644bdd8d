// The training and validation data of a run, from the [data] section:
//   - data.train_path a text file (.txt / .txt.zst): byte tokens, TextDataSource, the last
//     val_fraction of the tokens (or data.val_path) for validation;
//   - data.train_path a token dataset directory (`frugal data tokenize`), or data.mix
//     "dirA=0.7,dirB=0.3": PackedLoader with packing, FIM at data.fim_rate (ids from the
//     dataset's special tokens), a held-out val_fraction of documents, a disjoint slice per rank.
// Every input is opened and checked here, before training prints or writes anything.
#pragma once

#include <memory>
#include <string>

#include "data/data_source.h"
#include "train/train_config.h"

namespace frugal {

struct TrainingData {
  std::unique_ptr<DataSource> train;
  std::unique_ptr<DataSource> validation;  // null when there is none
  std::string description;                 // one line for the log
  std::string tokenizer_hash;              // of token datasets; empty for byte text
};

TrainingData open_training_data(const Config& config, int64_t rank = 0, int64_t world = 1);

// True when path is a token dataset directory (holds index.json).
bool is_token_dataset(const std::string& path);

}  // namespace frugal
