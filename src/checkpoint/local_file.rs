//! Local files written by downloads: checksummed on the way, and synced when asked to be
//! durable.
//!
//! A restore that is asked for a durable DB (`regroup restore --sync`) must have each file it
//! hands to the new DB on disk (synced) first. Written through
//! the page cache and synced afterwards, the 1.26 GB of a new subtask of scale-out 1→2 at 10M
//! keys took 0.74–0.82 s in half of the restores measured on the test machine and 1.9–2.2 s in
//! the other half (the kernel's writeback); written with direct I/O, 0.69–0.97 s (see
//! docs/benchmarks.md). So a durable [`LocalFile`] writes with `O_DIRECT` (an aligned buffer,
//! the last block padded with zeros and the file cut back to its size) where the file system
//! accepts it, through the page cache where it does not (some network file systems), and is
//! synced by [`LocalFile::finish`]. Cached files go through the page cache, unsynced: the
//! kernel writes them back later.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tracing::debug;

use super::metadata::Checksum;
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
/// 1 MiB writes were the fastest on the test machine (1.26 GB: median 0.76 s; 256 KiB: 0.82 s;
/// 4 MiB: 0.86 s).
const WRITE_BYTES: usize = 1 << 20;

/// A local file being written from a download, its size and checksum computed on the way.
pub struct LocalFile {
    file: File,
    path: PathBuf,
    mode: LocalWrite,
    direct: bool,
    buf: Vec<u8>,
    /// Offset of the aligned region of `buf`.
    start: usize,
    /// Bytes waiting in the aligned region.
    pending: usize,
    size: u64,
    checksum: Checksum,
}

