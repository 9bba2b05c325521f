// What regroup needs from RocksDB's C++ API that its C API does not expose:
// - ingesting SST files that a RocksDB instance wrote (e.g. the files of a downloaded
//   checkpoint) into another DB without rewriting a record: RocksDB 11's
//   IngestExternalFileOptions::allow_db_generated_files;
// - an end-exclusive DeleteFilesInRange;
// - an SST partitioner that ends compaction output files at key-group boundaries;
// - a file system without syncs, for the DB a restore builds when it is deliberately not made
//   durable (RocksDB syncs every file it links in, its MANIFEST and its directory otherwise).
// - each live SST file's sequence numbers and epoch number (`LiveFileMetaData`; the C API's
//   live files carry neither), which order L0 files.
//
// The handles come from the `rocksdb` crate's C API objects; in RocksDB's c.cc these structs
// hold the C++ object as their first member (`rocksdb_t { DB* rep; }`,
// `rocksdb_column_family_handle_t { ColumnFamilyHandle* rep; bool immortal; }`,
// `rocksdb_options_t { Options rep; }`).

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "rocksdb/convenience.h"
#include "rocksdb/db.h"
#include "rocksdb/env.h"
#include "rocksdb/file_system.h"
#include "rocksdb/metadata.h"
#include "rocksdb/options.h"
#include "rocksdb/sst_partitioner.h"

namespace {
struct DbHandle {
  rocksdb::DB* rep;
};
struct CfHandle {
  rocksdb::ColumnFamilyHandle* rep;
  bool immortal;
};
struct OptionsHandle {
  rocksdb::Options rep;
};

// Ends a compaction output file where the key-group prefix changes, once the file holds at least
// `min_file_bytes`: a later restore to any key-group range then finds whole files on either side
// of its boundaries (it drops or skips them instead of rewriting them), while state with many
// small key groups still gets files of a sensible size.
class KeyGroupPartitioner final : public rocksdb::SstPartitioner {
 public:
  KeyGroupPartitioner(size_t prefix_len, uint64_t min_file_bytes)
      : prefix_len_(prefix_len), min_file_bytes_(min_file_bytes) {}

  const char* Name() const override { return "RegroupKeyGroupPartitioner"; }

  rocksdb::PartitionerResult ShouldPartition(
      const rocksdb::PartitionerRequest& request) override {
    if (request.current_output_file_size < min_file_bytes_) {
      return rocksdb::kNotRequired;
    }
    return SameKeyGroup(*request.prev_user_key, *request.current_user_key)
               ? rocksdb::kNotRequired
               : rocksdb::kRequired;
  }

  // Moving a file to the next level unchanged keeps it as it is; only a file inside one key
  // group is sure to satisfy the rule above.
  bool CanDoTrivialMove(const rocksdb::Slice& smallest_user_key,
                        const rocksdb::Slice& largest_user_key) override {
    return SameKeyGroup(smallest_user_key, largest_user_key);
  }

 private:
  bool SameKeyGroup(const rocksdb::Slice& a, const rocksdb::Slice& b) const {
    rocksdb::Slice pa(a.data(), a.size() < prefix_len_ ? a.size() : prefix_len_);
    rocksdb::Slice pb(b.data(), b.size() < prefix_len_ ? b.size() : prefix_len_);
    return pa == pb;
  }

  size_t prefix_len_;
  uint64_t min_file_bytes_;
};

class KeyGroupPartitionerFactory final : public rocksdb::SstPartitionerFactory {
 public:
  KeyGroupPartitionerFactory(size_t prefix_len, uint64_t min_file_bytes)
      : prefix_len_(prefix_len), min_file_bytes_(min_file_bytes) {}

  const char* Name() const override { return "RegroupKeyGroupPartitionerFactory"; }

  std::unique_ptr<rocksdb::SstPartitioner> CreatePartitioner(
      const rocksdb::SstPartitioner::Context& /* context */) const override {
    return std::make_unique<KeyGroupPartitioner>(prefix_len_, min_file_bytes_);
  }

 private:
  size_t prefix_len_;
  uint64_t min_file_bytes_;
};

// A writable file whose syncs do nothing (see UnsyncedFileSystem).
class UnsyncedWritableFile final : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  explicit UnsyncedWritableFile(std::unique_ptr<rocksdb::FSWritableFile>&& t)
      : FSWritableFileOwnerWrapper(std::move(t)) {}

