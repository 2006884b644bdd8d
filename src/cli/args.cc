#include "cli/args.h"

#include "core/error.h"

namespace frugal {

ParsedArgs parse_args(const std::vector<std::string>& args, const std::set<std::string>& options,
                      const std::set<std::string>& flags) {
  ParsedArgs out;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a.rfind("--", 0) != 0 || a == "--") {
      out.positional.push_back(a);
      continue;
    }
    std::string body = a.substr(2), value;
    size_t eq = body.find('=');
    bool has_value = eq != std::string::npos;
    std::string name = has_value ? body.substr(0, eq) : body;
    if (has_value) value = body.substr(eq + 1);
    if (name.find('.') != std::string::npos) {  // a config override
      if (!has_value) {
        FRUGAL_CHECK(i + 1 < args.size(), "{} needs a value (--{}=VALUE)", a, name);
        value = args[++i];
      }
      out.overrides.push_back(name + "=" + value);
    } else if (flags.count(name)) {
      FRUGAL_CHECK(!has_value, "--{} takes no value", name);
      out.flags.insert(name);
    } else if (options.count(name)) {
      if (!has_value) {
        FRUGAL_CHECK(i + 1 < args.size(), "--{} needs a value", name);
        value = args[++i];
      }
      out.options[name] = value;
    } else {
      fail("unknown option {} (see --help)", a);
    }
  }
  return out;
}

}  // namespace frugal
