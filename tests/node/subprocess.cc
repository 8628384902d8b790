#include "node/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace dsm::testing {
namespace {

using Clock = std::chrono::steady_clock;

int RemainingMs(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return left.count() < 0 ? 0 : static_cast<int>(left.count());
}

// Child side, after fork: only async-signal-safe calls.
[[noreturn]] void ExecChild(const char* netns_path, int in_fd, int out_fd, int err_fd,
                            char* const* argv, bool search_path, char* const* envp = nullptr) {
  if (netns_path != nullptr) {
    int fd = open(netns_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || setns(fd, CLONE_NEWNET) != 0) {
      static const char msg[] = "subprocess: cannot enter network namespace\n";
      (void)!write(2, msg, sizeof(msg) - 1);
      _exit(126);
    }
  }
  if (in_fd >= 0) dup2(in_fd, 0);
  dup2(out_fd, 1);
  if (err_fd >= 0) dup2(err_fd, 2);
  // A child must not inherit an ignored SIGPIPE or blocked signals from the test runner.
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  if (search_path) {
    execvp(argv[0], argv);
  } else if (envp != nullptr) {
    execve(argv[0], argv, envp);
  } else {
    execv(argv[0], argv);
  }
  static const char msg[] = "subprocess: exec failed\n";
  (void)!write(2, msg, sizeof(msg) - 1);
  _exit(127);
}

std::vector<char*> MakeArgv(const std::vector<std::string>& argv) {
  std::vector<char*> out;
  for (const std::string& a : argv) out.push_back(const_cast<char*>(a.c_str()));
  out.push_back(nullptr);
  return out;
}

}  // namespace

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exit ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return absl::StrCat("killed by signal ", WTERMSIG(status), " (", strsignal(WTERMSIG(status)),
                        ")");
  }
  return absl::StrCat("wait status ", status);
}

absl::StatusOr<std::string> RunCommand(const std::vector<std::string>& argv,
                                       std::chrono::milliseconds timeout) {
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return absl::ErrnoToStatus(errno, "pipe2");
  std::vector<char*> cargv = MakeArgv(argv);
  int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  pid_t pid = fork();
  if (pid < 0) {
    int e = errno;
    close(out[0]);
    close(out[1]);
    if (devnull >= 0) close(devnull);
    return absl::ErrnoToStatus(e, "fork");
  }
  if (pid == 0) ExecChild(nullptr, devnull, out[1], out[1], cargv.data(), /*search_path=*/true);
  close(out[1]);
  if (devnull >= 0) close(devnull);
  std::string output;
  Clock::time_point deadline = Clock::now() + timeout;
  bool timed_out = false;
  for (;;) {
    pollfd p{out[0], POLLIN, 0};
    int r = poll(&p, 1, RemainingMs(deadline));
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) {
      timed_out = true;
      break;
    }
    char buf[4096];
    ssize_t n = read(out[0], buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    output.append(buf, static_cast<size_t>(n));
  }
  close(out[0]);
  if (timed_out) kill(pid, SIGKILL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  std::string cmd = absl::StrJoin(argv, " ");
  if (timed_out) {
    return absl::DeadlineExceededError(
        absl::StrCat("`", cmd, "` did not finish within ", timeout.count(), " ms: ", output));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(
        absl::StrCat("`", cmd, "` failed (", DescribeWaitStatus(status), "): ", output));
  }
  return output;
}

absl::StatusOr<std::unique_ptr<Subprocess>> Subprocess::Start(const Spawn& spawn) {
  if (spawn.argv.empty()) return absl::InvalidArgumentError("empty argv");
  // A command sent to a child that died (a test that killed it) is an error, not the end of
  // the test process.
  signal(SIGPIPE, SIG_IGN);
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) != 0) return absl::ErrnoToStatus(errno, "pipe2");
  if (pipe2(out, O_CLOEXEC) != 0) {
    int e = errno;
    close(in[0]);
    close(in[1]);
    return absl::ErrnoToStatus(e, "pipe2");
  }
  std::vector<char*> cargv = MakeArgv(spawn.argv);
  std::string ns_path = spawn.netns.empty() ? "" : "/run/netns/" + spawn.netns;
  // The environment: this process's, with spawn.env's NAME=value entries replacing or adding
  // (built before fork: the child may only make async-signal-safe calls).
  std::vector<std::string> extra_env = spawn.env;
  if (!spawn.netns.empty() &&
      std::none_of(extra_env.begin(), extra_env.end(), [](const std::string& e) {
        return e.rfind("DSM_CLUSTER_KEY=", 0) == 0;
      })) {
    extra_env.push_back(std::string("DSM_CLUSTER_KEY=") + kNamespaceClusterKey);
  }
  std::vector<std::string> env_strings;
  if (!extra_env.empty()) {
    for (char** e = environ; *e != nullptr; ++e) {
      const std::string entry(*e);
      const std::string name = entry.substr(0, entry.find('='));
      bool replaced = false;
      for (const std::string& mine : extra_env) {
        replaced = replaced || mine.substr(0, mine.find('=')) == name;
      }
      if (!replaced) env_strings.push_back(entry);
    }
    env_strings.insert(env_strings.end(), extra_env.begin(), extra_env.end());
  }
  std::vector<char*> cenv = MakeArgv(env_strings);
  pid_t pid = fork();
  if (pid < 0) {
    int e = errno;
    for (int fd : {in[0], in[1], out[0], out[1]}) close(fd);
    return absl::ErrnoToStatus(e, "fork");
  }
  if (pid == 0) {
    ExecChild(ns_path.empty() ? nullptr : ns_path.c_str(), in[0], out[1], -1, cargv.data(),
              /*search_path=*/false, extra_env.empty() ? nullptr : cenv.data());
  }
  close(in[0]);
  close(out[1]);
  auto p = std::unique_ptr<Subprocess>(new Subprocess());
  p->pid_ = pid;
  p->stdin_fd_ = in[1];
  p->stdout_fd_ = out[0];
  p->label_ = spawn.label.empty() ? spawn.argv[0] : spawn.label;
  return p;
}

