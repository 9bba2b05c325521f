//! All of regroup's FFI, as safe functions over the C++ shim (`src/rocksdb_shim.cc`, built by
//! `build.rs`) that reaches what RocksDB's C API does not expose: the key-group SST
//! partitioner, ingestion of DB-generated SST files, an end-exclusive `DeleteFilesInRange`, the
//! sequence numbers and epoch numbers of live SST files.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::Path;

use rocksdb::{AsColumnFamilyRef, AsRawPtr, DB};

use crate::checkpoint::SstOrder;
use crate::error::{Error, Result};

/// What the shim reports per live SST file (see `regroup_live_sst_order`).
type LiveSstFn = unsafe extern "C" fn(
    context: *mut c_void,
    name: *const c_char,
    name_len: usize,
    column_family: *const c_char,
    column_family_len: usize,
    level: c_int,
    smallest_seqno: u64,
    largest_seqno: u64,
    epoch_number: u64,
);

unsafe extern "C" {
    fn regroup_ingest_db_generated_files(
        db: *mut c_void,
        cf: *mut c_void,
        paths: *const *const c_char,
        count: usize,
        move_files: c_int,
        error: *mut *mut c_char,
    ) -> c_int;
    fn regroup_delete_files_in_range(
        db: *mut c_void,
        cf: *mut c_void,
        begin: *const c_char,
        begin_len: usize,
        end: *const c_char,
        end_len: usize,
        error: *mut *mut c_char,
    ) -> c_int;
    fn regroup_free_error(error: *mut c_char);
    fn regroup_disable_manual_compaction(db: *mut c_void);
    fn regroup_set_unsynced(options: *mut c_void);
    fn regroup_set_key_group_partitioner(
        options: *mut c_void,
        prefix_len: usize,
        min_file_bytes: u64,
    );
    fn regroup_live_sst_order(
        db: *mut c_void,
        each: LiveSstFn,
        context: *mut c_void,
        error: *mut *mut c_char,
    ) -> c_int;
}

fn take_error(code: c_int, error: *mut c_char) -> Option<String> {
    if code == 0 {
        return None;
    }
    if error.is_null() {
        return Some("unknown error".to_owned());
    }
    // SAFETY: the shim returns a NUL-terminated malloc'ed string, freed right after copying.
    let message = unsafe { CStr::from_ptr(error) }
        .to_string_lossy()
        .into_owned();
    unsafe { regroup_free_error(error) };
    Some(message)
}

/// Makes DBs opened with `options` cut compaction output files at key-group boundaries (keys
/// start with a `prefix_len`-byte key group) once a file holds `min_file_bytes`.
pub fn set_key_group_partitioner(
    options: &mut rocksdb::Options,
    prefix_len: usize,
    min_file_bytes: u64,
) {
    // SAFETY: `options` is a live `rocksdb_options_t`; the shim only sets a shared_ptr field in it.
    unsafe {
        regroup_set_key_group_partitioner(
            rocksdb::AsRawPtr::as_raw_ptr(options).cast(),
            prefix_len,
            min_file_bytes,
        );
    }
}

/// Ingests `files` (SST files written by some RocksDB instance, ordered oldest data first: lowest
/// LSM level first, within L0 oldest first) into column family `cf` of `db`, keeping their
/// sequence numbers. The files are moved (hard-linked, then unlinked). They must not overlap
/// data already in `cf`; they may overlap each other. `context` names them in errors.
pub fn ingest_db_generated_files(
    db: &DB,
    cf: &impl AsColumnFamilyRef,
    files: &[&Path],
    context: &str,
) -> Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    let paths: Vec<CString> = files
        .iter()
        .map(|p| {
            CString::new(p.as_os_str().as_encoded_bytes())
                .map_err(|_| Error::invalid("file path", p.display(), "a path without NUL bytes"))
        })
        .collect::<Result<_>>()?;
    let ptrs: Vec<*const c_char> = paths.iter().map(|p| p.as_ptr()).collect();
    let mut error: *mut c_char = std::ptr::null_mut();
    // SAFETY: `db` and `cf` outlive the call; the shim reads `ptrs.len()` valid C strings.
    let code = unsafe {
        regroup_ingest_db_generated_files(
            db.as_raw_ptr().cast(),
            cf.inner().cast(),
            ptrs.as_ptr(),
            ptrs.len(),
            1,
            &mut error,
        )
    };
    match take_error(code, error) {
        None => Ok(()),
        Some(message) => Err(Error::Other(format!(
            "rocksdb: ingest {context}: {message}"
        ))),
    }
}

/// Drops the SST files outside L0 whose keys all lie in `[begin, end)` (end excluded).
pub fn delete_files_in_range(
    db: &DB,
    cf: &impl AsColumnFamilyRef,
    begin: &[u8],
    end: &[u8],
    context: &str,
) -> Result<()> {
    let mut error: *mut c_char = std::ptr::null_mut();
    // SAFETY: `db`, `cf` and both slices outlive the call.
    let code = unsafe {
        regroup_delete_files_in_range(
            db.as_raw_ptr().cast(),
            cf.inner().cast(),
            begin.as_ptr().cast(),
            begin.len(),
            end.as_ptr().cast(),
            end.len(),
            &mut error,
        )
    };
    match take_error(code, error) {
        None => Ok(()),
        Some(message) => Err(Error::Other(format!(
            "rocksdb: delete files in range of {context}: {message}"
        ))),
    }
}

