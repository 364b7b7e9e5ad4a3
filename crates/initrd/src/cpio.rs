//! A newc ("070701") cpio writer, the format the kernel unpacks an initramfs from.
//! Written by hand: it is ~80 lines, and the kernel's reader, not a general cpio tool,
//! is what it must satisfy (fixed metadata, 4-byte alignment, padding to 512 bytes).
//!
//! Invariant: the bytes depend only on the entries given, in the order given (mtime 0,
//! owner 0:0, inode numbers counting from 1 in write order).

use std::io::{self, Write};

/// A newc ("070701") cpio writer with fixed metadata: mtime 0, uid/gid 0, inode numbers
/// counting from 1 in write order. The caller writes entries in sorted order.
pub struct CpioWriter<W: Write> {
    w: W,
    ino: u32,
    pos: u64,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(w: W) -> Self {
        CpioWriter { w, ino: 0, pos: 0 }
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.w.write_all(b)?;
        self.pos += b.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> io::Result<()> {
        let n = (4 - (self.pos % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }

    fn header(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        size: u32,
        rdev: (u32, u32),
    ) -> io::Result<()> {
        self.ino += 1;
        let ino = if name == "TRAILER!!!" { 0 } else { self.ino };
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        let mut h = String::with_capacity(110);
        h.push_str("070701");
        for f in fields {
            h.push_str(&format!("{f:08x}"));
        }
        self.put(h.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad4()
    }

    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.header(name, 0o040000 | perm, 2, 0, (0, 0))
    }

    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.header(name, 0o020000 | perm, 1, 0, (major, minor))
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: file too large for newc"),
            )
        })?;
        self.header(name, 0o100000 | perm, 1, size, (0, 0))?;
        self.put(data)?;
        self.pad4()
    }

    /// Write the trailer, pad to 512 bytes (as cpio(1) does) and return the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 1, 0, (0, 0))?;
        let n = (512 - (self.pos % 512) as usize) % 512;
        self.put(&vec![0u8; n])?;
        self.w.flush()?;
        Ok(self.w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_bytes() {
        let mut c = CpioWriter::new(Vec::new());
        c.dir(".", 0o755).unwrap();
        c.file("a", 0o644, b"hello").unwrap();
        let out = c.finish().unwrap();
        let hdr = |ino: u32, mode: u32, nlink: u32, size: u32, namesize: u32| {
            format!(
                "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
                0, 0, 0, 0, 0, 0, 0, 0
            )
        };
        let mut want = Vec::new();
        want.extend(hdr(1, 0o40755, 2, 0, 2).as_bytes());
        want.extend(b".\0"); // 110 + 2 = 112, aligned
        want.extend(hdr(2, 0o100644, 1, 5, 2).as_bytes());
        want.extend(b"a\0hello\0\0\0"); // name to 224, data 5 → pad 3
        want.extend(hdr(0, 0, 1, 0, 11).as_bytes());
        want.extend(b"TRAILER!!!\0\0\0\0"); // 232+110+11 = 353 → 356
        want.resize(512, 0);
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&want)
        );
        assert_eq!(out, want);
    }
}
