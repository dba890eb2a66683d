#include "experiments/csv.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "runtime/error.h"

namespace qsweep {

int Csv::col(const std::string& name) const {
  const auto it = std::find(header.begin(), header.end(), name);
  return it == header.end() ? -1 : static_cast<int>(it - header.begin());
}

const std::string& Csv::at(size_t r, const std::string& name) const {
  static const std::string empty;
  const int c = col(name);
  return c < 0 || c >= static_cast<int>(rows[r].size()) ? empty : rows[r][c];
}

Csv parse_csv(const std::string& text) {
  std::vector<std::vector<std::string>> lines;
  std::vector<size_t> starts;  // the line each record starts on
  std::vector<std::string> row;
  std::string field;
  bool quoted = false, any = false;
  size_t line = 1, start = 1;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') {
        field += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        field += c;
        line += c == '\n';
      }
      continue;
    }
    if (c == '"') {
      quoted = true;
      any = true;
    } else if (c == ',') {
      row.push_back(std::move(field));
      field.clear();
      any = true;
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      if (any || !field.empty()) {
        row.push_back(std::move(field));
        lines.push_back(std::move(row));
        starts.push_back(start);
      }
      row.clear();
      field.clear();
      any = false;
      start = ++line;
    } else {
      field += c;
      any = true;
    }
  }
  if (any || !field.empty()) {
    row.push_back(std::move(field));
    lines.push_back(std::move(row));
    starts.push_back(start);
  }
  Csv csv;
  if (lines.empty()) return csv;
  csv.header = std::move(lines.front());
  for (size_t i = 1; i < lines.size(); ++i) {
    csv.fields.push_back(lines[i].size());
    csv.line.push_back(starts[i]);
    lines[i].resize(std::max(lines[i].size(), csv.header.size()));
    csv.rows.push_back(std::move(lines[i]));
  }
  return csv;
}

std::optional<std::string> read_text(const std::filesystem::path& p) {
  errno = 0;
  std::ifstream in(p, std::ios::binary);
  if (!in) {
    const int err = errno;
    if (err == 0 || err == ENOENT || err == ENOTDIR) return std::nullopt;
    // There but not readable (permissions, a symlink loop): not "missing", which would send
    // the user looking for a file that is there.
    user_error("cannot read '{}': {}", p.string(), std::strerror(err));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::optional<std::string> read_text_if_readable(const std::filesystem::path& p) {
  try {
    return read_text(p);
  } catch (const UserError&) {
    return std::nullopt;
  }
}

std::optional<Csv> read_csv(const std::filesystem::path& p) {
  auto text = read_text(p);
  if (!text) return std::nullopt;
  return parse_csv(*text);
}

double csv_number(const std::string& s) {
  if (s.empty()) return std::nan("");
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  return end == s.c_str() ? std::nan("") : v;
}

bool csv_is_number(const std::string& s) {
  if (s.empty()) return false;
  char* end = nullptr;
  std::strtod(s.c_str(), &end);
  return end == s.c_str() + s.size();
}

void require_columns(const Csv& csv, const std::filesystem::path& file, std::initializer_list<const char*> cols) {
  for (const char* c : cols) {
    if (!csv.has(c)) user_error("{}: no column '{}'", file.string(), c);
  }
  // A row of another width is a damaged table (a stray comma, a cut line), not a result.
  for (size_t r = 0; r < csv.rows.size(); ++r) {
    if (csv.fields[r] != csv.header.size()) {
      user_error("{}, line {}: {} fields where the header has {}", file.string(), csv.line[r], csv.fields[r],
                 csv.header.size());
    }
  }
}

namespace {

// Every field of the columns of `cols` (those present) passes `ok`, else one sentence naming
// the file, line and column and saying what the field is `not`.
template <typename Ok>
void require_fields(const Csv& csv, const std::filesystem::path& file, std::initializer_list<const char*> cols, Ok ok,
                    const char* not_what) {
  for (const char* c : cols) {
    if (!csv.has(c)) continue;
    for (size_t r = 0; r < csv.rows.size(); ++r) {
      const std::string& v = csv.at(r, c);
      if (!ok(v)) user_error("{}, line {}: column '{}' holds '{}', {}", file.string(), csv.line[r], c, v, not_what);
    }
  }
}

}  // namespace

// The numbers check compares must be numbers ("nan" and "inf" are); anything else is named.
void require_numbers(const Csv& csv, const std::filesystem::path& file, std::initializer_list<const char*> cols,
                     bool empty_ok) {
  require_fields(csv, file, cols, [empty_ok](const std::string& v) { return csv_is_number(v) || (empty_ok && v.empty()); },
                 "not a number");
}

// Counts of images (correct, correct5, images) are whole numbers of 0 or more: "nan", "inf" or
// "12.5" in one is a damaged table, not a result that could pass.
void require_counts(const Csv& csv, const std::filesystem::path& file, std::initializer_list<const char*> cols) {
  require_fields(
      csv, file, cols,
      [](const std::string& v) {
        const double x = csv_number(v);
        return csv_is_number(v) && std::isfinite(x) && x >= 0 && x == std::floor(x);
      },
      "not a whole number of 0 or more");
  // A count of correct images cannot exceed the row's images (a damaged table, not a move).
  if (!csv.has("images")) return;
  for (const char* c : cols) {
    if (!csv.has(c) || std::string(c).rfind("correct", 0) != 0) continue;
    for (size_t r = 0; r < csv.rows.size(); ++r) {
      if (csv_number(csv.at(r, c)) > csv_number(csv.at(r, "images"))) {
        user_error("{}, line {}: column '{}' holds {}, more than the row's {} images", file.string(), csv.line[r], c,
                   csv.at(r, c), csv.at(r, "images"));
      }
    }
  }
}

void require_finite(const Csv& csv, const std::filesystem::path& file, std::initializer_list<const char*> cols) {
  require_fields(csv, file, cols, [](const std::string& v) { return csv_is_number(v) && std::isfinite(csv_number(v)); },
                 "not a finite number (accuracies come from counts of images)");
}

}  // namespace qsweep
