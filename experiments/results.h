// Results folders: written under a hidden temporary name and renamed into place at the end,
// so a crashed run never leaves a folder that looks complete.
#pragma once

#include <filesystem>
#include <string>

namespace qsweep {

class ResultsFolder {
 public:
  // Reserves <root>/<experiment>/<run_id>/ (run_id: UTC time, made unique) and creates
  // the hidden staging folder beside it.
  ResultsFolder(const std::string& root, const std::string& experiment);
  // A fixed run id: <root>/<experiment>/<run_id>/ (it must not exist yet when committing).
  ResultsFolder(const std::string& root, const std::string& experiment, const std::string& run_id);
  ~ResultsFolder();  // removes the staging folder unless commit() succeeded

  // Writes a file into the staging folder (write to a temp name, then rename).
  void write(const std::string& name, const std::string& content);
  // Moves the staging folder to its final name; returns the final path.
  std::filesystem::path commit();

  const std::string& run_id() const { return run_id_; }
  const std::filesystem::path& final_path() const { return final_; }
  const std::filesystem::path& staging_path() const { return staging_; }

 private:
  std::filesystem::path final_, staging_;
  std::string run_id_;
  bool committed_ = false;
  bool fixed_id_ = false;
};

// Whether s can name a results folder (an experiment, a run id): not empty, no slashes or
// control characters, not starting with '.' (hidden names are qsweep's own work folders).
bool is_folder_name(const std::string& s);

// A CSV field (RFC 4180): quoted, with quotes doubled, when it holds a comma, quote or newline.
std::string csv_field(const std::string& s);

// Writes `content` to `path` atomically (temp file in the same folder + rename).
void write_file_atomic(const std::filesystem::path& path, const std::string& content);
// Creates `path` with `content`, whole, unless it exists (link() of a temporary file: atomic,
// also on NFS); false where it existed. Where the file system has no hard links, written as
// write_file_atomic() does.
bool create_file_once(const std::filesystem::path& path, const std::string& content);

// Removes the staging folders (".<run_id>.partial-<host>-<pid>") in `parent` that a process of
// this host left behind: its pid gone and the folder untouched for 10 minutes (containers may
// share a host name but not their process ids).
void remove_abandoned_staging(const std::filesystem::path& parent, const std::string& run_id);

// N of a work folder's shard folder "shard-I-of-N" that is in use: it holds records (a
// batch's, or DONE.json), or a process holds its lock. A process stopped before its first batch
// leaves an unused one, which fixes no split. 0 for anything else.
int used_shard_split(const std::filesystem::directory_entry& e);
// "unsplit (one shard)" or "split N ways", for messages about a grid's shard count.
std::string split_text(int shards);

// Removes a finished run's work folder, keeping `slurm/` where there is one: a submitted
// array's scripts, and the logs its other tasks and its merge job still write.
void remove_work_folder(const std::filesystem::path& work);

}  // namespace qsweep
