// Message: the in-memory form of everything nodes say to each other. Pure data: the coherence
// and lock layers build and consume Messages; transports encode them (wire.h) and move bytes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dsm/options.h"

namespace dsm {

using RegionId = uint64_t;
using PageIndex = uint64_t;
inline constexpr size_t kPageSize = 4096;
// The largest payload a message may carry: a run of 64 pages plus room for a small header.
inline constexpr size_t kMaxRunPages = 64;
inline constexpr size_t kMaxPayload = kMaxRunPages * kPageSize + 4096;
// Region names (kRegionOpen) and barrier group names (kBarrierEnter): 1..255 bytes, no NUL.
inline constexpr size_t kMaxNameLength = 255;

// Wire values are part of the protocol version: never renumber, only append. A new type
// needs a row in the validation table (validation.cc) and a sender rule (authority.cc).
enum class MsgType : uint8_t {
  // Connection set-up.
  kHello = 1,         // arg = cluster size; first message on every connection
  // Region membership (requester -> home).
  kRegionOpen = 2,    // arg = size in bytes (whole pages, > 0), page = the opener's identity
                      // word (protocol/region_identity.h), payload = region name (a name)
  kRegionOpenReply = 3,  // arg = ErrorCode; when the answerer maps the region: page = its
                         // identity word, payload = its size (8 bytes LE, whole pages, > 0);
                         // otherwise page = 0 and no payload
  // Coherence: requester -> home.
  kGetS = 10,         // read miss
  kGetM = 11,         // write miss or upgrade
  kPut = 12,          // voluntary release; arg = PutKind, payload = page if it was Modified
                      // (a write-back may carry a run: pages [page, page + n), one home)
  kSyncReq = 13,      // persist what this node has written back; reply kSyncAck
  kGetSRun = 14,      // readahead: Shared copies of pages [page, page + arg), arg in
                      // 1..kMaxRunPages, all homed at the receiver; reply kDataRun
  // Coherence: home -> requester.
  kData = 20,         // grant with data; arg = Grant, payload = 1 page
  kGrant = 21,        // grant without data (upgrade of a valid Shared copy); arg = Grant
  kNack = 22,         // request failed; arg = ErrorCode
  kSyncAck = 23,      // arg = ErrorCode
  kDataRun = 24,      // answer to kGetSRun: arg = pages asked for (echoed), payload = the
                      // first k of them (0 <= k <= arg), each now granted Shared; the rest
                      // were not granted (busy, Modified elsewhere, lost) and stay Invalid
  // Coherence: home -> holder, and the answers.
  kInv = 30,          // drop your Shared copy
  kRecall = 31,       // you hold it Modified: send it back; arg = RecallKind
  kInvAck = 32,
  kRecallAck = 33,    // payload = page if the sender held it Modified; arg = PageState after
  // Locks: requester <-> arbiter. The arbiter of a region's locks is the home of its page 0.
  // The packing and the reply codes are in protocol/lock_fields.h; the rules below are
  // enforced by the table of protocol/validation.h. Unless stated, payload is empty.
  kLockAcquire = 40,  // region; page = byte offset; req_id = lock id (non-zero, unique per
                      // sender, never reused); arg = len (bits 0..47, >= 1) | mode (bits
                      // 48..51: 1 shared, 2 exclusive) | flags (bits 52..55: bit 0 = try,
                      // others 0) | bits 56..63 = 0. offset + len must not overflow 2^64.
  kLockReply = 41,    // region; req_id = the lock id; page = 0; arg = LockReplyCode (bits
                      // 0..7: 1..7) | bit 8 = previous_holder_died (only with kGranted) |
                      // bit 9 = a predecessor is named, bits 16..23 = its node (< cluster
                      // size; only with kQueued); other bits 0. A request may get kQueued
                      // (at most one naming a predecessor) and later one final code.
  kLockRelease = 42,  // region; req_id = lock id; page = 0, arg = 0. Releases a held lock;
                      // no reply. Unknown ids are ignored.
  kLockCancel = 43,   // region; req_id = lock id; page = 0, arg = 0. Withdraws a request
                      // whatever its state at the arbiter (queued: dropped; already granted:
                      // released); no reply.
  // Barriers: member <-> barrier arbiter (the lowest node id in the member mask).
  kBarrierEnter = 44,   // req_id = barrier request id; page = generation; arg = member mask
                        // (non-zero, no bit >= cluster size, src's bit set); payload = group
                        // name (a name); region = 0.
  kBarrierReply = 45,   // req_id; page = generation; arg = BarrierReplyCode (bits 0..7: 1..5)
                        // | down node id (bits 8..15, only with kNodeDown, < cluster size);
                        // other bits 0; region = 0, except kAborted after a member's cancel:
                        // region = the mask of members that had entered (no bit >= cluster
                        // size), so every member can name the ones that had not.
  kBarrierCancel = 46,  // as kBarrierEnter: the member stopped waiting (deadline); answered
                        // like the enter (kAborted with the entered mask if still open).
  // One-message hand-off (lock/lock_table.h): the arbiter names a holder's successor; the
  // holder's release grants the lock directly to it and tells the arbiter.
  kLockSuccessor = 47,  // arbiter -> holder. region; req_id = the holder's lock id; page = the
                        // successor's lock id (non-zero); arg = successor node (bits 0..7,
                        // < cluster size) | bit 8 = previous_holder_died; other bits 0.
  kLockHandoff = 48,    // holder -> successor. region; req_id = the successor's lock id;
                        // page = the releaser's lock id (non-zero); arg = 0 or 1
                        // (previous_holder_died). Grants the lock; accepted only from the
                        // predecessor the arbiter named in its kQueued reply.
  kLockPassed = 49,     // holder -> arbiter. region; req_id = the releaser's lock id; page =
                        // the successor's lock id (non-zero); arg = successor node (< cluster
                        // size). Releases the lock and records the successor as holding it
                        // (no reply) if the arbiter named that successor; else a release.
  // RDMA control at 60.
  // Membership: a node leaving in order (node.h: Shutdown, Finalize). No reply.
  kGoodbye = 50,  // arg = GoodbyeKind; region = 0, page = 0, payload empty. Per-pair FIFO: it
                  // follows every message the sender sent to this peer before it.
  // Liveness: any message renews the sender's lease at the receiver; this one is sent only
  // when nothing else went to the peer for an eighth of the lease. region, page, req_id and
  // arg are 0; no payload; no reply.
  kHeartbeat = 51,
  // Statistics (Node::GatherStats): any node <-> any node.
  kStatsRequest = 80,  // req_id = gather id (non-zero); region, page, arg = 0; no payload.
  kStatsReply = 81,    // req_id = the gather id; arg = number of counters (1..kMaxStatsFields);
                       // payload = arg little-endian uint64 values in dsm::Stats::ForEachField
                       // order (flags 0/1); region, page = 0. A receiver reads the fields it
                       // knows and ignores the rest.
};
inline constexpr uint64_t kMaxStatsFields = 512;

// Numbers carried in `arg` of kNack / kRegionOpenReply / kSyncAck.
enum class ErrorCode : uint64_t {
  kOk = 0,
  kNoSuchRegion = 1,   // the home has not mapped it (yet); retry until connect_timeout
  kSizeMismatch = 2,
  kPageLost = 3,       // the only current copy was on a node that went down
  kIoError = 4,        // the home could not read or write its file
  kShuttingDown = 5,
  kNotHome = 6,
  kPeerDown = 7,          // the node that should answer is down (answered locally for it)
  kTimedOut = 8,          // the home gave up waiting (a deadline passed there)
  kNoSpace = 9,           // the home ran out of disk space or memory
  kPermissionDenied = 10, // the home may not read or write its file
  kInvalidRequest = 11,   // the home judged the request malformed, or (kRegionOpenReply)
                          // its region's identity other than the opener's
  kInternal = 12,         // a bug at the home
  kUnavailable = 13,      // the home cannot serve it now; a later retry may succeed
  kPeerLeft = 14,         // the node that should answer has left the cluster (answered locally)
};

enum class Grant : uint64_t { kShared = 1, kModified = 2 };
enum class PutKind : uint64_t {
  kDropClean = 1,      // Shared copy dropped (eviction); no payload
  kWritebackDrop = 2,  // Modified copy written back and dropped; payload = page
  kWritebackKeep = 3,  // Modified copy written back, sender keeps it Shared; payload = page
};
enum class RecallKind : uint64_t { kDowngrade = 1, kInvalidate = 2 };
enum class GoodbyeKind : uint64_t {
  // Finalize, first phase done: every write of the sender is at its home (and persisted
  // there); the sender still serves the pages homed at it until it sends kLeaving.
  kFinalizeReady = 1,
  // The sender leaves now: it holds no copy of another node's page and its connection is about
  // to close. The receiver records it as left (not failed).
  kLeaving = 2,
};

struct Message {
  MsgType type = MsgType::kHello;
  NodeId src = 0;  // filled by the sender's transport; trusted only after validation
  NodeId dst = 0;
  RegionId region = 0;
  PageIndex page = 0;
  uint64_t req_id = 0;  // correlates a reply with its request
  uint64_t arg = 0;
  std::vector<uint8_t> payload;
};

const char* MsgTypeName(MsgType t);
std::string DebugString(const Message& m);

}  // namespace dsm
