// TOML configuration: load (file + hf_config + command-line overrides), write back, print.
// Every setting is a Field: a dotted name ("train.lr", "model.rope_scaling.factor") and a pointer
// into a Config. One table of fields drives reading, overriding, writing and printing, so a new
// struct member needs one line in config_fields() and nothing else here.
#include "io/config_io.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <sstream>
#include <toml++/toml.h>
#include <type_traits>
#include <variant>

#include "core/error.h"

namespace frugal {
namespace {

using FieldRef = std::variant<int64_t*, uint64_t*, double*, bool*, std::string*,
                              std::vector<StepValue>*>;

struct Field {
  std::string name;  // "section.key" or "section.sub.key"
  FieldRef ref;
};

const char* const kSections[] = {"model", "train", "optim", "schedule", "batch_ramp", "data",
                                 "generate"};

// Every field of a Config, in the order they are written. Sub-table fields (model.rope_scaling.*)
// come last in their section so that config_to_toml can open the sub-table once.
std::vector<Field> config_fields(Config& c) {
  ModelConfig& m = c.model;
  TrainConfig& t = c.train;
  return {
      {"model.model_type", &m.model_type},
      {"model.vocab_size", &m.vocab_size},
      {"model.hidden_size", &m.hidden_size},
      {"model.intermediate_size", &m.intermediate_size},
      {"model.moe_intermediate_size", &m.moe_intermediate_size},
      {"model.num_hidden_layers", &m.num_hidden_layers},
      {"model.num_nextn_predict_layers", &m.num_nextn_predict_layers},
      {"model.num_attention_heads", &m.num_attention_heads},
      {"model.num_key_value_heads", &m.num_key_value_heads},
      {"model.q_lora_rank", &m.q_lora_rank},
      {"model.kv_lora_rank", &m.kv_lora_rank},
      {"model.qk_nope_head_dim", &m.qk_nope_head_dim},
      {"model.qk_rope_head_dim", &m.qk_rope_head_dim},
      {"model.v_head_dim", &m.v_head_dim},
      {"model.n_routed_experts", &m.n_routed_experts},
      {"model.n_shared_experts", &m.n_shared_experts},
      {"model.num_experts_per_tok", &m.num_experts_per_tok},
      {"model.n_group", &m.n_group},
      {"model.topk_group", &m.topk_group},
      {"model.first_k_dense_replace", &m.first_k_dense_replace},
      {"model.moe_layer_freq", &m.moe_layer_freq},
      {"model.routed_scaling_factor", &m.routed_scaling_factor},
      {"model.scoring_func", &m.scoring_func},
      {"model.topk_method", &m.topk_method},
      {"model.norm_topk_prob", &m.norm_topk_prob},
      {"model.max_position_embeddings", &m.max_position_embeddings},
      {"model.rope_theta", &m.rope_theta},
      {"model.rms_norm_eps", &m.rms_norm_eps},
      {"model.hidden_act", &m.hidden_act},
      {"model.bos_token_id", &m.bos_token_id},
      {"model.eos_token_id", &m.eos_token_id},
      {"model.tie_word_embeddings", &m.tie_word_embeddings},
      {"model.attention_bias", &m.attention_bias},
      {"model.initializer_range", &m.initializer_range},
      {"model.rope_scaling.type", &m.rope_scaling.type},
      {"model.rope_scaling.factor", &m.rope_scaling.factor},
      {"model.rope_scaling.beta_fast", &m.rope_scaling.beta_fast},
      {"model.rope_scaling.beta_slow", &m.rope_scaling.beta_slow},
      {"model.rope_scaling.mscale", &m.rope_scaling.mscale},
      {"model.rope_scaling.mscale_all_dim", &m.rope_scaling.mscale_all_dim},
      {"model.rope_scaling.original_max_position_embeddings",
       &m.rope_scaling.original_max_position_embeddings},
      {"train.seq_len", &t.seq_len},
      {"train.micro_batch", &t.micro_batch},
      {"train.batch_sequences", &t.batch_sequences},
      {"train.steps", &t.steps},
      {"train.seed", &t.seed},
      {"train.init_std", &t.init_std},
      {"train.bias_update_speed", &t.bias_update_speed},
      {"train.mtp_weight", &t.mtp_weight},
      {"train.balance_alpha", &t.balance_alpha},
      {"train.log_every", &t.log_every},
      {"train.eval_every", &t.eval_every},
      {"train.eval_batches", &t.eval_batches},
      {"train.save_every", &t.save_every},
      {"train.out_dir", &t.out_dir},
      {"train.precision", &t.precision},
      {"train.device", &t.device},
      {"train.threads", &t.threads},
      {"train.pp", &t.pp},
      {"train.pp_schedule", &t.pp_schedule},
      {"train.pp_stage_layers", &t.pp_stage_layers},
      {"train.ep", &t.ep},
      {"train.gpu_zero1", &t.gpu_zero1},
      {"optim.lr", &c.optim.lr},
      {"optim.beta1", &c.optim.beta1},
      {"optim.beta2", &c.optim.beta2},
      {"optim.eps", &c.optim.eps},
      {"optim.weight_decay", &c.optim.weight_decay},
      {"optim.grad_clip", &c.optim.grad_clip},
      {"schedule.warmup_steps", &c.schedule.warmup_steps},
      {"schedule.decay_start", &c.schedule.decay_start},
      {"schedule.decay_end", &c.schedule.decay_end},
      {"schedule.min_lr", &c.schedule.min_lr},
      {"schedule.final_start", &c.schedule.final_start},
      {"schedule.final_lr", &c.schedule.final_lr},
      {"batch_ramp.start_sequences", &c.batch_ramp.start_sequences},
      {"batch_ramp.ramp_tokens", &c.batch_ramp.ramp_tokens},
      {"data.train_path", &c.data.train_path},
      {"data.val_path", &c.data.val_path},
      {"data.val_fraction", &c.data.val_fraction},
      {"data.tokenizer", &c.data.tokenizer},
      {"data.mix", &c.data.mix},
      {"data.fim_rate", &c.data.fim_rate},
      {"generate.max_new_tokens", &c.generate.max_new_tokens},
      {"generate.temperature", &c.generate.temperature},
      {"generate.top_k", &c.generate.top_k},
      {"generate.top_p", &c.generate.top_p},
      {"generate.seed", &c.generate.seed},
  };
}

constexpr const char* kHfConfigKey = "model.hf_config";
// A string setting that TOML may also give as an array of integers.
constexpr const char* kStageLayersKey = "train.pp_stage_layers";

// ---- reading values ---------------------------------------------------------------------------

std::string location(const std::string& file, const toml::source_region& region) {
  if (region.begin.line == 0) return file;
  return fmt::format("{}:{}:{}", file, region.begin.line, region.begin.column);
}

// A short description of a TOML value for error messages: `string "abc"`, `float 1.5`, ...
std::string describe(const toml::node& node) {
  std::ostringstream text;
  if (node.is_string()) {
    text << "string \"" << node.as_string()->get() << "\"";
  } else if (node.is_integer()) {
    text << "integer " << node.as_integer()->get();
  } else if (node.is_floating_point()) {
    text << "float " << node.as_floating_point()->get();
  } else if (node.is_boolean()) {
    text << "boolean " << (node.as_boolean()->get() ? "true" : "false");
  } else if (node.is_array()) {
    text << "an array";
  } else if (node.is_table()) {
    text << "a table";
  } else {
    text << "a date/time";
  }
  return text.str();
}

// Integers, and floats with an integral value (so 469e9 can be written for a token count).
bool read_integer(const toml::node& node, int64_t& out) {
  if (node.is_integer()) {
    out = node.as_integer()->get();
    return true;
  }
  if (node.is_floating_point()) {
    const double v = node.as_floating_point()->get();
    if (std::isfinite(v) && v == std::trunc(v) && std::fabs(v) < 9.2e18) {
      out = static_cast<int64_t>(v);
      return true;
    }
  }
  return false;
}

bool read_number(const toml::node& node, double& out) {
  if (node.is_floating_point()) {
    out = node.as_floating_point()->get();
    return true;
  }
  if (node.is_integer()) {
    out = static_cast<double>(node.as_integer()->get());
    return true;
  }
  return false;
}

// One schedule entry: [start, value] or {start = .., value = ..}.
bool read_step_value(const toml::node& node, StepValue& out) {
  if (const toml::array* pair = node.as_array()) {
    return pair->size() == 2 && read_integer(*pair->get(0), out.start) &&
           read_number(*pair->get(1), out.value);
  }
  if (const toml::table* table = node.as_table()) {
    const toml::node* start = table->get("start");
    const toml::node* value = table->get("value");
    return table->size() == 2 && start && value && read_integer(*start, out.start) &&
           read_number(*value, out.value);
  }
  return false;
}

bool read_schedule(const toml::node& node, std::vector<StepValue>& out) {
  double constant = 0.0;
  if (read_number(node, constant)) {
    out = {{0, constant}};
    return true;
  }
  const toml::array* array = node.as_array();
  if (!array) return false;
  std::vector<StepValue> pieces;
  for (const toml::node& element : *array) {
    StepValue piece;
    if (!read_step_value(element, piece)) return false;
    pieces.push_back(piece);
  }
  out = std::move(pieces);
  return true;
}

const char* expected_kind(const FieldRef& ref) {
  switch (ref.index()) {
    case 0: return "an integer";
    case 1: return "a non-negative integer";
    case 2: return "a number";
    case 3: return "true or false";
    case 4: return "a string";
    default: return "a step schedule: [[start_step, value], ...] or a single number";
  }
}

// Stores `node` into the field, or throws "<where>: <name> must be <kind>, got <what>".
void set_field(const Field& field, const toml::node& node, const std::string& where) {
  auto wrong = [&] {
    fail("{}: {} must be {}, got {}", where, field.name, expected_kind(field.ref), describe(node));
  };
  std::visit(
      [&](auto* target) {
        using T = std::remove_pointer_t<decltype(target)>;
        if constexpr (std::is_same_v<T, int64_t>) {
          if (!read_integer(node, *target)) wrong();
        } else if constexpr (std::is_same_v<T, uint64_t>) {
          int64_t v = 0;
          if (!read_integer(node, v) || v < 0) wrong();
          *target = static_cast<uint64_t>(v);
        } else if constexpr (std::is_same_v<T, double>) {
          if (!read_number(node, *target)) wrong();
        } else if constexpr (std::is_same_v<T, bool>) {
          if (!node.is_boolean()) wrong();
          *target = node.as_boolean()->get();
        } else if constexpr (std::is_same_v<T, std::string>) {
          if (field.name == kStageLayersKey && node.is_array()) {
            // A list of layer counts, kept as its text "3,4,3,2" (parallel/stage_layout.h).
            std::string text;
            for (const toml::node& element : *node.as_array()) {
              int64_t n = 0;
              if (!element.is_integer() || (n = element.as_integer()->get()) < 0)
                fail("{}: {} must be \"auto\", \"even\" or an array of non-negative layer "
                     "counts, got an element {}",
                     where, field.name, describe(element));
              text += fmt::format("{}{}", text.empty() ? "" : ",", n);
            }
            if (text.empty())
              fail("{}: {} must be \"auto\", \"even\" or an array of layer counts, got an "
                   "empty array",
                   where, field.name);
            *target = text;
            return;
          }
          if (!node.is_string()) wrong();
          *target = node.as_string()->get();
        } else {
          if (!read_schedule(node, *target)) {
            wrong();
          }
        }
      },
      field.ref);
}

// Levenshtein distance, for "did you mean" hints on misspelt keys.
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::string suggestion(const std::string& name, const std::vector<Field>& fields) {
  std::string best;
  size_t best_distance = 4;  // only close matches
  for (const Field& f : fields) {
    const size_t d = edit_distance(name, f.name);
    if (d < best_distance) {
      best_distance = d;
      best = f.name;
    }
  }
  return best.empty() ? "" : fmt::format(" (did you mean {}?)", best);
}

class FieldTable {
 public:
  explicit FieldTable(Config& config) : fields_(config_fields(config)) {
    for (size_t i = 0; i < fields_.size(); ++i) index_[fields_[i].name] = i;
  }
  const Field* find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &fields_[it->second];
  }
  bool is_sub_table(const std::string& name) const {
    auto it = index_.lower_bound(name + ".");
    return it != index_.end() && it->first.starts_with(name + ".");
  }
  const std::vector<Field>& fields() const { return fields_; }