/// Makes a DB opened with `options` sync nothing: not the files it ingests (RocksDB syncs each
/// file it links in otherwise), nor the files it writes (MANIFEST, CURRENT, OPTIONS, flushes),
/// nor its directory.
pub fn set_unsynced(options: &mut rocksdb::Options) {
    // SAFETY: `options` is a live `rocksdb_options_t`; the shim sets its `env` to a static,
    // never-freed environment.
    unsafe { regroup_set_unsynced(rocksdb::AsRawPtr::as_raw_ptr(options).cast()) }
}

/// Makes running and later manual compactions of `db` (e.g. [`super::StateBackend::compact_outside_range`])
/// end early, so that closing the DB does not wait for them.
pub fn stop_manual_compactions(db: &DB) {
    // SAFETY: `db` outlives the call.
    unsafe { regroup_disable_manual_compaction(db.as_raw_ptr().cast()) }
}

/// One live SST file of a DB with what orders it among the others (RocksDB's
/// `LiveFileMetaData`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveSst {
    /// File name in the DB directory, e.g. `000012.sst`.
    pub name: String,
    /// Column family name.
    pub column_family: String,
    /// LSM level.
    pub level: i32,
    /// Its sequence numbers and epoch number.
    pub order: SstOrder,
}

/// Every live SST file of `db` with its sequence numbers and epoch number; `context` names the
/// DB in errors.
pub fn live_sst_order(db: &DB, context: &str) -> Result<Vec<LiveSst>> {
    let mut files: Vec<LiveSst> = Vec::new();
    let mut error: *mut c_char = std::ptr::null_mut();
    // SAFETY: `db` outlives the call; `files` is the context `collect_live_sst` expects and is
    // borrowed only for the call.
    let code = unsafe {
        regroup_live_sst_order(
            db.as_raw_ptr().cast(),
            collect_live_sst,
            (&raw mut files).cast(),
            &mut error,
        )
    };
    match take_error(code, error) {
        None => Ok(files),
        Some(message) => Err(Error::Other(format!(
            "rocksdb: live files of {context}: {message}"
        ))),
    }
}

/// Appends one file the shim reports to the `Vec<LiveSst>` behind `context`.
unsafe extern "C" fn collect_live_sst(
    context: *mut c_void,
    name: *const c_char,
    name_len: usize,
    column_family: *const c_char,
    column_family_len: usize,
    level: c_int,
    smallest_seqno: u64,
    largest_seqno: u64,
    epoch_number: u64,
) {
    // SAFETY: `context` is the vector `live_sst_order` passed; the strings (from
    // `std::string::data`, never null) are valid for their lengths during the call.
    let (files, name, column_family) = unsafe {
        (
            &mut *context.cast::<Vec<LiveSst>>(),
            std::slice::from_raw_parts(name.cast::<u8>(), name_len),
            std::slice::from_raw_parts(column_family.cast::<u8>(), column_family_len),
        )
    };
    files.push(LiveSst {
        name: String::from_utf8_lossy(name).into_owned(),
        column_family: String::from_utf8_lossy(column_family).into_owned(),
        level,
        order: SstOrder {
            smallest_seqno,
            largest_seqno,
            // RocksDB reports 0 when it does not know the epoch.
            epoch_number: (epoch_number != 0).then_some(epoch_number),
        },
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_ingestion_reports_rocksdb_s_message_and_the_context() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = DB::open_cf(&opts, dir.path().join("db"), ["state"]).unwrap();
        let cf = db.cf_handle("state").unwrap();
        let missing = dir.path().join("000042.sst");
        let e = ingest_db_generated_files(&db, &cf, &[&missing], "the test's files").unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("rocksdb: ingest the test's files: ") && text.contains("000042.sst"),
            "{text}"
        );
    }

    #[test]
    fn live_files_carry_their_sequence_numbers_and_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.set_disable_auto_compactions(true);
        let db = DB::open(&opts, dir.path()).unwrap();
        for version in 0..3u8 {
            db.put(b"a", [version]).unwrap();
            db.put(b"b", [version]).unwrap();
            db.flush().unwrap();
        }
        let mut files = live_sst_order(&db, "the test DB").unwrap();
        files.sort_by_key(|f| f.order.largest_seqno);
        let names: Vec<String> = db
            .live_files()
            .unwrap()
            .into_iter()
            .map(|f| f.name.trim_start_matches('/').to_owned())
            .collect();
        assert_eq!(files.len(), 3);
        for (i, f) in files.iter().enumerate() {
            assert!(names.contains(&f.name), "{f:?} not among {names:?}");
            assert_eq!((f.column_family.as_str(), f.level), ("default", 0));
            // Two puts per flush: sequence numbers 1-2, 3-4, 5-6; epochs in flush order.
            let first = 2 * i as u64 + 1;
            assert_eq!(
                (f.order.smallest_seqno, f.order.largest_seqno),
                (first, first + 1)
            );
        }
        let epochs: Vec<u64> = files
            .iter()
            .map(|f| f.order.epoch_number.unwrap())
            .collect();
        assert!(epochs.is_sorted() && epochs[0] < epochs[2], "{epochs:?}");
    }
}