  rocksdb::IOStatus Sync(const rocksdb::IOOptions& /* options */,
                         rocksdb::IODebugContext* /* dbg */) override {
    return rocksdb::IOStatus::OK();
  }
  rocksdb::IOStatus Fsync(const rocksdb::IOOptions& /* options */,
                          rocksdb::IODebugContext* /* dbg */) override {
    return rocksdb::IOStatus::OK();
  }
  rocksdb::IOStatus RangeSync(uint64_t /* offset */, uint64_t /* nbytes */,
                              const rocksdb::IOOptions& /* options */,
                              rocksdb::IODebugContext* /* dbg */) override {
    return rocksdb::IOStatus::OK();
  }
};

// A directory whose syncs do nothing (see UnsyncedFileSystem).
class UnsyncedDirectory final : public rocksdb::FSDirectoryWrapper {
 public:
  explicit UnsyncedDirectory(std::unique_ptr<rocksdb::FSDirectory>&& t)
      : FSDirectoryWrapper(std::move(t)) {}

  rocksdb::IOStatus Fsync(const rocksdb::IOOptions& /* options */,
                          rocksdb::IODebugContext* /* dbg */) override {
    return rocksdb::IOStatus::OK();
  }
  rocksdb::IOStatus FsyncWithDirOptions(
      const rocksdb::IOOptions& /* options */, rocksdb::IODebugContext* /* dbg */,
      const rocksdb::DirFsyncOptions& /* dir_fsync_options */) override {
    return rocksdb::IOStatus::OK();
  }
};

// The default file system without syncs, for the DB a restore builds when it is not to be made
// durable: every sync of a file it writes (MANIFEST, CURRENT, OPTIONS, its flushes) and of a
// directory does nothing, and `SyncFile` (which RocksDB calls only to sync each file an
// ingestion links into the DB) reports NotSupported, which the ingestion accepts as "this file
// system needs no sync". Each sync here is a cache flush of the disk, which also stalls the
// restore's concurrent downloads.
class UnsyncedFileSystem final : public rocksdb::FileSystemWrapper {
 public:
  explicit UnsyncedFileSystem(const std::shared_ptr<rocksdb::FileSystem>& target)
      : FileSystemWrapper(target) {}

  static const char* kClassName() { return "RegroupUnsyncedFileSystem"; }
  const char* Name() const override { return kClassName(); }

  rocksdb::IOStatus SyncFile(const std::string& /* fname */,
                             const rocksdb::FileOptions& /* file_opts */,
                             const rocksdb::IOOptions& /* io_opts */, bool /* use_fsync */,
                             rocksdb::IODebugContext* /* dbg */) override {
    return rocksdb::IOStatus::NotSupported("regroup: ingested files are not synced");
  }

  rocksdb::IOStatus NewWritableFile(const std::string& fname,
                                    const rocksdb::FileOptions& file_opts,
                                    std::unique_ptr<rocksdb::FSWritableFile>* result,
                                    rocksdb::IODebugContext* dbg) override {
    return Unsynced(target()->NewWritableFile(fname, file_opts, result, dbg), result);
  }

  rocksdb::IOStatus ReopenWritableFile(const std::string& fname,
                                       const rocksdb::FileOptions& file_opts,
                                       std::unique_ptr<rocksdb::FSWritableFile>* result,
                                       rocksdb::IODebugContext* dbg) override {
    return Unsynced(target()->ReopenWritableFile(fname, file_opts, result, dbg), result);
  }

  rocksdb::IOStatus ReuseWritableFile(const std::string& fname, const std::string& old_fname,
                                      const rocksdb::FileOptions& file_opts,
                                      std::unique_ptr<rocksdb::FSWritableFile>* result,
                                      rocksdb::IODebugContext* dbg) override {
    return Unsynced(target()->ReuseWritableFile(fname, old_fname, file_opts, result, dbg),
                    result);
  }

  rocksdb::IOStatus NewDirectory(const std::string& name, const rocksdb::IOOptions& io_opts,
                                 std::unique_ptr<rocksdb::FSDirectory>* result,
                                 rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = target()->NewDirectory(name, io_opts, result, dbg);
    if (s.ok()) {
      *result = std::make_unique<UnsyncedDirectory>(std::move(*result));
    }
    return s;
  }

