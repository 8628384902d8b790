// mmap_demo: two hosts map one file through dsm and see each other's writes.
//
// What it shows: node 0 (the home) holds a file and maps it as a dsm region; it writes a
// greeting into the mapping. Node 1, on another host, maps the same region, reads the greeting
// (its page fault fetches the page from the home), writes its own text and calls Sync(). The
// home sees node 1's text live in its own mapping, and after the Sync() the file on the home's
// disk holds it. The two programs coordinate only through a second, anonymous dsm region (flags
// polled with a deadline), so the demo also shows plain loads and stores being coherent.
//
// Needs: Linux with userfaultfd write-protect support (5.7+, 6.x recommended), run as root (or
// vm.unprivileged_userfaultfd=1), and a TCP path between the hosts. scripts/demo.sh runs both
// nodes in two network namespaces joined by a veth pair.
//
// Usage: mmap_demo --id 0 --peers 10.0.0.1:7000,10.0.0.2:7000 --file /tmp/demo.txt
//        mmap_demo --id 1 --peers 10.0.0.1:7000,10.0.0.2:7000 [--text "hello from B"]
//        [--timeout-ms 30000]
// Exit status: 0 when every check held, 1 otherwise, 77 when userfaultfd is unavailable.
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_split.h"
#include "dsm/node.h"

namespace {

constexpr size_t kPage = 4096;
constexpr size_t kGreetingOffset = 0;   // page 0 of the file: the home's greeting
constexpr size_t kReplyOffset = kPage;  // page 1 of the file: node 1's text
constexpr size_t kFileSize = 2 * kPage;

// The control region (anonymous, homed at node 0). One word per flag so each is one store.
struct Control {
  uint64_t greeting_ready;  // home -> node 1: the greeting is in the file region
  uint64_t reply_written;   // node 1 -> home: its text is in the file region
  uint64_t reply_synced;    // node 1 -> home: Sync() returned
  uint64_t verdict;         // home -> node 1: 1 = the file holds the text, 2 = it does not
  uint64_t file_unmapped;   // node 1 -> home: node 1 unmapped the file region
};

using Clock = std::chrono::steady_clock;

void Say(int id, const std::string& what) {
  std::printf("[node %d%s] %s\n", id, id == 0 ? " (home)" : "", what.c_str());
  std::fflush(stdout);
}

// Polls a flag in region memory until it is nonzero or the deadline passes.
bool WaitFor(const uint64_t* flag, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  while (__atomic_load_n(flag, __ATOMIC_ACQUIRE) == 0) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(200));  // poll interval, not a sync
  }
  return true;
}

void Set(uint64_t* flag, uint64_t v) { __atomic_store_n(flag, v, __ATOMIC_RELEASE); }

std::string ReadText(const void* p, size_t max) {
  const char* c = static_cast<const char*>(p);
  return std::string(c, strnlen(c, max));
}