impl LocalFile {
    /// Creates (or truncates) `path`.
    pub fn create(path: &Path, mode: LocalWrite) -> Result<Self> {
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
        let buf = vec![0u8; WRITE_BYTES + ALIGN];
        let start = buf.as_ptr().align_offset(ALIGN);
        Ok(LocalFile {
            file,
            path: path.to_path_buf(),
            mode,
            direct,
            buf,
            start,
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
    /// read-only memory map of it: whole chunks are written from the mapped pages, so that no
    /// byte is copied in user space (a direct write goes from the source's page cache to the
    /// disk; a cached one is the kernel's one copy), while a second thread computes the
    /// checksum over the same pages (1→2 fresh at 10M keys: median 0.345 s against 0.37 s with
    /// the checksum between the writes). The store never changes an object in place (objects
    /// are written whole, then renamed into place), so the mapping holds what was there when it
    /// was opened.
    pub fn copy_from_file(&mut self, src: &File) -> Result<()> {
        let len = src
            .metadata()
            .map_err(Error::io("stat the download for", &self.path))?
            .len();
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the mapping is read-only and private to this call; the store does not
        // truncate or rewrite objects in place (see above).
        let map = unsafe { memmap2::MmapOptions::new().populate().map(src) }
            .map_err(Error::io("map the download for", &self.path))?;
        let (data, before) = (&map[..], self.checksum);
        let (checksum, written) = if data.len() < WRITE_BYTES {
            (before.update(data), self.write_unsummed(data))
        } else {
            std::thread::scope(|s| {
                let checksum = s.spawn(|| before.update(data));
                let written = self.write_unsummed(data);
                (checksum.join().expect("checksum thread panicked"), written)
            })
        };
        written?;
        self.checksum = checksum;
        Ok(())
    }

    /// Appends `data` without taking it into the checksum: whole chunks straight from `data`
    /// (block-aligned in memory: the start of a map, then multiples of [`WRITE_BYTES`]) while
    /// nothing is pending, the rest through the buffer.
    fn write_unsummed(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            if self.pending == 0 && data.len() >= WRITE_BYTES {
                let (chunk, rest) = data.split_at(WRITE_BYTES);
                self.write_chunk(chunk)?;
                data = rest;
            } else {
                let n = data.len().min(WRITE_BYTES - self.pending);
                self.stage(&data[..n])?;
                data = &data[n..];
            }
        }
        Ok(())
    }

    /// Writes `chunk` (whole blocks, block-aligned in memory) where the file ends, nothing
    /// pending.
    fn write_chunk(&mut self, chunk: &[u8]) -> Result<()> {
        debug_assert_eq!(self.pending, 0);
        let mut written = false;
        if self.direct {
            match self.file.write_all(chunk) {
                Ok(()) => written = true,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.leave_direct_io()?,
                Err(e) => return Err(Error::io("write", &self.path)(e)),
            }
        }
        if !written {
            self.file
                .write_all(chunk)
                .map_err(Error::io("write", &self.path))?;
        }
        self.size += chunk.len() as u64;
        Ok(())
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
        let at = self.start + self.pending;
        self.buf[at..at + data.len()].copy_from_slice(data);
        self.pending += data.len();
        self.size += data.len() as u64;
        if self.pending == WRITE_BYTES {
            self.write_pending()?;
        }
        Ok(())
    }

    /// Writes the pending bytes; direct writes padded with zeros to whole blocks (only the last
    /// write of a file is not whole blocks already).
    fn write_pending(&mut self) -> Result<()> {
        if self.direct {
            let padded = self.pending.div_ceil(ALIGN) * ALIGN;
            self.buf[self.start + self.pending..self.start + padded].fill(0);
            match self
                .file
                .write_all(&self.buf[self.start..self.start + padded])
            {
                Ok(()) => {
                    self.pending = 0;
                    return Ok(());
                }
                // Some file systems (FUSE mounts among them) take O_DIRECT at open and refuse
                // the writes.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.leave_direct_io()?,
                Err(e) => return Err(Error::io("write", &self.path)(e)),
            }
        }
        self.file
            .write_all(&self.buf[self.start..self.start + self.pending])
            .map_err(Error::io("write", &self.path))?;
        self.pending = 0;
        Ok(())
    }

    /// Goes on through the page cache, from where the refused direct write began (it may have
    /// written part of its bytes).
    fn leave_direct_io(&mut self) -> Result<()> {
        use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
        let flags = fcntl_getfl(&self.file)
            .map_err(|e| Error::io("read the flags of", &self.path)(e.into()))?;
        fcntl_setfl(&self.file, flags - OFlags::DIRECT)
            .map_err(|e| Error::io("turn off direct I/O of", &self.path)(e.into()))?;
        self.file
            .seek(SeekFrom::Start(self.size - self.pending as u64))
            .map_err(Error::io("seek", &self.path))?;
        self.direct = false;
        debug!(file = %self.path.display(), "direct write refused: writing through the page cache");
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
        let mut f = LocalFile::create(path, mode).unwrap();
        let direct = f.is_direct();
        for chunk in data.chunks(100_003) {
            f.write_all(chunk).unwrap();
        }
        assert_eq!(f.finish().unwrap(), expected);
        assert_eq!(std::fs::read(path).unwrap(), data, "{} bytes", data.len());

        // From a file, through a memory map of it.
        let source = path.with_extension("source");
        std::fs::write(&source, data).unwrap();
        let mut f = LocalFile::create(path, mode).unwrap();
        f.copy_from_file(&File::open(&source).unwrap()).unwrap();
        assert_eq!(f.finish().unwrap(), expected);
        assert_eq!(std::fs::read(path).unwrap(), data, "{} bytes", data.len());
        direct
    }

    #[test]
    fn a_refused_direct_write_goes_on_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = LocalFile::create(&path, LocalWrite::Durable).unwrap();
        if !f.is_direct() {
            eprintln!("skipped: the temporary directory's file system refuses O_DIRECT");
            return;
        }
        // A buffer off the block alignment: the kernel refuses the direct write (EINVAL).
        f.start = f.start.checked_sub(1).unwrap_or(1);
        let data = bytes(2 * WRITE_BYTES + 100);
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
        let mut f = LocalFile::create(&path, LocalWrite::Durable).unwrap();
        assert!(f.is_direct());
        // The chunks start at file offset 1, off the block alignment: the kernel refuses them.
        // (The byte before is a hole: a zero.)
        f.file.seek(SeekFrom::Start(1)).unwrap();
        (f.size, f.checksum) = (1, Checksum::of(&[0]));
        f.copy_from_file(&File::open(&source).unwrap()).unwrap();
        assert!(!f.is_direct(), "the misaligned direct write was accepted");
        let mut expected = vec![0u8];
        expected.extend_from_slice(&data);
        assert_eq!(
            f.finish().unwrap(),
            (expected.len() as u64, Checksum::of(&expected))
        );
        assert_eq!(std::fs::read(&path).unwrap(), expected);
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
