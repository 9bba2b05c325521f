//! Local files written by downloads: checksummed on the way, and synced when asked to be
//! durable.
//!
//! A restore that is asked for a durable DB (`regroup restore --sync`) must have each file it
//! hands to the new DB on disk (synced) first. Written
//! with direct I/O that is steadier than through the page cache and synced afterwards, which
//! waits on the kernel's writeback (docs/benchmarks.md). So a durable [`LocalFile`] writes with `O_DIRECT` (an aligned buffer,
//! the last block padded with zeros and the file cut back to its size) where the file system
//! accepts it, through the page cache where it does not (some network file systems), and is
//! synced by [`LocalFile::finish`]. Cached files go through the page cache, unsynced: the
//! kernel writes them back later.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use tracing::debug;

use super::metadata::{Checksum, InlineFile};
use crate::error::{Error, Result};

/// How a download writes its local file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalWrite {
    /// Synced before the download returns, with direct I/O where the file system allows it.
    Durable,
    /// With direct I/O where the file system allows it, not synced: no dirty pages for the
    /// kernel to throttle writers on, but the file's metadata and the disk's cache are not
    /// flushed (a file that need not survive a crash of the node).
    Direct,
    /// Page cache only, not synced: a file that need not survive a crash of the node (a
    /// scratch file, or a file of a restore that is not trusted after a reboot).
    Cached,
}

/// Alignment of the buffer, the file offsets and the lengths of direct writes: the largest
/// logical block size of common disks.
const ALIGN: usize = 4096;

/// Bytes per write. With direct I/O each write waits for the disk; with four downloads at once,
/// 1 MiB was the fastest size measured (docs/benchmarks.md).
const WRITE_BYTES: usize = 1 << 20;

/// The ends of a file of `size` bytes that a reader of an SST file reads first, as the file
/// offsets `(head_end, tail_start)`: the first 16 KiB (its first data block) and the last 1/128
/// of the file, at least 128 KiB (the footer, metaindex, properties and index blocks, and the
/// last data block; the index of the benchmark's files is 0.3% of them). Ingesting a file,
/// RocksDB reads those, a few small reads one file after the other (`strace`). Both are
/// multiples of 4 KiB, or the size of a file of less than 16 KiB (all head);
/// `head_end == tail_start` when the ends cover the whole file.
pub fn table_metadata_ends(size: u64) -> (u64, u64) {
    let align = ALIGN as u64;
    let head_end = (16u64 << 10).min(size);
    let tail = (size / 128).max(128 << 10);
    let tail_start = (size.saturating_sub(tail) / align * align).max(head_end);
    (head_end, tail_start)
}

/// A local file being written from a download, its size and checksum computed on the way.
///
/// With direct I/O, the ends of the file that an SST file's reader reads first
/// ([`table_metadata_ends`] of the size the download expects) still go through the page cache,
/// so that the new DB's ingestion reads them from memory right after the download, instead of
/// from a disk busy with the other downloads' writes.
pub struct LocalFile {
    file: File,
    path: PathBuf,
    mode: LocalWrite,
    /// Whether the file system takes direct writes.
    direct: bool,
    /// Whether the descriptor has `O_DIRECT` set now.
    flagged_direct: bool,
    /// Where direct writes go: `[start, end)` of the file, the rest through the page cache.
    direct_region: (u64, u64),
    /// The buffer of [`write_all`](Self::write_all), allocated by its first call.
    buf: Vec<u8>,
    /// Offset of the aligned region of `buf`.
    start: usize,
    /// Bytes waiting in the aligned region.
    pending: usize,
    size: u64,
    checksum: Checksum,
}