Subprocess::~Subprocess() {
  if (stdin_fd_ >= 0) close(stdin_fd_);
  if (stdout_fd_ >= 0) close(stdout_fd_);
  if (!reaped_ && pid_ > 0) {
    kill(pid_, SIGKILL);
    while (waitpid(pid_, &wait_status_, 0) < 0 && errno == EINTR) {
    }
  }
}

absl::Status Subprocess::SendLine(const std::string& line) {
  if (stdin_fd_ < 0) return absl::FailedPreconditionError(label_ + ": stdin closed");
  std::string data = line + "\n";
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = write(stdin_fd_, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return absl::ErrnoToStatus(errno, absl::StrCat(label_, ": write to stdin"));
    off += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

void Subprocess::CloseStdin() {
  if (stdin_fd_ >= 0) close(stdin_fd_);
  stdin_fd_ = -1;
}

absl::StatusOr<std::string> Subprocess::ReadLine(std::chrono::milliseconds timeout) {
  Clock::time_point deadline = Clock::now() + timeout;
  for (;;) {
    size_t nl = buffer_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      transcript_ += line + "\n";
      return line;
    }
    if (stdout_fd_ < 0) {
      return absl::UnavailableError(
          absl::StrCat(label_, ": stdout closed; partial output '", buffer_, "'"));
    }
    pollfd p{stdout_fd_, POLLIN, 0};
    int r = poll(&p, 1, RemainingMs(deadline));
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) {
      return absl::DeadlineExceededError(absl::StrCat(
          label_, ": no output line within ", timeout.count(), " ms (pending: '", buffer_, "')"));
    }
    char buf[4096];
    ssize_t n = read(stdout_fd_, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      close(stdout_fd_);
      stdout_fd_ = -1;
      continue;
    }
    buffer_.append(buf, static_cast<size_t>(n));
  }
}

absl::StatusOr<std::string> Subprocess::Call(const std::string& line,
                                             std::chrono::milliseconds timeout) {
  absl::Status s = SendLine(line);
  if (!s.ok()) return s;
  absl::StatusOr<std::string> reply = ReadLine(timeout);
  if (!reply.ok()) {
    return absl::Status(reply.status().code(),
                        absl::StrCat("command '", line, "': ", reply.status().message()));
  }
  return reply;
}

void Subprocess::Kill(int sig) {
  if (!reaped_ && pid_ > 0) kill(pid_, sig);
}

absl::StatusOr<int> Subprocess::Wait(std::chrono::milliseconds timeout) {
  if (reaped_) return wait_status_;
  Clock::time_point deadline = Clock::now() + timeout;
  for (;;) {
    int status = 0;
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      reaped_ = true;
      wait_status_ = status;
      return status;
    }
    if (r < 0 && errno != EINTR) return absl::ErrnoToStatus(errno, "waitpid");
    if (Clock::now() >= deadline || RemainingMs(deadline) == 0) {
      kill(pid_, SIGKILL);
      while (waitpid(pid_, &wait_status_, 0) < 0 && errno == EINTR) {
      }
      reaped_ = true;
      return absl::DeadlineExceededError(
          absl::StrCat(label_, ": did not exit within ", timeout.count(), " ms; killed"));
    }
    // A pidfd becomes readable when the child exits.
    int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid_, 0));
    if (pidfd < 0) return absl::ErrnoToStatus(errno, "pidfd_open");
    pollfd p{pidfd, POLLIN, 0};
    poll(&p, 1, RemainingMs(deadline));
    close(pidfd);
  }
}

WorkersStart AwaitWorkersReady(const std::vector<std::unique_ptr<Subprocess>>& workers,
                               std::chrono::milliseconds timeout, bool may_collide) {
  bool collided = false;
  std::vector<std::string> errors;
  for (const auto& w : workers) {
    absl::StatusOr<std::string> line = w->ReadLine(timeout);
    if (line.ok() && *line == "ready") continue;
    std::string what = line.ok() ? *line : line.status().ToString();
    if (what.find("in use") != std::string::npos) collided = true;
    errors.push_back(w->label() + ": " + what);
  }
  WorkersStart start;
  if (errors.empty()) return start;
  start.errors = absl::StrJoin(errors, "; ");
  if (collided && may_collide) {
    start.outcome = WorkersStart::kPortsCollided;
    return start;
  }
  absl::StatusOr<int> st = workers[0]->Wait(std::chrono::milliseconds(5000));
  start.outcome = st.ok() && WIFEXITED(*st) && WEXITSTATUS(*st) == 77
                      ? WorkersStart::kUffdUnavailable
                      : WorkersStart::kFailed;
  return start;
}

}  // namespace dsm::testing
