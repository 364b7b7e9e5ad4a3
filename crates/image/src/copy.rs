//! File data into the image: `copy_file_range` with explicit offsets (no file position is
//! shared, so several threads write one output fd at disjoint block-aligned ranges),
//! falling back to `pread`/`pwrite` where the kernel cannot copy between the two
//! filesystems. In-memory content is `pwrite`n directly. Spilled content (base image
//! members) is copied like host files, from its region of the spill file; only its data
//! blocks are mapped ([`spilled_ranges`]), so its holes stay holes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use kiln_fileset::{Content, Region};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::ImageError;
use crate::layout::BLOCK;
use crate::plan::Job;

const FALLBACK_BUF: usize = 1 << 20;

// Spill regions are mapped in image blocks.
const _: () = assert!(kiln_inputs::spill::BLOCK == BLOCK);

/// The logical block ranges `(first, count)` of a spilled file that hold data.
pub fn spilled_ranges(dest: &Path, r: &Region) -> Result<Vec<(u64, u64)>, ImageError> {
    r.data_blocks().map_err(|err| ImageError::Source {
        path: dest.to_path_buf(),
        source_path: r.spill().dir().to_path_buf(),
        err,
    })
}

/// Why [`Copier::copy_range`] stopped.
enum CopyErr {
    /// The source had fewer bytes than asked for.
    Short,
    Source(io::Error),
    Output(io::Error),
}

/// Shared state of one image's copy.
pub struct Copier<'a> {
    pub out: &'a File,
    pub output: &'a Path,
    /// Set once `copy_file_range` is known not to work between these filesystems.
    pub no_cfr: AtomicBool,
    pub fallback_used: AtomicBool,
}

/// Errors that are about the image's filesystem, not the source.
fn is_output_errno(e: &io::Error) -> bool {
    let out = [Errno::NOSPC, Errno::DQUOT, Errno::FBIG, Errno::ROFS];
    e.raw_os_error()
        .is_some_and(|r| out.iter().any(|x| x.raw_os_error() == r))
}

