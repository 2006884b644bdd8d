// A minimal blocking HTTP/1.1 client over loopback sockets for the server tests. It writes exactly
// the bytes it is given (so tests can send malformed or oversized requests), reads the response
// until the server closes the connection (requests say "Connection: close"), skips interim
// "100 Continue" responses and undoes chunked transfer encoding. sse_events() checks the
// server-sent-event framing of a stream body strictly.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>

namespace frugal::testing {

struct HttpResponse {
  int status = 0;  // 0: no response (see error)
  std::map<std::string, std::string> headers;  // names in lower case
  std::string body;                             // chunked encoding undone
  std::string raw;                              // every byte received
  std::string error;                            // socket-level problem, if any

  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
  }
};

// A connected socket to 127.0.0.1:port with send/receive timeouts, or -1.
inline int connect_loopback(int port, int timeout_ms) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Writes all bytes (false when the peer closed or the timeout passed).
inline bool send_all(int fd, const std::string& bytes) {
  size_t sent = 0;
  while (sent < bytes.size()) {
    const ssize_t n = ::send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

// Parses raw response bytes (after a complete read) into `r`.
inline void parse_response(HttpResponse& r) {
  size_t pos = 0;
  for (;;) {
    const size_t head_end = r.raw.find("\r\n\r\n", pos);
    if (head_end == std::string::npos) {
      if (r.error.empty()) r.error = "incomplete response head";
      return;
    }
    const std::string head = r.raw.substr(pos, head_end - pos);
    pos = head_end + 4;
    if (head.rfind("HTTP/1.1 ", 0) != 0 && head.rfind("HTTP/1.0 ", 0) != 0) {
      r.error = "not an HTTP response: " + head.substr(0, 40);
      return;
    }
    r.status = std::atoi(head.c_str() + 9);
    r.headers.clear();
    size_t line_start = head.find("\r\n");
    while (line_start != std::string::npos) {
      line_start += 2;
      const size_t line_end = head.find("\r\n", line_start);
      const std::string line = head.substr(line_start, line_end - line_start);
      const size_t colon = line.find(':');
      if (colon != std::string::npos) {
        std::string name = line.substr(0, colon);
        for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        size_t v = colon + 1;
        while (v < line.size() && line[v] == ' ') ++v;
        r.headers[name] = line.substr(v);
      }
      line_start = line_end;
    }
    if (r.status != 100) break;  // an interim "100 Continue": the real response follows
  }
  if (r.header("transfer-encoding") == "chunked") {
    std::string body;
    for (;;) {
      const size_t size_end = r.raw.find("\r\n", pos);
      if (size_end == std::string::npos) {
        r.error = "truncated chunked body";
        break;
      }
      const size_t size = std::strtoul(r.raw.substr(pos, size_end - pos).c_str(), nullptr, 16);
      pos = size_end + 2;
      if (size == 0) break;
      if (pos + size + 2 > r.raw.size()) {
        r.error = "truncated chunk";
        break;
      }
      body.append(r.raw, pos, size);
      pos += size + 2;
    }
    r.body = body;
  } else if (!r.header("content-length").empty()) {
    const size_t length = std::strtoul(r.header("content-length").c_str(), nullptr, 10);
    r.body = r.raw.substr(pos, length);
    if (r.body.size() != length) r.error = "truncated body";
  } else {
    r.body = r.raw.substr(pos);
  }
}

// True when `raw` holds a whole response: a final head and its body (by Content-Length, or
// chunked up to the last chunk). Without either, only the server closing ends the body.
inline bool response_complete(const std::string& raw) {
  HttpResponse r;
  r.raw = raw;
  parse_response(r);
  if (r.status == 0 || r.status == 100 || !r.error.empty()) return false;
  if (r.header("transfer-encoding") == "chunked") return raw.size() >= 5 && raw.ends_with("0\r\n\r\n");
  return !r.header("content-length").empty();
}

// Sends `request` as is and reads until the response is complete or the server closes.
inline HttpResponse send_raw(int port, const std::string& request, int timeout_ms = 20000) {
  HttpResponse r;
  const int fd = connect_loopback(port, timeout_ms);
  if (fd < 0) {
    r.error = fmt::format("connect failed: {}", std::strerror(errno));
    return r;
  }
  if (!send_all(fd, request)) r.error = fmt::format("send failed: {}", std::strerror(errno));
  char buffer[16384];
  for (;;) {
    const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
    if (n > 0) {
      r.raw.append(buffer, static_cast<size_t>(n));
      if (response_complete(r.raw)) break;
      continue;
    }
    if (n < 0 && r.raw.empty()) r.error += fmt::format(" recv failed: {}", std::strerror(errno));
    break;
  }
  ::close(fd);
  if (!r.raw.empty()) parse_response(r);
  return r;
}

inline std::string http_message(const std::string& method, const std::string& path,
                                const std::string& body,
                                const std::vector<std::string>& headers = {}) {
  std::string request = fmt::format("{} {} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n",
                                    method, path);
  for (const std::string& h : headers) request += h + "\r\n";
  if (method == "POST" || !body.empty()) {
    request += "Content-Type: application/json\r\n";
    request += fmt::format("Content-Length: {}\r\n", body.size());
  }
  return request + "\r\n" + body;
}

inline HttpResponse http_get(int port, const std::string& path,
                             const std::vector<std::string>& headers = {}) {
  return send_raw(port, http_message("GET", path, "", headers));
}

inline HttpResponse http_post(int port, const std::string& path, const std::string& body,
                              const std::vector<std::string>& headers = {}) {
  return send_raw(port, http_message("POST", path, body, headers));
}

// Sends a request, reads until at least `min_bytes` of response arrived, then hangs up.
// Returns the bytes read.
inline std::string read_then_hang_up(int port, const std::string& request, size_t min_bytes,
                                     int timeout_ms = 20000) {
  const int fd = connect_loopback(port, timeout_ms);
  if (fd < 0) return "";
  std::string got;
  if (send_all(fd, request)) {
    char buffer[4096];
    while (got.size() < min_bytes) {
      const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
      if (n <= 0) break;
      got.append(buffer, static_cast<size_t>(n));
    }
  }
  ::close(fd);
  return got;
}

// The payloads of a server-sent-event stream. `framing_ok` is false unless the body is exactly a
// sequence of "data: <payload>\n\n" events whose last payload is "[DONE]".
inline std::vector<std::string> sse_events(const std::string& body, bool& framing_ok) {
  std::vector<std::string> events;
  framing_ok = true;
  size_t pos = 0;
  while (pos < body.size()) {
    const size_t end = body.find("\n\n", pos);
    if (end == std::string::npos || body.compare(pos, 6, "data: ") != 0) {
      framing_ok = false;
      break;
    }
    const std::string payload = body.substr(pos + 6, end - pos - 6);
    if (payload.find('\n') != std::string::npos) framing_ok = false;
    events.push_back(payload);
    pos = end + 2;
  }
  if (events.empty() || events.back() != "[DONE]") framing_ok = false;
  for (size_t i = 0; i + 1 < events.size(); ++i)
    if (events[i] == "[DONE]") framing_ok = false;
  return events;
}

}  // namespace frugal::testing