impl LocalFile {
    /// Creates (or truncates) `path`, for a download of `expected_size` bytes (another size is
    /// written as correctly, only its ends may take the other path).
    pub fn create(path: &Path, mode: LocalWrite, expected_size: u64) -> Result<Self> {
        let open = |flags: i32| {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(flags)
                .open(path)
        };
        let (file, direct) = match mode {
            LocalWrite::Cached => (open(0).map_err(Error::io("create", path))?, false),
            LocalWrite::Durable | LocalWrite::Direct => match open(libc::O_DIRECT) {
                Ok(f) => (f, true),
                // EINVAL: the file system does not do direct I/O.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    (open(0).map_err(Error::io("create", path))?, false)
                }
                Err(e) => return Err(Error::io("create", path)(e)),
            },
        };
        Ok(LocalFile {
            file,
            path: path.to_path_buf(),
            mode,
            direct,
            flagged_direct: direct,
            direct_region: table_metadata_ends(expected_size),
            buf: Vec::new(),
            start: 0,
            pending: 0,
            size: 0,
            checksum: Checksum::default(),
        })
    }

    /// Whether writes bypass the page cache.
    #[cfg(test)]
    fn is_direct(&self) -> bool {
        self.direct
    }

    /// Copies the whole of `src`, a file of a store on a local or mounted file system, through a
    /// read-only memory map of it, so that no byte is copied in user space (a direct write goes
    /// from the source's page cache to the disk; a cached one is the kernel's one copy), while
    /// a second thread computes the checksum over the same pages (faster than checksumming
    /// between the writes). The store never changes an
    /// object in place (objects are written whole, then renamed into place), so the mapping
    /// holds what was there when it was opened. The file must be empty.
    ///
    /// The file is allocated whole first, its ends (see [`LocalFile`]) are written through the
    /// page cache, and the rest in chunks of 1 MiB: this writer takes them one after
    /// the other, and with `helpers`, writers with nothing else to do take some of them too
    /// ([`CopyHelpers::help`]), so that a restore's last files do not each wait for one writer.
    pub fn copy_from_file(&mut self, src: &File, helpers: Option<&CopyHelpers>) -> Result<()> {
        let len = src
            .metadata()
            .map_err(Error::io("stat the download for", &self.path))?
            .len();
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the mapping is read-only; the store does not truncate or rewrite objects in
        // place (see above).
        let map = unsafe { memmap2::MmapOptions::new().populate().map(src) }
            .map_err(Error::io("map the download for", &self.path))?;
        self.copy_map(map, table_metadata_ends(len), helpers)
    }

    /// [`copy_from_file`](Self::copy_from_file) of `map`, `region` written in chunks.
    fn copy_map(
        &mut self,
        map: memmap2::Mmap,
        region: (u64, u64),
        helpers: Option<&CopyHelpers>,
    ) -> Result<()> {
        let copy = self.begin_copy(map, region)?;
        let checksum = std::thread::scope(|s| -> Result<Checksum> {
            let sum = || Checksum::default().update(&copy.map);
            let checksum = (copy.chunks > 0).then(|| s.spawn(sum));
            let failed = self.write_ends(&copy).err();
            let helpers = helpers.filter(|_| failed.is_none() && copy.chunks > 1);
            if let Some(helpers) = helpers {
                helpers.offer(&copy);
            }
            let failed = self.write_own_chunks(&copy, failed);
            if let Some(helpers) = helpers {
                helpers.forget(&copy);
            }
            let checksum = match checksum {
                Some(thread) => thread.join().expect("checksum thread panicked"),
                None => sum(),
            };
            failed.map_or(Ok(checksum), Err)
        })?;
        (self.size, self.checksum) = (copy.map.len() as u64, checksum);
        Ok(())
    }

    /// Allocates the (empty) file whole and prepares the copy of `map` into it.
    fn begin_copy(&mut self, map: memmap2::Mmap, region: (u64, u64)) -> Result<Arc<SharedCopy>> {
        assert_eq!(
            (self.size, self.pending),
            (0, 0),
            "a copy starts an empty file"
        );
        let len = map.len() as u64;
        match rustix::fs::fallocate(&self.file, rustix::fs::FallocateFlags::empty(), 0, len) {
            Ok(()) => {}
            // Not every file system allocates ahead; the writes land where they belong anyway.
            Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => {}
            Err(e) => return Err(Error::io("allocate", &self.path)(e.into())),
        }
        let copy = SharedCopy::new(&self.path, map, region);
        self.direct_region = copy.region;
        Ok(Arc::new(copy))
    }

    /// Writes what lies outside the copy's region (through the page cache).
    fn write_ends(&mut self, copy: &SharedCopy) -> Result<()> {
        let (start, end) = (copy.region.0 as usize, copy.region.1 as usize);
        self.write_at(0, &copy.map[..start], start)?;
        self.write_at(end as u64, &copy.map[end..], copy.map.len() - end)
    }

    /// Writes the chunks no helper takes (or gives back) until every chunk is written; returns
    /// the first error, `failed` if given (after which chunks are no longer written, only
    /// waited for).
    fn write_own_chunks(&mut self, copy: &SharedCopy, mut failed: Option<Error>) -> Option<Error> {
        loop {
            while let Some(chunk) = copy.claim().or_else(|| copy.given_back()) {
                if failed.is_none() {
                    let (at, data) = copy.chunk(chunk);
                    failed = self.write_at(at, data, data.len()).err();
                }
                copy.written(None);
            }
            if copy.wait() {
                return failed.or_else(|| copy.take_error());
            }
        }
    }

    /// Appends `data`.
    pub fn write_all(&mut self, mut data: &[u8]) -> Result<()> {
        self.checksum = self.checksum.update(data);
        while !data.is_empty() {
            let n = data.len().min(WRITE_BYTES - self.pending);
            self.stage(&data[..n])?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Places `data` (at most what the buffer has room for) after the pending bytes; writes
    /// the buffer once full. The checksum is the caller's.
    fn stage(&mut self, data: &[u8]) -> Result<()> {
        if self.buf.is_empty() {
            self.buf = vec![0u8; WRITE_BYTES + ALIGN];
            self.start = self.buf.as_ptr().align_offset(ALIGN);
        }
        let at = self.start + self.pending;
        self.buf[at..at + data.len()].copy_from_slice(data);
        self.pending += data.len();
        self.size += data.len() as u64;
        if self.pending == WRITE_BYTES {
            self.write_pending()?;
        }
        Ok(())
    }

    /// Writes the pending bytes, with zeros after them in the buffer for a direct write's
    /// padding to whole blocks (only the last write of a file is not whole blocks already).
    fn write_pending(&mut self) -> Result<()> {
        let (len, room) = (self.pending, self.pending.next_multiple_of(ALIGN));
        self.buf[self.start + len..self.start + room].fill(0);
        let buf = std::mem::take(&mut self.buf);
        let at = self.size - len as u64;
        let written = self.write_at(at, &buf[self.start..self.start + room], len);
        self.buf = buf;
        written?;
        self.pending = 0;
        Ok(())
    }

    /// Writes `data[..len]` at file offset `at` (a multiple of [`ALIGN`]); `data` is
    /// block-aligned in memory and ends on a block boundary or where `len` does, the bytes past
    /// `len` being padding a direct write may write (cut off by [`finish`](Self::finish)).
    /// Parts in the direct region are written direct, the others through the page cache.
    fn write_at(&mut self, at: u64, data: &[u8], len: usize) -> Result<()> {
        let (direct_start, direct_end) = self.direct_region;
        let mut done = 0;
        while done < len {
            let pos = at + done as u64;
            let in_direct = self.direct && pos >= direct_start && pos < direct_end;
            let until = if pos < direct_start {
                direct_start
            } else if in_direct {
                direct_end
            } else {
                u64::MAX
            };
            let n = (until - pos).min((len - done) as u64) as usize;
            if in_direct {
                // Whole blocks: padded where the file ends inside the direct region.
                let padded = if done + n == len {
                    data.len() - done
                } else {
                    n
                };
                if self.write_direct(pos, &data[done..done + padded])? {
                    done += n;
                    continue;
                }
            }
            self.set_direct_flag(false)?;
            self.file
                .write_all_at(&data[done..done + n], pos)
                .map_err(Error::io("write", &self.path))?;
            done += n;
        }
        Ok(())
    }

    /// Writes `data` at `pos` with direct I/O; `false` if the file system refused it (it takes
    /// no more direct writes: some, FUSE mounts among them, take `O_DIRECT` at open and refuse
    /// the writes), for the caller to write it through the page cache.
    fn write_direct(&mut self, pos: u64, data: &[u8]) -> Result<bool> {
        self.set_direct_flag(true)?;
        match self.file.write_all_at(data, pos) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.direct = false;
                debug!(file = %self.path.display(), "direct write refused: writing through the page cache");
                Ok(false)
            }
            Err(e) => Err(Error::io("write", &self.path)(e)),
        }
    }

    /// Sets or clears the descriptor's `O_DIRECT`, if not so already.
    fn set_direct_flag(&mut self, on: bool) -> Result<()> {
        use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
        if self.flagged_direct == on {
            return Ok(());
        }
        let flags = fcntl_getfl(&self.file)
            .map_err(|e| Error::io("read the flags of", &self.path)(e.into()))?;
        let flags = if on {
            flags | OFlags::DIRECT
        } else {
            flags - OFlags::DIRECT
        };
        fcntl_setfl(&self.file, flags)
            .map_err(|e| Error::io("switch direct I/O of", &self.path)(e.into()))?;
        self.flagged_direct = on;
        Ok(())
    }

    /// Writes what is pending, cuts off the padding, syncs a durable file; returns the size
    /// and checksum of what was written.
    pub fn finish(mut self) -> Result<(u64, Checksum)> {
        if self.pending > 0 {
            self.write_pending()?;
        }
        // Padding of the last direct write, or of one refused part-way.
        let len = self
            .file
            .metadata()
            .map_err(Error::io("stat", &self.path))?
            .len();
        if len != self.size {
            self.file
                .set_len(self.size)
                .map_err(Error::io("truncate", &self.path))?;
        }
        if self.mode == LocalWrite::Durable {
            self.file
                .sync_all()
                .map_err(Error::io("sync", &self.path))?;
        }
        close(self.file).map_err(Error::io("close", &self.path))?;
        Ok((self.size, self.checksum))
    }
}

