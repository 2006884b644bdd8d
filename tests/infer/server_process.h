// `frugal serve` as a child process for the tests that talk to it from outside: started with
// --port 0, its port read from the line it prints once listening; terminate() sends SIGTERM and
// returns the exit status; the destructor kills it if it is still running.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"

extern char** environ;

namespace frugal::testing {

class ServerProcess {
 public:
  // `frugal serve ARGS --port 0`, standard error into stderr_path.
  ServerProcess(const std::vector<std::string>& serve_args, const std::string& stderr_path) {
    int fds[2];
    FRUGAL_CHECK(::pipe2(fds, O_CLOEXEC) == 0, "pipe failed");  // only the dup2'ed copy survives exec
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, stderr_path.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    std::vector<std::string> args = {FRUGAL_BINARY, "serve"};
    args.insert(args.end(), serve_args.begin(), serve_args.end());
    args.push_back("--port");
    args.push_back("0");
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    setenv("OMP_NUM_THREADS", "1", 1);
    setenv("OPENBLAS_NUM_THREADS", "1", 1);
    const int rc = posix_spawn(&pid_, FRUGAL_BINARY, &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(fds[1]);
    out_ = fds[0];
    FRUGAL_CHECK(rc == 0, "posix_spawn {} failed: {}", FRUGAL_BINARY, rc);
    // "frugal serve: ... listening on http://127.0.0.1:PORT"
    std::string line;
    while (line.find('\n') == std::string::npos) {
      pollfd p{out_, POLLIN, 0};
      if (::poll(&p, 1, 30000) <= 0) break;
      char buffer[256];
      const ssize_t n = ::read(out_, buffer, sizeof buffer);
      if (n <= 0) break;
      line.append(buffer, static_cast<size_t>(n));
    }
    const size_t colon = line.rfind(':');
    if (line.find("listening on http://127.0.0.1:") != std::string::npos && colon != std::string::npos)
      port_ = std::atoi(line.c_str() + colon + 1);
  }
  ~ServerProcess() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (out_ >= 0) ::close(out_);
  }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  bool alive() {
    if (exited_) return false;
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      exited_ = true;
      status_ = status;
    }
    return !exited_;
  }
  // SIGTERM, then the exit status (-1 if still running after `timeout`).
  int terminate(std::chrono::seconds timeout) {
    if (alive()) ::kill(pid_, SIGTERM);
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (alive() && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (!exited_) return -1;
    return WIFEXITED(status_) ? WEXITSTATUS(status_) : 128 + WTERMSIG(status_);
  }

 private:
  pid_t pid_ = -1;
  int out_ = -1;
  int port_ = 0;
  bool exited_ = false;
  int status_ = 0;
};

}  // namespace frugal::testing
