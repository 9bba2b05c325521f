// Ingests SST files that a RocksDB instance wrote (e.g. the files of a downloaded checkpoint)
// into another DB without rewriting a record: RocksDB 11's
// IngestExternalFileOptions::allow_db_generated_files, which the C API does not expose.
//
// The handles come from the `rocksdb` crate's C API objects; in RocksDB's c.cc both structs
// hold the C++ pointer as their first member (`rocksdb_t { DB* rep; }`,
// `rocksdb_column_family_handle_t { ColumnFamilyHandle* rep; bool immortal; }`).

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "rocksdb/convenience.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"

namespace {
struct DbHandle {
  rocksdb::DB* rep;
};
struct CfHandle {
  rocksdb::ColumnFamilyHandle* rep;
  bool immortal;
};

char* copy_message(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, s.data(), s.size());
    out[s.size()] = '\0';
  }
  return out;
}
}  // namespace

extern "C" {

// Ingests `count` files (ordered oldest data first) into one column family. `move_files`
// hard-links them into the DB and unlinks the originals. Returns 0 on success; otherwise 1 and
// a malloc'ed message in *error (free it with regroup_free_error).
int regroup_ingest_db_generated_files(void* db, void* cf, const char* const* paths,
                                      size_t count, int move_files, char** error) {
  *error = nullptr;
  try {
    auto* d = static_cast<DbHandle*>(db)->rep;
    auto* c = static_cast<CfHandle*>(cf)->rep;
    std::vector<std::string> files;
    files.reserve(count);
    for (size_t i = 0; i < count; ++i) {
      files.emplace_back(paths[i]);
    }
    rocksdb::IngestExternalFileOptions opts;
    opts.allow_db_generated_files = true;
    opts.snapshot_consistency = false;
    opts.allow_blocking_flush = false;
    opts.write_global_seqno = false;
    opts.allow_global_seqno = false;
    opts.move_files = move_files != 0;
    opts.link_files = false;
    opts.failed_move_fall_back_to_copy = true;
    opts.verify_checksums_before_ingest = false;
    opts.fill_cache = false;
    rocksdb::Status s = d->IngestExternalFile(c, files, opts);
    if (!s.ok()) {
      *error = copy_message(s.ToString());
      return 1;
    }
    return 0;
  } catch (const std::exception& e) {
    *error = copy_message(std::string("exception: ") + e.what());
    return 1;
  } catch (...) {
    *error = copy_message("unknown C++ exception");
    return 1;
  }
}

// Drops the SST files (outside L0) whose keys lie entirely in [begin, end) — end excluded,
// unlike the C API's rocksdb_delete_file_in_range_cf, which would also drop a file whose last
// key equals `end` (the first key of the range being kept).
int regroup_delete_files_in_range(void* db, void* cf, const char* begin, size_t begin_len,
                                  const char* end, size_t end_len, char** error) {
  *error = nullptr;
  try {
    auto* d = static_cast<DbHandle*>(db)->rep;
    auto* c = static_cast<CfHandle*>(cf)->rep;
    rocksdb::Slice b(begin, begin_len);
    rocksdb::Slice e(end, end_len);
    rocksdb::Status s = rocksdb::DeleteFilesInRange(d, c, &b, &e, /*include_end=*/false);
    if (!s.ok()) {
      *error = copy_message(s.ToString());
      return 1;
    }
    return 0;
  } catch (const std::exception& ex) {
    *error = copy_message(std::string("exception: ") + ex.what());
    return 1;
  } catch (...) {
    *error = copy_message("unknown C++ exception");
    return 1;
  }
}

void regroup_free_error(char* error) { std::free(error); }
}