 private:
  std::vector<Field> fields_;
  std::map<std::string, size_t> index_;
};

// Applies every key of `table` (named `prefix`) to the config; unknown keys are errors.
void apply_table(const toml::table& table, const std::string& prefix, const FieldTable& fields,
                 const std::string& file) {
  for (const auto& [key, node] : table) {
    const std::string name = prefix + "." + std::string(key.str());
    if (name == kHfConfigKey) continue;  // read before the other keys
    if (const Field* field = fields.find(name)) {
      set_field(*field, node, location(file, node.source()));
    } else if (node.is_table() && fields.is_sub_table(name)) {
      apply_table(*node.as_table(), name, fields, file);
    } else {
      fail("{}: unknown key {}{}", location(file, key.source()), name,
           suggestion(name, fields.fields()));
    }
  }
}

void apply_document(const toml::table& document, const FieldTable& fields,
                    const std::string& file) {
  for (const auto& [key, node] : document) {
    const std::string section(key.str());
    const bool known = std::find(std::begin(kSections), std::end(kSections), section) !=
                       std::end(kSections);
    FRUGAL_CHECK(known, "{}: unknown section [{}] (sections: model, train, optim, schedule, "
                 "batch_ramp, data, generate)", location(file, key.source()), section);
    FRUGAL_CHECK(node.is_table(), "{}: {} must be a section ([{}]), got {}",
                 location(file, key.source()), section, section, describe(node));
    apply_table(*node.as_table(), section, fields, file);
  }
}

struct Override {
  std::string text;   // as given, for messages
  std::string name;   // "train.lr"
  std::string value;  // "3e-4"
};

std::string trim(const std::string& s) {
  const size_t begin = s.find_first_not_of(" \t");
  if (begin == std::string::npos) return "";
  const size_t end = s.find_last_not_of(" \t");
  return s.substr(begin, end - begin + 1);
}

std::string unquote(const std::string& s) {
  const bool quoted = s.size() >= 2 && s.front() == '"' && s.back() == '"';
  return quoted ? s.substr(1, s.size() - 2) : s;
}

Override split_override(const std::string& text) {
  std::string body = text.starts_with("--") ? text.substr(2) : text;
  const size_t eq = body.find('=');
  FRUGAL_CHECK(eq != std::string::npos, "override '{}': expected section.key=value", text);
  Override result{text, trim(body.substr(0, eq)), trim(body.substr(eq + 1))};
  FRUGAL_CHECK(result.name.find('.') != std::string::npos,
               "override '{}': expected section.key=value", text);
  return result;
}

// Parses an override's value as a TOML value ("v = <value>"); strings may also be bare.
void apply_override(const Override& o, const FieldTable& fields) {
  const std::string where = fmt::format("override '{}'", o.text);
  const Field* field = fields.find(o.name);
  FRUGAL_CHECK(field, "{}: unknown key {}{}", where, o.name, suggestion(o.name, fields.fields()));
  const bool is_string = std::holds_alternative<std::string*>(field->ref);
  const bool quoted = o.value.size() >= 2 && o.value.front() == '"' && o.value.back() == '"';
  if (is_string && !quoted) {
    *std::get<std::string*>(field->ref) = o.value;
    return;
  }
  toml::table parsed;
  try {
    parsed = toml::parse("v = " + o.value);
  } catch (const toml::parse_error&) {
    fail("{}: malformed value '{}' for {} (expected {})", where, o.value, o.name,
         expected_kind(field->ref));
  }
  const toml::node* node = parsed.get("v");
  FRUGAL_CHECK(node && parsed.size() == 1, "{}: malformed value '{}' for {} (expected {})", where,
               o.value, o.name, expected_kind(field->ref));
  set_field(*field, *node, where);
}

std::string resolve_path(const std::string& path, const std::string& relative_to_file) {
  std::filesystem::path p(path);
  if (p.is_absolute() || relative_to_file.empty()) return path;
  return (std::filesystem::path(relative_to_file).parent_path() / p).string();
}

// ---- writing values ---------------------------------------------------------------------------

std::string toml_string(const std::string& s) {
  std::string out = "\"";
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20 || c == 0x7f) {
      out += fmt::format("\\u{:04X}", c);
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

// Shortest text that reads back to the same double, always a TOML float.
std::string toml_double(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  std::string s = fmt::format("{}", v);
  if (s.find_first_of(".e") == std::string::npos) s += ".0";
  return s;
}

std::string format_value(const FieldRef& ref, bool for_toml) {
  return std::visit(
      [&](auto* value) -> std::string {
        using T = std::remove_pointer_t<decltype(value)>;
        if constexpr (std::is_same_v<T, int64_t>) {
          return fmt::format("{}", *value);
        } else if constexpr (std::is_same_v<T, uint64_t>) {
          FRUGAL_CHECK(!for_toml || *value <= static_cast<uint64_t>(INT64_MAX),
                       "seed {} does not fit a TOML integer", *value);
          return fmt::format("{}", *value);
        } else if constexpr (std::is_same_v<T, double>) {
          return toml_double(*value);
        } else if constexpr (std::is_same_v<T, bool>) {
          return *value ? "true" : "false";
        } else if constexpr (std::is_same_v<T, std::string>) {
          return for_toml ? toml_string(*value) : (value->empty() ? "\"\"" : *value);
        } else {
          std::string s = "[";
          for (size_t i = 0; i < value->size(); ++i) {
            s += fmt::format("{}[{}, {}]", i ? ", " : "", (*value)[i].start,
                             toml_double((*value)[i].value));
          }
          return s + "]";
        }
      },
      ref);
}

std::string table_of(const std::string& name) { return name.substr(0, name.rfind('.')); }
std::string key_of(const std::string& name) { return name.substr(name.rfind('.') + 1); }

}  // namespace

Config load_config(const std::string& toml_path, const std::vector<std::string>& overrides) {
  Config config;
  FieldTable fields(config);
  toml::table document;
  if (!toml_path.empty()) {
    FRUGAL_CHECK(std::filesystem::is_regular_file(toml_path), "{}: cannot read config file",
                 toml_path);
    try {
      document = toml::parse_file(toml_path);
    } catch (const toml::parse_error& e) {
      fail("{}: malformed TOML: {}", location(toml_path, e.source()), e.description());
    }
  }
  std::vector<Override> parsed_overrides;
  for (const std::string& text : overrides) parsed_overrides.push_back(split_override(text));

  // The Hugging Face config is the base of the model section: the last hf_config override wins,
  // else the file's (relative to the file).
  std::string hf_path;
  if (const toml::node* node = document.at_path(kHfConfigKey).node()) {
    FRUGAL_CHECK(node->is_string(), "{}: {} must be a string, got {}",
                 location(toml_path, node->source()), kHfConfigKey, describe(*node));
    hf_path = resolve_path(node->as_string()->get(), toml_path);
  }
  for (const Override& o : parsed_overrides) {
    if (o.name == kHfConfigKey) hf_path = unquote(o.value);
  }
  if (!hf_path.empty()) config.model = load_hf_config(hf_path);

  apply_document(document, fields, toml_path);
  for (const Override& o : parsed_overrides) {
    if (o.name != kHfConfigKey) apply_override(o, fields);
  }
  try {
    validate(config);
  } catch (const Error& e) {
    const std::string source = toml_path.empty() ? std::string("config") : toml_path;
    fail("{}{}: {}", source, overrides.empty() ? "" : " (with overrides)", e.what());
  }
  return config;
}

std::string config_to_toml(const Config& config) {
  Config copy = config;
  std::string out = "# frugal configuration (resolved: every setting, defaults included)\n";
  std::string open_table;
  for (const Field& field : config_fields(copy)) {
    const std::string table = table_of(field.name);
    if (table != open_table) {
      out += fmt::format("{}[{}]\n", open_table.empty() ? "" : "\n", table);
      open_table = table;
    }
    out += fmt::format("{} = {}\n", key_of(field.name), format_value(field.ref, true));
  }
  return out;
}

std::string settings_table(const Config& config) {
  Config copy = config;
  const std::vector<Field> fields = config_fields(copy);
  size_t width = 0;
  for (const Field& f : fields) width = std::max(width, f.name.size());
  std::string out = "effective settings\n";
  std::string section;
  for (const Field& field : fields) {
    const std::string this_section = field.name.substr(0, field.name.find('.'));
    if (this_section != section) {
      out += "\n";
      section = this_section;
    }
    out += fmt::format("  {:<{}}  {}\n", field.name, width, format_value(field.ref, false));
  }
  const ModelConfig& m = config.model;
  int64_t moe_layers = 0;
  for (int64_t layer = 0; layer < m.num_hidden_layers; ++layer) moe_layers += m.is_moe_layer(layer);
  out += "\n  derived\n";
  out += fmt::format("  {:<{}}  {}\n", "qk_head_dim", width, m.qk_head_dim());
  out += fmt::format("  {:<{}}  {} of {}\n", "moe_layers", width, moe_layers, m.num_hidden_layers);
  out += fmt::format("  {:<{}}  {:.6g}\n", "softmax_scale", width, m.softmax_scale());
  out += fmt::format("  {:<{}}  {}\n", "tokens_per_step", width,
                     config.train.batch_sequences * config.train.seq_len);
  return out;
}

}  // namespace frugal