/// Writes a file its handle carries to `dest` as `mode` says, checked like a download: the
/// bytes written must have the size and checksum the handle gives. `referenced_in` names the
/// handle for errors; on failure the file is removed.
pub fn write_inline(
    file: &InlineFile,
    dest: &Path,
    mode: LocalWrite,
    referenced_in: &str,
) -> Result<()> {
    let written = LocalFile::create(dest, mode, file.size).and_then(|mut out| {
        out.write_all(&file.content)?;
        out.finish()
    });
    let result = written.and_then(|(size, checksum)| file.expect(size, checksum, referenced_in));
    if result.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    result
}

/// Copies in progress through [`LocalFile::copy_from_file`] that writers with nothing else to do
/// can take chunks of ([`help`](Self::help)).
#[derive(Default)]
pub struct CopyHelpers {
    copies: Mutex<Vec<Arc<SharedCopy>>>,
}

impl CopyHelpers {
    /// Writes chunks of the copies in progress, each time of the copy with the most chunks
    /// left, until no copy has chunks left to take; returns the number written. A chunk of `n`
    /// bytes goes through the page cache if `page_cache(n)` says so, else with direct I/O. A
    /// write error is the copy's; its own writer's checked close (see [`LocalFile::finish`])
    /// reports the errors of writing back what goes through the page cache, which a network
    /// file system reports to every descriptor open for the file.
    pub fn help(&self, page_cache: impl Fn(u64) -> bool) -> usize {
        let mut written = 0;
        // The file last opened: for which copy, and whether through the page cache.
        let mut open: Option<(Arc<SharedCopy>, bool, File)> = None;
        while let Some((copy, chunk)) = self.take() {
            let (at, data) = copy.chunk(chunk);
            let cached = page_cache(data.len() as u64);
            if !open
                .as_ref()
                .is_some_and(|(c, c_cached, _)| Arc::ptr_eq(c, &copy) && *c_cached == cached)
            {
                let flags = if cached { 0 } else { libc::O_DIRECT };
                let file = OpenOptions::new()
                    .write(true)
                    .custom_flags(flags)
                    .open(&copy.path);
                match file {
                    Ok(file) => open = Some((copy.clone(), cached, file)),
                    Err(e) => {
                        open = None;
                        copy.give_back(chunk, &e);
                        continue;
                    }
                }
            }
            let Some((_, _, file)) = &open else { continue };
            match file.write_all_at(data, at) {
                Ok(()) => {
                    copy.written(None);
                    written += 1;
                }
                // Some file systems (FUSE mounts among them) take O_DIRECT at open and refuse
                // the writes.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) && !cached => {
                    copy.give_back(chunk, &e)
                }
                Err(e) => copy.written(Some(Error::io("write", &copy.path)(e))),
            }
        }
        written
    }

    fn offer(&self, copy: &Arc<SharedCopy>) {
        if let Ok(mut copies) = self.copies.lock() {
            copies.push(copy.clone());
        }
    }

    fn forget(&self, copy: &Arc<SharedCopy>) {
        if let Ok(mut copies) = self.copies.lock() {
            copies.retain(|c| !Arc::ptr_eq(c, copy));
        }
    }

    /// The next chunk of the copy with the most left; copies with none left, or whose file
    /// system refused direct writes, are forgotten.
    fn take(&self) -> Option<(Arc<SharedCopy>, u64)> {
        let mut copies = self.copies.lock().ok()?;
        loop {
            copies.retain(|c| c.unclaimed() > 0 && c.helpable.load(Ordering::Relaxed));
            let copy = copies.iter().max_by_key(|c| c.unclaimed())?.clone();
            if let Some(chunk) = copy.claim() {
                return Some((copy, chunk));
            }
        }
    }
}

