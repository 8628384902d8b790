#!/usr/bin/env python3
"""Mutation check for the coherence tests: breaks the protocol on purpose, one way at a time,
and shows which tests catch it. Every mutation must make at least one test fail.

Usage (from the repository root, after configuring a build dir, default build-coherence):
  [BUILD=build-dir] python3 tests/coherence/mutation_check.py [--fail-fast] [mutation numbers...]

It edits lib/coherence/*.cc in place and restores each file afterwards (also on error).
Exits 1 if a mutation survives (or fails to build). --fail-fast stops each run at its first
failing test (scripts/test.sh uses it: one catching test is proof enough, and it is cheaper).
Not registered with ctest: it rebuilds the test binary once per mutation.
"""
import os, subprocess, sys
build = os.environ.get("BUILD", "build-coherence")
muts = [
 ("grant M before last InvAck", "lib/coherence/directory.cc", "if (t.waiting != 0 || t.recalling) {", "if (t.recalling) {"),
 ("grant before recall ack", "lib/coherence/directory.cc", "if (t.waiting != 0 || t.recalling) {", "if (t.waiting != 0) {"),
 ("cache ignores kInv (acks without dropping)", "lib/coherence/cache.cc", "  if (st != PageState::kInvalid) DropOrLose(m.page);", "  if (false) DropOrLose(m.page);"),
 ("recall reads M page without write-protect", "lib/coherence/cache.cc", "    if (absl::Status s = port->SetAccess(page, PageState::kShared); !s.ok()) {\n      // This node cannot", "    if (absl::Status s = absl::OkStatus(); !s.ok()) {\n      // This node cannot"),
 ("home ignores recall payload", "lib/coherence/directory.cc", "    if (m.payload.size() == kPageSize) {\n      if (absl::Status stored = port->StorePage", "    if (false) {\n      if (absl::Status stored = port->StorePage"),
 ("write-back applied only when idle", "lib/coherence/directory.cc", "  if (IsLost(page)) return;\n  if (!IsOwner(page, src)) {", "  if (IsLost(page) || (flags[page] & kBusyBit)) return;\n  if (!IsOwner(page, src)) {"),
 ("no coalescing", "lib/coherence/cache.cc", "  if (it != s.pending.end()) {\n    ++s.c.coalesced_faults;", "  if (false) {\n    ++s.c.coalesced_faults;"),
 ("dataless grant trusted from requester S (ignore sharer check)", "lib/coherence/directory.cc", "const bool has_valid_copy = r.type == MsgType::kGetM && (Sharers(page) & NodeBit(r.src)) != 0;", "const bool has_valid_copy = r.type == MsgType::kGetM;"),
 ("stale fault not woken", "lib/coherence/cache.cc", "    s.port->Wake(page);\n    return;\n  }\n  if (!write) {", "    return;\n  }\n  if (!write) {"),
 ("GetS does not recall owner", "lib/coherence/directory.cc", "    } else {\n      const RecallKind kind", "    } else if (r.type == MsgType::kGetM) {\n      const RecallKind kind"),
 ("peer down: recall from dead owner not cleared", "lib/coherence/directory.cc", "if (t.recalling && t.recall_from == peer) t.recalling = false;", "(void)0;"),
 ("cache peer down does nothing", "lib/coherence/cache.cc", "for (PageIndex page : failed) s.MarkLost(page, ErrorCode::kPageLost);", "(void)failed;"),
 ("run grants Modified pages from the home's stale copy", "lib/coherence/directory.cc", "IsLost(q) ||\n        (State(q) == EntryState::kModified && words[q] != cfg.self)) {\n      break;\n    }\n    uint8_t* out = reply.payload.data() + at;\n    if (State(q) == EntryState::kModified) {", "IsLost(q)) {\n      break;\n    }\n    uint8_t* out = reply.payload.data() + at;\n    if (false) {"),
 ("run grants a busy page", "lib/coherence/directory.cc", "cfg.home(q) != cfg.self || txns.contains(q) ||", "cfg.home(q) != cfg.self ||"),
 ("run grant not recorded", "lib/coherence/directory.cc", "    SetShared(q, Sharers(q) | NodeBit(m.src));\n    ++c.requests_served;\n    ++c.run_pages_granted;", "    ++c.requests_served;\n    ++c.run_pages_granted;"),
 ("home downgrades its own copy without write-protecting it", "lib/coherence/cache.cc", "  if (absl::Status st = s.port->SetAccess(page, PageState::kShared); !st.ok()) {\n    s.PortFailure(page, \"home downgrade", "  if (absl::Status st = absl::OkStatus(); !st.ok()) {\n    s.PortFailure(page, \"home downgrade"),
 ("write-back run applies only its first page", "lib/coherence/directory.cc", "    ApplyWriteback(page, kind, m.src, m.payload.data() + i * kPageSize);\n", "    if (i == 0) ApplyWriteback(page, kind, m.src, m.payload.data() + i * kPageSize);\n"),
 ("failed recall write-protect answered as if downgraded", "lib/coherence/cache.cc", "      MarkLost(page, ErrorCode::kIoError);\n      ack.arg = static_cast<uint64_t>(PageState::kInvalid);", "      ack.arg = static_cast<uint64_t>(PageState::kShared);"),
 ("failed unmap not poisoned before the message", "lib/coherence/cache.cc", "      PortFailure(page, \"drop\", s);\n      MarkLost(page, ErrorCode::kIoError);", "      PortFailure(page, \"drop\", s);"),
 ("grant that could not be mapped not handed back", "lib/coherence/cache.cc", "    MarkLost(page, ErrorCode::kIoError);  // unmapped and poisoned before the home hears\n    port->Send(std::move(put));", "    MarkLost(page, ErrorCode::kIoError);  // unmapped and poisoned before the home hears\n    (void)put;"),
 ("home serves its stale copy after the owner lost its own", "lib/coherence/directory.cc", "      Lose(page, \"the owner answered the recall without data\", absl::DataLossError(\n          absl::StrCat(\"node \", m.src, \" lost its Modified copy\")));", "      SetUncached(page);"),
 ("failed unprotect lets the fault through as stale", "lib/coherence/replacement.cc", "    if (!cache.Release(page)) {\n      cache.LoseCopy(page);\n      return;\n    }", "    return;"),
 ("home's copy taken for a kGetM stays mapped", "lib/coherence/cache.cc", "    ++s.c.invalidations;\n  }\n  s.DropOrLose(page);\n  return true;", "    ++s.c.invalidations;\n  }\n  return true;"),
 ("home's Shared copy counted dropped without dropping it", "lib/coherence/directory.cc", "absl::StatusOr<bool> dropped = port->InvalidateLocal(page, PageState::kShared, nullptr);", "absl::StatusOr<bool> dropped = true;"),
 ("home's copy taken although its cache does not hold it as recorded", "lib/coherence/directory.cc", "    if (!*taken) {\n      t.own_copy.clear();\n      return false;\n    }", "    if (!*taken) {\n      t.own_copy.assign(kPageSize, 0);\n    }"),
 ("failed take of the home's copy served from the storage", "lib/coherence/directory.cc", "      Lose(page, \"the home could not write-protect its copy\", taken.status());\n      return true;", "      SetUncached(page);\n      return true;"),
 ("write miss granted from the storage instead of the home's taken copy", "lib/coherence/directory.cc", "    if (own_copy.size() == kPageSize) {", "    if (false) {"),
 ("home stays recorded a sharer after its copy was dropped in place", "lib/coherence/directory.cc", "    RemoveSharer(page, cfg.self);\n    ++c.local_invalidations;", "    ++c.local_invalidations;"),
 ("refused run page with a waiter not asked again", "lib/coherence/cache.cc", "      SendRequest(q, r.want_write, now);  // a thread joined", "      (void)0;  // a thread joined"),
]
fail_fast = "--fail-fast" in sys.argv[1:]
sel = [a for a in sys.argv[1:] if a != "--fail-fast"]
gtest_args = "--gtest_fail_fast" if fail_fast else ""
survivors = []
for i,(name, path, old, new) in enumerate(muts):
    if sel and str(i) not in sel: continue
    orig = open(path).read()
    assert old in orig, name
    open(path,'w').write(orig.replace(old,new,1))
    try:
        built = subprocess.run(f"cmake --build {build} --target coherence_test", shell=True, capture_output=True, text=True)
        b = subprocess.run("grep -E ' error '", shell=True, input=built.stdout + built.stderr, capture_output=True, text=True)
        r = subprocess.run(f"timeout 300 ./{build}/tests/coherence/coherence_test {gtest_args} > {build}/mutation.log 2>&1", shell=True)
        shown = subprocess.run(f"grep -E '^\\[  FAILED  \\] [A-Za-z]|PASSED' {build}/mutation.log | sort -u | tr '\\n' ' '", shell=True, capture_output=True, text=True)
        print(f"== {i} {name}:\n{b.stdout}{shown.stdout}" + ("" if r.returncode in (0, 1) else f"(exit {r.returncode})"), flush=True)
        if built.returncode != 0 or r.returncode == 0:
            survivors.append(f"{i} {name}" + ("" if built.returncode == 0 else " (build failed)"))
    finally:
        open(path,'w').write(orig)
subprocess.run(f"cmake --build {build} --target coherence_test >/dev/null 2>&1", shell=True)
if survivors:
    print("mutations not caught: " + "; ".join(survivors), flush=True)
    sys.exit(1)
print(f"every mutation made a test fail", flush=True)
