// FlowControl: credit accounting for one RDMA connection (one direction's sender state and the
// other direction's receiver state). Pure logic, no verbs: tests drive it directly.
//
// Resources the sender must hold before it posts:
//   - a receive credit: one of the `recv_credits` receive buffers the peer posted for normal
//     messages (inline frames and staged-payload descriptors);
//   - for a staged payload, also a staging-slot credit: one of the peer's `slots` staging
//     slots that our RDMA WRITE fills. Slots are used round robin (slot = n % slots); the peer
//     processes messages in order, so slots come back in order and a count suffices.
//   - and a free local send buffer / local slot (tracked by the transport, freed by the
//     send's completion).
//
// Returning credits: every outgoing message piggybacks what this side owes (receive buffers
// reposted and slots drained since the last return). When nothing is going out and the debt
// reaches `threshold` receive credits or any slot, a credit-only message is sent. Credit-only
// messages use `ctrl_reserve` extra receive buffers the peer posts beyond `recv_credits`; they
// are not themselves returned: a credit-only message's buffer becomes reusable when its SEND
// completes here (the peer reposts it as soon as it polls it; until then the NIC retries on
// RNR, rnr_retry = 7). At most `ctrl_reserve` credit-only messages are outstanding.
//
// Invariants (checked by OnReturned, which refuses a return that would break them):
//   0 <= send_credits <= recv_credits, 0 <= slot_credits <= slots, 0 <= ctrl_avail <= reserve.
// No deadlock: a sender stalled on receive credits has `recv_credits` unreturned messages at
// the peer, so once the peer processes them it owes >= threshold (threshold <= recv_credits)
// and sends a credit-only message, which needs only ctrl_avail > 0, and ctrl_avail comes back
// through local send completions alone. Stalls on slots are returned as soon as one slot is.
#pragma once

#include <algorithm>
#include <cstdint>

namespace dsm::rdma {

class FlowControl {
 public:
  struct Returns {
    uint16_t credits = 0;
    uint16_t slots = 0;
  };

  FlowControl(uint32_t recv_credits, uint32_t ctrl_reserve, uint32_t slots, uint32_t threshold)
      : recv_credits_(recv_credits),
        ctrl_reserve_(ctrl_reserve),
        slots_(slots),
        threshold_(std::clamp<uint32_t>(threshold, 1, recv_credits)),
        send_credits_(recv_credits),
        slot_credits_(slots),
        ctrl_avail_(ctrl_reserve) {}

  // --- sender side ---
  bool CanSendInline() const { return send_credits_ > 0; }
  bool CanSendStaged() const { return send_credits_ > 0 && slot_credits_ > 0; }
  // The slot the next staged message uses.
  uint32_t next_slot() const { return static_cast<uint32_t>(staged_sent_ % slots_); }
  void ConsumeInline() { --send_credits_; }
  // Returns the slot used.
  uint32_t ConsumeStaged() {
    uint32_t slot = next_slot();
    --send_credits_;
    --slot_credits_;
    ++staged_sent_;
    return slot;
  }
  // Applies what the peer returned; false when it returns more than is outstanding (a
  // protocol violation: the connection must be closed).
  bool OnReturned(uint32_t credits, uint32_t slots) {
    if (send_credits_ + credits > recv_credits_ || slot_credits_ + slots > slots_) return false;
    send_credits_ += credits;
    slot_credits_ += slots;
    return true;
  }

  // --- receiver side ---
  // A normal message was processed and its receive buffer reposted (staged: its slot drained).
  void OnProcessed(bool staged) {
    ++owed_credits_;
    if (staged) ++owed_slots_;
  }
  // The slot the next staged message from the peer must name.
  uint32_t expected_recv_slot() const { return static_cast<uint32_t>(staged_received_ % slots_); }
  void OnStagedReceived() { ++staged_received_; }
  // Takes the debt to piggyback on an outgoing message.
  Returns TakeReturns() {
    Returns r{static_cast<uint16_t>(owed_credits_), static_cast<uint16_t>(owed_slots_)};
    owed_credits_ = 0;
    owed_slots_ = 0;
    return r;
  }
  bool ShouldSendCreditMessage() const {
    return ctrl_avail_ > 0 && (owed_credits_ >= threshold_ || owed_slots_ > 0);
  }
  void OnCreditMessagePosted() { --ctrl_avail_; }
  void OnCreditMessageCompleted() {
    if (ctrl_avail_ < ctrl_reserve_) ++ctrl_avail_;
  }

  uint32_t send_credits() const { return send_credits_; }
  uint32_t slot_credits() const { return slot_credits_; }
  uint32_t ctrl_avail() const { return ctrl_avail_; }
  uint32_t owed_credits() const { return owed_credits_; }
  uint32_t owed_slots() const { return owed_slots_; }

 private:
  const uint32_t recv_credits_, ctrl_reserve_, slots_, threshold_;
  uint32_t send_credits_, slot_credits_, ctrl_avail_;
  uint32_t owed_credits_ = 0, owed_slots_ = 0;
  uint64_t staged_sent_ = 0, staged_received_ = 0;
};

}  // namespace dsm::rdma