int Fail(int id, const std::string& why) {
  Say(id, "FAILED: " + why);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> args;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strncmp(argv[i], "--", 2) != 0) break;
    args[argv[i] + 2] = argv[i + 1];
  }
  if (!args.count("id") || !args.count("peers") || (args["id"] == "0" && !args.count("file"))) {
    std::fprintf(stderr,
                 "Usage: %s --id 0 --peers A:port,B:port --file PATH\n"
                 "       %s --id 1 --peers A:port,B:port [--text TEXT] [--timeout-ms N]\n",
                 argv[0], argv[0]);
    return 2;
  }
  const int id = std::atoi(args["id"].c_str());
  const auto timeout = std::chrono::milliseconds(
      args.count("timeout-ms") ? std::atoi(args["timeout-ms"].c_str()) : 30000);
  const std::string file = args["file"];

  dsm::Options o;
  o.node_id = static_cast<dsm::NodeId>(id);
  o.peers = absl::StrSplit(args["peers"], ',', absl::SkipEmpty());
  o.connect_timeout = absl::FromChrono(timeout);
  o.peer_timeout = absl::Milliseconds(5000);

  if (id == 0) {
    // Start from an empty file; the home extends it to the region size.
    int fd = open(file.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0644);
    if (fd < 0) return Fail(id, "cannot create " + file + ": " + std::strerror(errno));
    close(fd);
  }

  absl::StatusOr<std::unique_ptr<dsm::Node>> node = dsm::Node::Create(o);
  if (!node.ok()) {
    Say(id, "cannot start the node: " + node.status().ToString());
    return node.status().code() == absl::StatusCode::kPermissionDenied ? 77 : 1;
  }
  Say(id, "up; listening on " + o.peers[static_cast<size_t>(id)]);

  dsm::RegionOptions fro;
  fro.name = "demo-file";
  fro.size = kFileSize;
  fro.home = 0;
  fro.file_path = id == 0 ? file : "the home's file";  // every node says it is file-backed
  absl::StatusOr<std::unique_ptr<dsm::Region>> fr = (*node)->MapRegion(fro);
  if (!fr.ok()) return Fail(id, "MapRegion(demo-file): " + fr.status().ToString());
  dsm::RegionOptions cro;
  cro.name = "demo-control";
  cro.size = kPage;
  cro.home = 0;
  absl::StatusOr<std::unique_ptr<dsm::Region>> cr = (*node)->MapRegion(cro);
  if (!cr.ok()) return Fail(id, "MapRegion(demo-control): " + cr.status().ToString());
  char* text = static_cast<char*>((*fr)->data());
  auto* ctl = static_cast<Control*>((*cr)->data());
  int rc = 0;

  if (id == 0) {
    std::string greeting = "Hello from node 0, the home of " + file + ".";
    std::memcpy(text + kGreetingOffset, greeting.c_str(), greeting.size() + 1);
    Set(&ctl->greeting_ready, 1);
    Say(id, "wrote into its mapping of the file: \"" + greeting + "\"");
    Say(id, "waiting for node 1 to write ...");
    if (!WaitFor(&ctl->reply_written, timeout)) return Fail(id, "node 1 never wrote its text");
    std::string live = ReadText(text + kReplyOffset, kPage);
    Say(id, "sees live in its own mapping: \"" + live + "\"");
    if (!WaitFor(&ctl->reply_synced, timeout)) return Fail(id, "node 1 never finished Sync()");
    char disk[kPage + 1] = {};
    int fd = open(file.c_str(), O_RDONLY);
    ssize_t n = fd >= 0 ? pread(fd, disk, kPage, kReplyOffset) : -1;
    if (fd >= 0) close(fd);
    std::string on_disk = n > 0 ? ReadText(disk, static_cast<size_t>(n)) : "";
    Say(id, "after node 1's Sync(), " + file + " holds at offset 4096: \"" + on_disk + "\"");
    bool ok = !live.empty() && on_disk == live;
    Set(&ctl->verdict, ok ? 1 : 2);
    if (ok) {
      Say(id, "OK: the file on disk holds node 1's text");
    } else {
      rc = Fail(id, "the file does not hold node 1's text");
    }
    // Leave after node 1 has let go of the file region and disconnected, so its last
    // messages still find a home.
    if (!WaitFor(&ctl->file_unmapped, timeout)) Say(id, "warning: node 1 did not unmap");
    // (A node whose engine does not answer GetStats has nothing left to wait for.)
    const auto peer_left = [&node] {
      absl::StatusOr<dsm::Stats> s = (*node)->GetStats();
      return !s.ok() || s->peers_down > 0;
    };
    for (auto deadline = Clock::now() + timeout; !peer_left() && Clock::now() < deadline;) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  } else {
    Say(id, "waiting for the home's greeting ...");
    if (!WaitFor(&ctl->greeting_ready, timeout)) return Fail(id, "no greeting from the home");
    Say(id, "reads the home's greeting: \"" + ReadText(text + kGreetingOffset, kPage) + "\"");
    std::string mine =
        args.count("text") ? args["text"] : "Hello from node 1, written across hosts.";
    std::memcpy(text + kReplyOffset, mine.c_str(), mine.size() + 1);
    Set(&ctl->reply_written, 1);
    Say(id, "wrote: \"" + mine + "\"");
    absl::Status s = (*fr)->Sync();
    if (!s.ok()) return Fail(id, "Sync(): " + s.ToString());
    Set(&ctl->reply_synced, 1);
    Say(id, "Sync() returned: the home has persisted the page");
    if (!WaitFor(&ctl->verdict, timeout)) {
      rc = Fail(id, "the home never checked its file");
    } else if (__atomic_load_n(&ctl->verdict, __ATOMIC_ACQUIRE) != 1) {
      rc = Fail(id, "the home reports that its file does not hold the text");
    } else {
      Say(id, "the home confirms its file holds the text");
    }
    s = (*fr)->Unmap();
    if (!s.ok()) rc = Fail(id, "Unmap(demo-file): " + s.ToString());
    Set(&ctl->file_unmapped, 1);
  }

  absl::Status s;
  if (id == 0) {  // node 1 unmapped the file region above
    s = (*fr)->Unmap();
    if (!s.ok()) rc = Fail(id, "Unmap(demo-file): " + s.ToString());
  }
  s = (*cr)->Unmap();
  if (!s.ok()) rc = Fail(id, "Unmap(demo-control): " + s.ToString());
  s = (*node)->Shutdown();
  if (!s.ok()) rc = Fail(id, "Shutdown(): " + s.ToString());
  Say(id, rc == 0 ? "done" : "done, with failures");
  return rc;
}
