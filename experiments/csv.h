// Reading the CSV and text files of a results folder (report, check).
#pragma once

#include <filesystem>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

namespace qsweep {

struct Csv {
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  std::vector<size_t> line;    // per row: the line of the file it starts on (the header's is 1)
  std::vector<size_t> fields;  // per row: its fields as written, before padding

  int col(const std::string& name) const;
  bool has(const std::string& name) const { return col(name) >= 0; }
  // The field of row r in column `name`; "" when the column is absent.
  const std::string& at(size_t r, const std::string& name) const;
};

// RFC 4180: commas, double-quoted fields with "" for a quote, LF or CRLF line ends. The first
// line is the header; shorter rows are padded with empty fields.
Csv parse_csv(const std::string& text);

// The whole file, or nullopt when it does not exist; a UserError when it exists but cannot
// be read (permissions, a symlink loop).
std::optional<std::string> read_text(const std::filesystem::path& p);
// read_text() for optional files (context, caches): nothing also when it cannot be read.
std::optional<std::string> read_text_if_readable(const std::filesystem::path& p);
std::optional<Csv> read_csv(const std::filesystem::path& p);

// A CSV number: "inf" and "nan" as strtod reads them; empty or malformed: NaN.
double csv_number(const std::string& s);
// Whether s is a whole number as csv_number reads it (also "inf", "nan"; not empty).
bool csv_is_number(const std::string& s);

// Checks of a results table read back (check, report): a damaged table is one sentence naming
// the file, line and column (a UserError), never a wrong figure or a passing check.
// Every column of `cols` present, and every row as wide as the header.
void require_columns(const Csv& csv, const std::filesystem::path& file, std::initializer_list<const char*> cols);
// Every field of the columns of `cols` (those present) a number ("nan" and "inf" are), or empty
// where `empty_ok` (confidence intervals without bootstrap resamples).
void require_numbers(const Csv& csv, const std::filesystem::path& file, std::initializer_list<const char*> cols,
                     bool empty_ok = false);
// Every field of the columns of `cols` (those present) a finite number: accuracies and
// degradations, which counts of images give ("nan" there is a damaged table, not a result).
void require_finite(const Csv& csv, const std::filesystem::path& file, std::initializer_list<const char*> cols);
// Every field of the columns of `cols` (those present) a whole number of 0 or more.
void require_counts(const Csv& csv, const std::filesystem::path& file, std::initializer_list<const char*> cols);

}  // namespace qsweep
