#include "data/training_data.h"

#include <filesystem>
#include <sstream>

#include "core/error.h"
#include "data/loader/packed_loader.h"
#include "data/shards/dataset.h"
#include "data/text_source.h"
#include "data/tokenizer/tokenizer.h"

namespace frugal {
namespace {

std::vector<LoaderDataset> parse_mix(const std::string& mix) {
  std::vector<LoaderDataset> out;
  std::stringstream ss(mix);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t eq = item.rfind('=');
    FRUGAL_CHECK(eq != std::string::npos && eq > 0,
                 "data.mix: '{}' is not DIR=WEIGHT (e.g. \"web=0.7,books=0.3\")", item);
    LoaderDataset d;
    d.path = item.substr(0, eq);
    try {
      size_t used = 0;
      d.weight = std::stod(item.substr(eq + 1), &used);
      FRUGAL_CHECK(used == item.size() - eq - 1, "trailing characters");
    } catch (const std::exception&) {
      fail("data.mix: weight '{}' of {} is not a number", item.substr(eq + 1), d.path);
    }
    FRUGAL_CHECK(d.weight >= 0, "data.mix: weight of {} is negative", d.path);
    out.push_back(d);
  }
  FRUGAL_CHECK(!out.empty(), "data.mix is empty");
  return out;
}

int64_t special_id(const Dataset& dataset, const std::string& name) {
  auto it = dataset.tokenizer().special_ids.find(name);
  return it == dataset.tokenizer().special_ids.end() ? -1 : it->second;
}

TrainingData open_token_datasets(const Config& config, std::vector<LoaderDataset> datasets,
                                 int64_t rank, int64_t world) {
  LoaderOptions options;
  options.datasets = std::move(datasets);
  options.seed = config.train.seed;
  options.fim_rate = config.data.fim_rate;
  options.val_fraction = config.data.val_fraction;
  options.rank = rank;
  options.world = world;
  Dataset first = Dataset::open(options.datasets.front().path);
  // The tokenizer named by data.tokenizer (which generate and chat will use) must be the one the
  // datasets were made with.
  FRUGAL_CHECK(config.data.tokenizer != "bytes",
               "{}: a token dataset needs data.tokenizer = the tokenizer.json it was made with",
               first.dir());
  const Tokenizer tokenizer = Tokenizer::from_file(config.data.tokenizer);
  const std::string tokenizer_hash = fmt::format("{:016x}", tokenizer.hash());
  FRUGAL_CHECK(tokenizer_hash == first.tokenizer_hash(),
               "{}: made with tokenizer {}, but data.tokenizer = {} is tokenizer {}; tokenize the "
               "data with that tokenizer or set data.tokenizer to the one the dataset was made with",
               first.dir(), first.tokenizer_hash(), config.data.tokenizer, tokenizer_hash);
  int64_t tokens = 0, documents = 0;
  for (auto& d : options.datasets) {
    Dataset ds = Dataset::open(d.path);
    tokens += ds.num_tokens();
    documents += ds.num_documents();
    ds.check_tokenizer(first.tokenizer_hash());  // every mixed dataset shares one tokenizer
    FRUGAL_CHECK(ds.vocab_size() <= config.model.vocab_size,
                 "{}: the dataset's tokenizer has {} ids but model.vocab_size is {}", d.path,
                 ds.vocab_size(), config.model.vocab_size);
  }
  options.expected_tokenizer_hash = first.tokenizer_hash();
  // The model's BOS/EOS ids go into the config.json written beside the weights: they must be
  // the tokenizer's.
  FRUGAL_CHECK(first.eos_id() < 0 || config.model.eos_token_id == first.eos_id(),
               "model.eos_token_id = {} but the tokenizer's end-of-document id is {} (set "
               "--model.eos_token_id={})",
               config.model.eos_token_id, first.eos_id(), first.eos_id());
  FRUGAL_CHECK(first.bos_id() < 0 || config.model.bos_token_id == first.bos_id(),
               "model.bos_token_id = {} but the tokenizer's begin-of-sequence id is {} (set "
               "--model.bos_token_id={})",
               config.model.bos_token_id, first.bos_id(), first.bos_id());
  if (options.fim_rate > 0) {
    options.fim_begin_id = special_id(first, "fim_begin");
    options.fim_hole_id = special_id(first, "fim_hole");
    options.fim_end_id = special_id(first, "fim_end");
    FRUGAL_CHECK(options.fim_begin_id >= 0 && options.fim_hole_id >= 0 && options.fim_end_id >= 0,
                 "{}: data.fim_rate = {} but the dataset's tokenizer has no FIM tokens "
                 "(set --data.fim_rate=0)",
                 first.dir(), options.fim_rate);
  }
  TrainingData out;
  out.tokenizer_hash = first.tokenizer_hash();
  out.train = std::make_unique<PackedLoader>(options, LoaderSplit::kTrain);
  if (options.val_fraction > 0 && config.train.eval_every > 0)
    out.validation = std::make_unique<PackedLoader>(options, LoaderSplit::kValidation);
  out.description = fmt::format(
      "{} token dataset(s), {} documents, {} tokens (val {:.1f}% of documents, FIM rate {})",
      options.datasets.size(), documents, tokens, options.val_fraction * 100, options.fim_rate);
  return out;
}

TrainingData open_text(const Config& config, int64_t rank, int64_t world) {
  FRUGAL_CHECK(config.data.tokenizer == "bytes",
               "{}: a text file trains with data.tokenizer = \"bytes\"; with a tokenizer.json, "
               "make a token dataset first (frugal data tokenize)",
               config.data.train_path);
  TextCorpus corpus = load_text_corpus(config.data);
  const size_t window = static_cast<size_t>(config.train.seq_len) + 1;
  FRUGAL_CHECK(corpus.train.size() >= window,
               "{}: {} training tokens, fewer than one window of train.seq_len + 1 = {}",
               config.data.train_path, corpus.train.size(), window);
  std::string val_note;
  if (!corpus.validation.empty() && corpus.validation.size() < window) {
    val_note = fmt::format(" (fewer than train.seq_len + 1 = {}: validation is off)", window);
    corpus.validation.clear();
  }
  TrainingData out;
  out.description = fmt::format("{} — {} training tokens, {} validation tokens{}",
                                config.data.train_path, corpus.train.size(),
                                corpus.validation.size(), val_note);
  out.train = std::make_unique<TextDataSource>(std::move(corpus.train), config.train.seed, rank,
                                               world, ByteTokenizer::kVocabSize, "train");
  if (!corpus.validation.empty() && config.train.eval_every > 0)
    out.validation = std::make_unique<TextDataSource>(std::move(corpus.validation),
                                                      config.train.seed, 0, 1,
                                                      ByteTokenizer::kVocabSize, "validation");
  return out;
}

}  // namespace

bool is_token_dataset(const std::string& path) {
  std::error_code ec;
  return std::filesystem::is_directory(path, ec) &&
         std::filesystem::exists(std::filesystem::path(path) / "index.json", ec);
}

TrainingData open_training_data(const Config& config, int64_t rank, int64_t world) {
  if (!config.data.mix.empty()) return open_token_datasets(config, parse_mix(config.data.mix), rank, world);
  FRUGAL_CHECK(!config.data.train_path.empty(),
               "data.train_path is not set (pass --data.train_path=FILE or a dataset directory)");
  if (is_token_dataset(config.data.train_path))
    return open_token_datasets(config, {LoaderDataset{config.data.train_path, 1.0}}, rank, world);
  return open_text(config, rank, world);
}

}  // namespace frugal