/// A copy of a memory-mapped file that several writers write at once: its own writer (the
/// [`LocalFile`]) the ends first, then any writer a chunk of the region between at a time,
/// at its offset. The file is allocated whole first, so that direct writes anywhere overwrite
/// allocated blocks: ext4 lets those run at once, where it serializes writes that extend a
/// file (and buffered writes into allocated blocks are faster too).
struct SharedCopy {
    path: PathBuf,
    map: memmap2::Mmap,
    /// The part of the file written in chunks: block-aligned offsets.
    region: (u64, u64),
    chunks: u64,
    next: AtomicU64,
    /// Whether helpers may write chunks: until one could not.
    helpable: AtomicBool,
    state: Mutex<CopyState>,
    changed: Condvar,
}

#[derive(Default)]
struct CopyState {
    written: u64,
    /// Chunks a helper could not write direct, for the copy's own writer.
    given_back: Vec<u64>,
    error: Option<Error>,
}

impl SharedCopy {
    /// The copy of `map` to `path`, `region` to be written in chunks.
    fn new(path: &Path, map: memmap2::Mmap, region: (u64, u64)) -> Self {
        let len = map.len() as u64;
        let start = region.0.min(len);
        let region = (start, region.1.clamp(start, len));
        SharedCopy {
            path: path.to_path_buf(),
            map,
            region,
            chunks: (region.1 - region.0).div_ceil(WRITE_BYTES as u64),
            next: AtomicU64::new(0),
            helpable: AtomicBool::new(true),
            state: Mutex::new(CopyState::default()),
            changed: Condvar::new(),
        }
    }

