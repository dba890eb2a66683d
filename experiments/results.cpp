#include "experiments/results.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>

#include <fmt/format.h>
#include <signal.h>
#include <sys/file.h>
#include <fcntl.h>
#include <unistd.h>

#include "runtime/error.h"

namespace qsweep {

namespace fs = std::filesystem;

bool is_folder_name(const std::string& s) {
  return !s.empty() && s[0] != '.' && std::none_of(s.begin(), s.end(), [](char ch) {
    return ch == '/' || ch == '\\' || static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f;
  });
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string q = "\"";
  for (char ch : s) q += ch == '"' ? std::string("\"\"") : std::string(1, ch);
  return q + "\"";
}

void write_file_atomic(const fs::path& path, const std::string& content) {
  const fs::path tmp = path.parent_path() / fmt::format(".{}.tmp{}", path.filename().string(), getpid());
  std::error_code ec;
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) user_error("cannot write '{}' ({})", path.string(), std::strerror(errno));
    out << content;
    out.flush();
    if (!out) {
      out.close();
      fs::remove(tmp, ec);
      user_error("cannot write '{}' (disk full?)", path.string());
    }
  }
  fs::rename(tmp, path, ec);
  if (ec) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    user_error("cannot write '{}': {}", path.string(), ec.message());
  }
}

namespace {
std::string host_tag();
}  // namespace

bool create_file_once(const fs::path& path, const std::string& content) {
  const fs::path tmp = path.parent_path() / fmt::format(".{}.{}-{}", path.filename().string(), host_tag(), getpid());
  write_file_atomic(tmp, content);
  const bool linked = ::link(tmp.c_str(), path.c_str()) == 0;
  const int err = errno;
  std::error_code ec;
  fs::remove(tmp, ec);
  if (linked) return true;
  if (err == EEXIST) return false;
  write_file_atomic(path, content);  // no hard links here
  return true;
}

namespace {

// This host's name, at most 40 characters (a run id has at most 180, a folder name 255).
std::string host_tag() {
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  return std::string(host).substr(0, 40);
}

// The staging folder of a run id: ".<id>.partial-<host>-<pid>". Host and pid tell whether the
// process that made it is gone (a run killed outright, e.g. by a second signal or SIGKILL).
std::string staging_name(const std::string& run_id) {
  return fmt::format(".{}.partial-{}-{}", run_id, host_tag(), getpid());
}

}  // namespace

// Another host's staging folder cannot be judged; a live run's folder is new (results.h).
void remove_abandoned_staging(const fs::path& parent, const std::string& run_id) {
  const std::string prefix = fmt::format(".{}.partial-{}-", run_id, host_tag());
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(parent, ec)) {
    const std::string name = e.path().filename().string();
    if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string digits = name.substr(prefix.size());
    if (digits.find_first_not_of("0123456789") != std::string::npos || digits.size() > 9) continue;
    const pid_t pid = static_cast<pid_t>(std::stol(digits));
    const auto age = fs::file_time_type::clock::now() - fs::last_write_time(e.path(), ec);
    if (!ec && age > std::chrono::minutes(10) && pid != getpid() && kill(pid, 0) != 0 && errno == ESRCH) {
      std::error_code ignored;
      fs::remove_all(e.path(), ignored);
    }
  }
}

int used_shard_split(const fs::directory_entry& e) {
  int i = 0, n = 0;
  std::error_code ec;
  if (!e.is_directory(ec) || std::sscanf(e.path().filename().c_str(), "shard-%d-of-%d", &i, &n) != 2) return 0;
  for (const auto& f : fs::directory_iterator(e.path(), ec)) {
    if (f.path().extension() == ".rec" || f.path().filename() == "DONE.json") return n;  // records
  }
  // No records, but a process holds its lock: it is computing them (two runs of other shard
  // counts started together each see the other's folder so, as each locks its own first).
  const int fd = ::open((e.path() / "lock").c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  const bool held = ::flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK;
  ::close(fd);
  return held ? n : 0;
}

std::string split_text(int shards) {
  return shards == 1 ? std::string("unsplit (one shard)") : fmt::format("split {} ways", shards);
}

void remove_work_folder(const fs::path& work) {
  std::error_code ec;
  if (!fs::is_directory(work / "slurm", ec)) {
    fs::remove_all(work, ec);
    return;
  }
  for (const auto& e : fs::directory_iterator(work, ec)) {
    if (e.path().filename() != "slurm") fs::remove_all(e.path(), ec);
  }
}

ResultsFolder::ResultsFolder(const std::string& root, const std::string& experiment) {
  const fs::path parent = fs::path(root) / experiment;
  std::error_code ec;
  fs::create_directories(parent, ec);
  if (ec) user_error("cannot create the results folder '{}': {}", parent.string(), ec.message());
  const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&now, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
  run_id_ = stamp;
  for (int i = 2; fs::exists(parent / run_id_); ++i) run_id_ = fmt::format("{}-{}", stamp, i);
  final_ = parent / run_id_;
  staging_ = parent / staging_name(run_id_);
  fs::create_directories(staging_, ec);
  if (ec) user_error("cannot create '{}': {}", staging_.string(), ec.message());
}

ResultsFolder::ResultsFolder(const std::string& root, const std::string& experiment, const std::string& run_id)
    : run_id_(run_id), fixed_id_(true) {
  const fs::path parent = fs::path(root) / experiment;
  std::error_code ec;
  fs::create_directories(parent, ec);
  if (ec) user_error("cannot create the results folder '{}': {}", parent.string(), ec.message());
  final_ = parent / run_id_;
  remove_abandoned_staging(parent, run_id_);
  staging_ = parent / staging_name(run_id_);
  fs::remove_all(staging_, ec);
  fs::create_directories(staging_, ec);
  if (ec) user_error("cannot create '{}': {}", staging_.string(), ec.message());
}

ResultsFolder::~ResultsFolder() {
  if (!committed_) {
    std::error_code ec;
    fs::remove_all(staging_, ec);  // never throws from a destructor
  }
}

void ResultsFolder::write(const std::string& name, const std::string& content) {
  write_file_atomic(staging_ / name, content);
}

fs::path ResultsFolder::commit() {
  std::error_code ec;
  if (fixed_id_) {
    if (fs::exists(final_)) user_error("'{}' already exists; remove it or choose another --run-id", final_.string());
    fs::rename(staging_, final_, ec);
    if (ec) user_error("cannot move '{}' to '{}': {}", staging_.string(), final_.string(), ec.message());
    committed_ = true;
    return final_;
  }
  // Another run may have taken the name meanwhile: pick the next free one.
  std::string id = run_id_;
  for (int i = 2; fs::exists(final_.parent_path() / id); ++i) id = fmt::format("{}-{}", run_id_, i);
  run_id_ = id;
  final_ = final_.parent_path() / id;
  fs::rename(staging_, final_, ec);
  if (ec) user_error("cannot move '{}' to '{}': {}", staging_.string(), final_.string(), ec.message());
  committed_ = true;
  return final_;
}

}  // namespace qsweep