 private:
  static rocksdb::IOStatus Unsynced(rocksdb::IOStatus s,
                                    std::unique_ptr<rocksdb::FSWritableFile>* result) {
    if (s.ok()) {
      *result = std::make_unique<UnsyncedWritableFile>(std::move(*result));
    }
    return s;
  }
};

// One environment for the process (options hold a raw pointer to it): never freed.
rocksdb::Env* unsynced_env() {
  static rocksdb::Env* env =
      rocksdb::NewCompositeEnv(
          std::make_shared<UnsyncedFileSystem>(rocksdb::FileSystem::Default()))
          .release();
  return env;
}

char* copy_message(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, s.data(), s.size());
    out[s.size()] = '\0';
  }
  return out;
}

// Runs `body` (returning a rocksdb::Status) for a C entry point: 0 on success; otherwise 1 and a
// malloc'ed message in *error, for a failed status and for any C++ exception alike.
template <typename Body>
int guarded(char** error, Body body) {
  *error = nullptr;
  try {
    rocksdb::Status s = body();
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
}  // namespace

extern "C" {

// Ingests `count` files (ordered oldest data first) into one column family. `move_files`
// hard-links them into the DB and unlinks the originals. Returns 0 on success; otherwise 1 and
// a malloc'ed message in *error (free it with regroup_free_error).
int regroup_ingest_db_generated_files(void* db, void* cf, const char* const* paths,
                                      size_t count, int move_files, char** error) {
  return guarded(error, [&] {
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
    return d->IngestExternalFile(c, files, opts);
  });
}

// Drops the SST files (outside L0) whose keys lie entirely in [begin, end) — end excluded,
// unlike the C API's rocksdb_delete_file_in_range_cf, which would also drop a file whose last
// key equals `end` (the first key of the range being kept).
int regroup_delete_files_in_range(void* db, void* cf, const char* begin, size_t begin_len,
                                  const char* end, size_t end_len, char** error) {
  return guarded(error, [&] {
    auto* d = static_cast<DbHandle*>(db)->rep;
    auto* c = static_cast<CfHandle*>(cf)->rep;
    rocksdb::Slice b(begin, begin_len);
    rocksdb::Slice e(end, end_len);
    return rocksdb::DeleteFilesInRange(d, c, &b, &e, /*include_end=*/false);
  });
}

// Makes running and future manual compactions of `db` end early (CompactRange returns
// "manual compaction paused"): a worker stopping does not wait for its cleanup compaction.
void regroup_disable_manual_compaction(void* db) {
  static_cast<DbHandle*>(db)->rep->DisableManualCompaction();
}

// Sets the key-group partitioner (above) on a `rocksdb_options_t`.
void regroup_set_key_group_partitioner(void* options, size_t prefix_len,
                                       uint64_t min_file_bytes) {
  static_cast<OptionsHandle*>(options)->rep.sst_partitioner_factory =
      std::make_shared<KeyGroupPartitionerFactory>(prefix_len, min_file_bytes);
}

// Makes a DB opened with these `rocksdb_options_t` sync nothing (UnsyncedFileSystem above).
void regroup_set_unsynced(void* options) {
  static_cast<OptionsHandle*>(options)->rep.env = unsynced_env();
}

// Calls `each` once per live SST file of `db`, with its name (relative to the DB directory),
// column family, level, smallest and largest sequence number and epoch number (0: unknown).
// The strings are valid only during the call. Returns 0, or 1 and a message as above.
typedef void (*regroup_live_sst_fn)(void* context, const char* name, size_t name_len,
                                    const char* column_family, size_t column_family_len,
                                    int level, uint64_t smallest_seqno, uint64_t largest_seqno,
                                    uint64_t epoch_number);
int regroup_live_sst_order(void* db, regroup_live_sst_fn each, void* context, char** error) {
  return guarded(error, [&] {
    std::vector<rocksdb::LiveFileMetaData> files;
    static_cast<DbHandle*>(db)->rep->GetLiveFilesMetaData(&files);
    for (const auto& f : files) {
      each(context, f.relative_filename.data(), f.relative_filename.size(),
           f.column_family_name.data(), f.column_family_name.size(), f.level, f.smallest_seqno,
           f.largest_seqno, f.epoch_number);
    }
    return rocksdb::Status::OK();
  });
}

void regroup_free_error(char* error) { std::free(error); }
}
