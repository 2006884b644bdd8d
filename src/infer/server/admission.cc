// Admission control: slots, a FIFO of waiters with timeouts (see admission.h).
#include "infer/server/admission.h"

#include "core/error.h"

namespace frugal {

Admission::Ticket& Admission::Ticket::operator=(Ticket&& other) noexcept {
  if (this != &other) {
    release();
    owner_ = other.owner_;
    other.owner_ = nullptr;
  }
  return *this;
}

void Admission::Ticket::release() {
  if (owner_ != nullptr) owner_->release_slot();
  owner_ = nullptr;
}

Admission::Admission(int max_active, int max_waiting)
    : max_active_(max_active), max_waiting_(max_waiting) {
  FRUGAL_CHECK(max_active >= 1, "max concurrent requests = {} must be >= 1", max_active);
  FRUGAL_CHECK(max_waiting >= 0, "max queued requests = {} must be >= 0", max_waiting);
}

Admission::Ticket Admission::acquire(std::chrono::milliseconds max_wait, Refusal& refusal) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (shutting_down_) {
    refusal = Refusal::kShuttingDown;
    return Ticket();
  }
  if (active_ < max_active_ && queue_.empty()) {
    ++active_;
    return Ticket(this);
  }
  if (static_cast<int>(queue_.size()) >= max_waiting_ || max_wait.count() <= 0) {
    refusal = Refusal::kQueueFull;
    return Ticket();
  }
  Waiter waiter;
  auto position = queue_.insert(queue_.end(), &waiter);
  waiter.wake.wait_for(lock, max_wait, [&] { return waiter.granted || shutting_down_; });
  if (waiter.granted) return Ticket(this);  // the releasing request handed its slot over
  queue_.erase(position);
  refusal = shutting_down_ ? Refusal::kShuttingDown : Refusal::kTimedOut;
  return Ticket();
}

void Admission::release_slot() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!queue_.empty() && !shutting_down_) {
    Waiter* next = queue_.front();
    queue_.pop_front();
    next->granted = true;  // active_ stays: the slot changes hands
    next->wake.notify_one();
  } else {
    --active_;
  }
}

void Admission::shutdown() {
  std::lock_guard<std::mutex> lock(mutex_);
  shutting_down_ = true;
  for (Waiter* w : queue_) w->wake.notify_one();
}

int Admission::active() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return active_;
}

int Admission::waiting() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int>(queue_.size());
}

}  // namespace frugal
