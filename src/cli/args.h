// Command-line parsing shared by the subcommands:
//   positional arguments, `--section.key=value` (or `--section.key value`) config overrides,
//   `--name=value` / `--name value` options the subcommand declares, and declared flags.
// Anything else is an error naming the argument.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

namespace frugal {

struct ParsedArgs {
  std::vector<std::string> positional;
  std::vector<std::string> overrides;  // "section.key=value"
  std::map<std::string, std::string> options;
  std::set<std::string> flags;

  bool has(const std::string& flag) const { return flags.count(flag) != 0; }
  std::string option(const std::string& name, const std::string& fallback = "") const {
    auto it = options.find(name);
    return it == options.end() ? fallback : it->second;
  }
};

ParsedArgs parse_args(const std::vector<std::string>& args, const std::set<std::string>& options,
                      const std::set<std::string>& flags);

}  // namespace frugal