impl Copier<'_> {
    fn out_err(&self, err: io::Error) -> ImageError {
        ImageError::Output {
            output: self.output.to_path_buf(),
            err,
        }
    }

    /// Copy every job, from `threads` threads, stopping at the first error.
    pub fn run(&self, jobs: &[Job<'_>], threads: usize) -> Result<(), ImageError> {
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let first_err: Mutex<Option<(usize, ImageError)>> = Mutex::new(None);
        let work = || {
            let mut buf = Vec::new();
            loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { return };
                if let Err(e) = self.job(job, &mut buf) {
                    stop.store(true, Ordering::Relaxed);
                    if let Ok(mut slot) = first_err.lock() {
                        // Keep the error of the earliest job, so the message does not
                        // depend on thread timing.
                        if slot.as_ref().is_none_or(|(j, _)| i < *j) {
                            *slot = Some((i, e));
                        }
                    }
                    return;
                }
            }
        };
        std::thread::scope(|s| {
            for _ in 1..threads.max(1) {
                s.spawn(work);
            }
            work();
        });
        match first_err.into_inner() {
            Ok(Some((_, e))) => Err(e),
            Ok(None) => Ok(()),
            Err(_) => Err(ImageError::Internal("a copy thread panicked")),
        }
    }

    fn job(&self, job: &Job<'_>, buf: &mut Vec<u8>) -> Result<(), ImageError> {
        match job.content {
            Content::Bytes(b) => {
                for &(l, p, n) in &job.runs {
                    let a = (l * BLOCK) as usize;
                    let e = (((l + n) * BLOCK) as usize).min(b.len());
                    self.out
                        .write_all_at(&b[a..e], p * BLOCK)
                        .map_err(|e| self.out_err(e))?;
                }
                Ok(())
            }
            Content::Host { path, len } => self.host(job, path, *len, buf),
            Content::Spilled(r) => self.spilled(job, r, buf),
        }
    }

    fn spilled(&self, job: &Job<'_>, r: &Region, buf: &mut Vec<u8>) -> Result<(), ImageError> {
        let source_err = |err: io::Error| ImageError::Source {
            path: job.path.to_path_buf(),
            source_path: r.spill().dir().to_path_buf(),
            err,
        };
        for &(l, p, n) in &job.runs {
            let end = ((l + n) * BLOCK).min(r.len());
            match self.copy_range(
                r.spill().file(),
                r.offset() + l * BLOCK,
                r.offset() + end,
                p * BLOCK,
                buf,
            ) {
                Ok(()) => {}
                Err(CopyErr::Short) => {
                    return Err(source_err(io::ErrorKind::UnexpectedEof.into()));
                }
                Err(CopyErr::Source(e)) => return Err(source_err(e)),
                Err(CopyErr::Output(e)) => return Err(self.out_err(e)),
            }
        }
        Ok(())
    }

    /// Copy `src[off_in..end]` to the image at `off_out`.
    fn copy_range(
        &self,
        src: &File,
        mut off_in: u64,
        end: u64,
        mut off_out: u64,
        buf: &mut Vec<u8>,
    ) -> Result<(), CopyErr> {
        while off_in < end {
            let want = end - off_in;
            if !self.no_cfr.load(Ordering::Relaxed) {
                match rustix::fs::copy_file_range(
                    src,
                    Some(&mut off_in),
                    self.out,
                    Some(&mut off_out),
                    want.min(1 << 30) as usize,
                ) {
                    Ok(0) => return Err(CopyErr::Short),
                    Ok(_) => continue,
                    Err(Errno::INTR) => continue,
                    Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                        self.no_cfr.store(true, Ordering::Relaxed);
                    }
                    Err(e) => {
                        let e = io::Error::from(e);
                        return Err(if is_output_errno(&e) {
                            CopyErr::Output(e)
                        } else {
                            CopyErr::Source(e)
                        });
                    }
                }
            }
            self.fallback_used.store(true, Ordering::Relaxed);
            if buf.is_empty() {
                buf.resize(FALLBACK_BUF, 0);
            }
            let chunk = (want as usize).min(buf.len());
            let got = match src.read_at(&mut buf[..chunk], off_in) {
                Ok(0) => return Err(CopyErr::Short),
                Ok(g) => g,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CopyErr::Source(e)),
            };
            self.out
                .write_all_at(&buf[..got], off_out)
                .map_err(CopyErr::Output)?;
            off_in += got as u64;
            off_out += got as u64;
        }
        Ok(())
    }

    fn host(
        &self,
        job: &Job<'_>,
        src: &Path,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<(), ImageError> {
        let source_err = |err: io::Error| ImageError::Source {
            path: job.path.to_path_buf(),
            source_path: src.to_path_buf(),
            err,
        };
        let changed = |found: Option<u64>| ImageError::SourceChanged {
            path: job.path.to_path_buf(),
            source_path: src.to_path_buf(),
            expected: len,
            found,
        };
        let fd = rustix::fs::open(
            src,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NOCTTY,
            Mode::empty(),
        )
        .map_err(|e| source_err(e.into()))?;
        let size_now = |fd: &rustix::fd::OwnedFd| -> Result<Option<u64>, ImageError> {
            let st = rustix::fs::fstat(fd).map_err(|e| source_err(e.into()))?;
            let regular = rustix::fs::FileType::from_raw_mode(st.st_mode)
                == rustix::fs::FileType::RegularFile;
            Ok(regular.then_some(st.st_size as u64))
        };
        let found = size_now(&fd)?;
        if found != Some(len) {
            return Err(changed(found));
        }
        #[cfg(test)]
        if let Some(f) = crate::AFTER_OPEN.with(|h| h.borrow_mut().take()) {
            f(src);
        }
        let src_file = File::from(fd);
        for &(l, p, n) in &job.runs {
            let end = ((l + n) * BLOCK).min(len);
            match self.copy_range(&src_file, l * BLOCK, end, p * BLOCK, buf) {
                Ok(()) => {}
                Err(CopyErr::Short) => {
                    let st = src_file.metadata().map_err(source_err)?;
                    return Err(changed(Some(st.len())));
                }
                Err(CopyErr::Source(e)) => return Err(source_err(e)),
                Err(CopyErr::Output(e)) => return Err(self.out_err(e)),
            }
        }
        // Grown (or replaced by a shorter file) after the copy started?
        let st = src_file.metadata().map_err(source_err)?;
        if st.len() != len {
            return Err(changed(Some(st.len())));
        }
        Ok(())
    }
}
