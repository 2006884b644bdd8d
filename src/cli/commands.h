// The subcommands of the frugal binary; each returns the process exit code.
#pragma once

#include <string>
#include <vector>

namespace frugal {

int cmd_train(const std::vector<std::string>& args);
int cmd_generate(const std::vector<std::string>& args);
int cmd_data(const std::vector<std::string>& args);
int cmd_convert(const std::vector<std::string>& args);
int cmd_serve(const std::vector<std::string>& args);
int cmd_chat(const std::vector<std::string>& args);

}  // namespace frugal
