// Admission control for generation requests: at most max_active requests generate at once; up to
// max_waiting more wait, first come first served, up to their own timeout for a free slot; a
// request arriving when max_waiting are already waiting is refused at once (the server answers
// 429 with Retry-After). A released slot goes straight to the longest-waiting request, so a
// newcomer never overtakes the queue. shutdown() refuses new requests and wakes the waiting ones.
#pragma once

#include <chrono>
#include <condition_variable>
#include <list>
#include <mutex>

namespace frugal {

class Admission {
 public:
  enum class Refusal { kQueueFull, kTimedOut, kShuttingDown };

  // A held slot; released when destroyed.
  class Ticket {
   public:
    Ticket() = default;
    explicit Ticket(Admission* owner) : owner_(owner) {}
    Ticket(Ticket&& other) noexcept : owner_(other.owner_) { other.owner_ = nullptr; }
    Ticket& operator=(Ticket&& other) noexcept;
    Ticket(const Ticket&) = delete;
    Ticket& operator=(const Ticket&) = delete;
    ~Ticket() { release(); }
    bool held() const { return owner_ != nullptr; }
    void release();

   private:
    Admission* owner_ = nullptr;
  };

  Admission(int max_active, int max_waiting);

  // A held ticket, or an unheld one with `refusal` set.
  Ticket acquire(std::chrono::milliseconds max_wait, Refusal& refusal);
  void shutdown();

  int active() const;
  int waiting() const;

 private:
  struct Waiter {
    bool granted = false;
    std::condition_variable wake;
  };
  void release_slot();

  const int max_active_, max_waiting_;
  mutable std::mutex mutex_;
  int active_ = 0;
  std::list<Waiter*> queue_;
  bool shutting_down_ = false;
};

}  // namespace frugal