    /// Chunk `chunk`: its offset and bytes (block-aligned in memory and in length).
    fn chunk(&self, chunk: u64) -> (u64, &[u8]) {
        let at = self.region.0 + chunk * WRITE_BYTES as u64;
        let end = (at + WRITE_BYTES as u64).min(self.region.1);
        (at, &self.map[at as usize..end as usize])
    }

    fn unclaimed(&self) -> u64 {
        self.chunks
            .saturating_sub(self.next.load(Ordering::Relaxed))
    }

    /// Takes the next chunk to write, if any is left.
    fn claim(&self) -> Option<u64> {
        let chunk = self.next.fetch_add(1, Ordering::Relaxed);
        (chunk < self.chunks).then_some(chunk)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CopyState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a chunk as written (or failed with `error`, the first error kept).
    fn written(&self, error: Option<Error>) {
        let mut state = self.lock();
        state.written += 1;
        if let Some(e) = error {
            state.error.get_or_insert(e);
        }
        if state.written == self.chunks {
            self.changed.notify_all();
        }
    }

    /// Hands `chunk` back to the copy's own writer, as a helper could not write it (`why`:
    /// the file system refused direct I/O, or the file could not be opened); no helper takes
    /// more of this copy's chunks.
    fn give_back(&self, chunk: u64, why: &std::io::Error) {
        self.helpable.store(false, Ordering::Relaxed);
        debug!(file = %self.path.display(), error = %why, "a helper gave a chunk back to the file's writer");
        self.lock().given_back.push(chunk);
        self.changed.notify_all();
    }

    fn given_back(&self) -> Option<u64> {
        self.lock().given_back.pop()
    }

    /// Waits until every chunk is written (`true`) or one was given back (`false`).
    fn wait(&self) -> bool {
        let mut state = self.lock();
        loop {
            if !state.given_back.is_empty() {
                return false;
            }
            if state.written >= self.chunks {
                return true;
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn take_error(&self) -> Option<Error> {
        self.lock().error.take()
    }
}

/// Closes `file`, returning the error the close reports, which dropping it would ignore. On a
/// network file system (NFS) the close writes back what the page cache still holds of the file
/// and reports the errors of that writeback, which an unsynced download would otherwise never
/// see.
fn close(file: File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    let fd = file.into_raw_fd();
    // SAFETY: `fd` was just taken out of an owned `File`, so nothing else closes it; it is not
    // used again, whatever the result (Linux releases the descriptor even when close fails).
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Writes `data` into `path` with `mode`, in odd-sized chunks and from a file through a
    /// memory map, and checks the file and the reported size and checksum; returns whether
    /// the writes were direct.
    fn write_and_check(path: &Path, mode: LocalWrite, data: &[u8]) -> bool {
        let expected = (data.len() as u64, Checksum::of(data));
        let mut f = LocalFile::create(path, mode, data.len() as u64).unwrap();
        let direct = f.is_direct();
        for chunk in data.chunks(100_003) {
            f.write_all(chunk).unwrap();
        }
        assert_eq!(f.finish().unwrap(), expected);
        assert_eq!(std::fs::read(path).unwrap(), data, "{} bytes", data.len());

        // From a file, through a memory map of it.
        let source = path.with_extension("source");
        std::fs::write(&source, data).unwrap();
        let mut f = LocalFile::create(path, mode, data.len() as u64).unwrap();
        f.copy_from_file(&File::open(&source).unwrap(), None)
            .unwrap();
        assert_eq!(f.finish().unwrap(), expected);
        assert_eq!(std::fs::read(path).unwrap(), data, "{} bytes", data.len());
        direct
    }

    #[test]
    fn a_refused_direct_write_goes_on_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = bytes(2 * WRITE_BYTES + 100);
        let mut f = LocalFile::create(&path, LocalWrite::Durable, data.len() as u64).unwrap();
        if !f.is_direct() {
            eprintln!("skipped: the temporary directory's file system refuses O_DIRECT");
            return;
        }
        // A buffer off the block alignment: the kernel refuses the direct write (EINVAL).
        f.buf = vec![0u8; WRITE_BYTES + ALIGN];
        let aligned = f.buf.as_ptr().align_offset(ALIGN);
        f.start = aligned.checked_sub(1).unwrap_or(1);
        f.write_all(&data).unwrap();
        assert!(!f.is_direct(), "the misaligned direct write was accepted");
        assert_eq!(
            f.finish().unwrap(),
            (data.len() as u64, Checksum::of(&data))
        );
        assert_eq!(std::fs::read(&path).unwrap(), data);

        // The same from a memory map, the refusal on a whole chunk written from the map.
        let source = dir.path().join("source");
        std::fs::write(&source, &data).unwrap();
        let mut f = LocalFile::create(&path, LocalWrite::Durable, data.len() as u64).unwrap();
        assert!(f.is_direct());
        // The chunks start at file offset 1, off the block alignment: the kernel refuses them,
        // to a helper (which hands the chunk back) and to the file's own writer.
        let map = map_of(&source);
        let copy = f.begin_copy(map, (1, data.len() as u64)).unwrap();
        f.write_ends(&copy).unwrap();
        let helpers = CopyHelpers::default();
        helpers.offer(&copy);
        assert_eq!(
            helpers.help(|_| false),
            0,
            "a misaligned direct write was accepted"
        );
        assert!(f.write_own_chunks(&copy, None).is_none());
        assert!(!f.is_direct(), "the misaligned direct write was accepted");
        (f.size, f.checksum) = (data.len() as u64, Checksum::of(&data));
        f.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    fn map_of(path: &Path) -> memmap2::Mmap {
        // SAFETY: a read-only map of a file no one changes while it is mapped.
        unsafe { memmap2::Mmap::map(&File::open(path).unwrap()) }.unwrap()
    }

    /// `n` bytes of test data, and a file `source` in `dir` holding them.
    fn source_file(dir: &Path, n: usize) -> (Vec<u8>, PathBuf) {
        let data = bytes(n);
        let source = dir.join("source");
        std::fs::write(&source, &data).unwrap();
        (data, source)
    }

    #[test]
    fn chunks_written_by_helpers_land_where_they_belong() {
        let dir = tempfile::tempdir().unwrap();
        let (data, source) = source_file(dir.path(), 5 * WRITE_BYTES + 300_001);
        let path = dir.path().join("f");
        let mut f = LocalFile::create(&path, LocalWrite::Direct, data.len() as u64).unwrap();
        if !f.is_direct() {
            eprintln!("skipped: the temporary directory's file system refuses O_DIRECT");
            return;
        }
        let copy = f
            .begin_copy(map_of(&source), table_metadata_ends(data.len() as u64))
            .unwrap();
        f.write_ends(&copy).unwrap();
        // The file's own writer takes the first chunk; helpers all the others.
        let own = copy.claim().unwrap();
        let helpers = CopyHelpers::default();
        helpers.offer(&copy);
        assert_eq!(helpers.help(|_| false) as u64, copy.chunks - 1);
        let (at, chunk) = copy.chunk(own);
        f.write_at(at, chunk, chunk.len()).unwrap();
        copy.written(None);
        assert!(f.write_own_chunks(&copy, None).is_none());
        (f.size, f.checksum) = (data.len() as u64, Checksum::of(&data));
        f.finish().unwrap();
        // The helpers' chunks went around the page cache too (checked before reading it).
        assert_only_ends_cached(&path, "written by helpers");
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    /// Asserts that of the file at `path` exactly its [`table_metadata_ends`] are in the page
    /// cache.
    fn assert_only_ends_cached(path: &Path, context: &str) {
        let len = std::fs::metadata(path).unwrap().len();
        let (head_end, tail_start) = table_metadata_ends(len);
        let page = page_size() as u64;
        for (i, r) in resident_pages(path).iter().enumerate() {
            let at = i as u64 * page;
            let cached = at < head_end || at >= tail_start;
            assert_eq!(
                *r, cached,
                "page at {at} (ends cached: < {head_end}, >= {tail_start}; {context})"
            );
        }
    }

    fn page_size() -> usize {
        // SAFETY: sysconf has no preconditions.
        usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap()
    }

    /// Whether each page of the file at `path` is in the page cache.
    fn resident_pages(path: &Path) -> Vec<bool> {
        let file = File::open(path).unwrap();
        // SAFETY: a read-only map of a file no one changes while it is mapped; never read.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        let pages = map.len().div_ceil(page_size());
        let mut resident = vec![0u8; pages];
        // SAFETY: `map` is a mapping of `map.len()` bytes; `resident` has a byte per page.
        let rc = unsafe { libc::mincore(map.as_ptr() as *mut _, map.len(), resident.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        resident.iter().map(|r| r & 1 == 1).collect()
    }

    #[test]
    fn a_direct_file_has_its_ends_in_the_page_cache_and_the_rest_not() {
        let dir = tempfile::tempdir().unwrap();
        let (data, source) = source_file(dir.path(), 40 * WRITE_BYTES + 12_345);
        for from_map in [false, true] {
            let path = dir.path().join(format!("f-{from_map}"));
            let mut f = LocalFile::create(&path, LocalWrite::Direct, data.len() as u64).unwrap();
            if from_map {
                f.copy_from_file(&File::open(&source).unwrap(), None)
                    .unwrap();
            } else {
                for chunk in data.chunks(100_003) {
                    f.write_all(chunk).unwrap();
                }
            }
            if !f.is_direct() {
                eprintln!("skipped: the temporary directory's file system refuses O_DIRECT");
                return;
            }
            assert_eq!(
                f.finish().unwrap(),
                (data.len() as u64, Checksum::of(&data))
            );
            assert_only_ends_cached(&path, &format!("from a map: {from_map}"));
            assert_eq!(std::fs::read(&path).unwrap(), data);
        }
    }

    #[test]
    fn table_metadata_ends_are_aligned_and_within_the_file() {
        for size in [
            0,
            1,
            4095,
            4096,
            16 << 10,
            (16 << 10) + 1,
            200_000,
            17_281_010,
            1 << 30,
        ] {
            let (head_end, tail_start) = table_metadata_ends(size);
            assert!(
                head_end <= tail_start && tail_start <= size,
                "{size}: {head_end}, {tail_start}"
            );
            if size >= 16 << 10 {
                assert_eq!(head_end, 16 << 10);
                assert_eq!(tail_start % ALIGN as u64, 0, "{size}");
                let tail = (size / 128).max(128 << 10).min(size - head_end);
                assert!(size - tail_start >= tail, "{size}");
            } else {
                assert_eq!((head_end, tail_start), (size, size));
            }
        }
    }

    #[test]
    fn files_of_any_size_are_written_exactly_with_their_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let sizes = [
            0,
            1,
            ALIGN - 1,
            ALIGN,
            ALIGN + 1,
            WRITE_BYTES - 1,
            WRITE_BYTES,
            WRITE_BYTES + 1,
            3 * WRITE_BYTES + 12_345,
        ];
        for mode in [LocalWrite::Durable, LocalWrite::Direct, LocalWrite::Cached] {
            for n in sizes {
                let path = dir.path().join(format!("{mode:?}-{n}"));
                let direct = write_and_check(&path, mode, &bytes(n));
                assert!(!direct || mode != LocalWrite::Cached);
            }
        }
    }
}
