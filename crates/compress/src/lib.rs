//! Decompression decided by content: the one place in kiln that knows the compressed
//! formats it reads (gzip, xz, zstd) and their magic bytes.
//!
//! supermin appliances (`supermin.d` files, base images), kernel modules and the inputs
//! of the cache key may each be compressed; every reader in kiln goes through
//! [`detect`] and [`decoder`] (or [`decompress`], which does both on a stream), so a
//! format added here is accepted everywhere at once. The decoders are the well-kept
//! crates (flate2, liblzma, zstd); this crate only chooses between them.
//!
//! Invariants:
//! - the format is decided by the first bytes only, never by a file name: gzip is
//!   `1f 8b 08` (deflate, the only method gzip writes), xz `fd 37 7a 58 5a 00`, zstd
//!   `28 b5 2f fd`; anything else is [`Compression::None`] and passes through unchanged;
//! - gzip streams may have several members (as `gzip -d` reads them, and as `cat a.gz
//!   b.gz` makes them); xz and zstd streams are read to their end;
//! - nothing is buffered beyond what the decoder needs: [`decompress`] peeks at most
//!   [`MAGIC_LEN`] bytes and hands them back in front of the stream.
//!
//! ```
//! use std::io::{Read, Write};
//! use kiln_compress::{Compression, decompress, detect};
//!
//! let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
//! gz.write_all(b"/etc/hosts\n").unwrap();
//! let gz = gz.finish().unwrap();
//! assert_eq!(detect(&gz), Compression::Gzip);
//! assert!(detect(&gz).is_compressed() && !detect(b"/etc/hosts\n").is_compressed());
//!
//! let (format, mut r) = decompress(&gz[..]).unwrap();
//! let mut text = String::new();
//! r.read_to_string(&mut text).unwrap();
//! assert_eq!((format, text.as_str()), (Compression::Gzip, "/etc/hosts\n"));
//! ```

use std::fmt;
use std::io::{self, BufRead, BufReader, Read};

/// How a stream is compressed (detected by magic bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
}

impl Compression {
    /// True for every format but [`Compression::None`].
    pub fn is_compressed(self) -> bool {
        self != Compression::None
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
        })
    }
}

/// The longest magic number [`detect`] looks at: a head of this many bytes (or the
/// whole stream, if shorter) is enough to decide.
pub const MAGIC_LEN: usize = 6;

const GZIP: &[u8] = &[0x1f, 0x8b, 0x08];
const XZ: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
const ZSTD: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// The compression of a stream whose first bytes are `head`.
pub fn detect(head: &[u8]) -> Compression {
    if head.starts_with(GZIP) {
        Compression::Gzip
    } else if head.starts_with(XZ) {
        Compression::Xz
    } else if head.starts_with(ZSTD) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// A reader of `r` decompressed as `c` (the caller has detected it; `r` is read from
/// its first byte). [`Compression::None`] passes `r` through.
pub fn decoder<'a, R: BufRead + 'a>(c: Compression, r: R) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
    })
}

/// Detect the compression of `r` from its first bytes and return it with a reader of
/// the decompressed stream (the peeked bytes are not lost).
pub fn decompress<'a, R: Read + 'a>(mut r: R) -> io::Result<(Compression, Box<dyn Read + 'a>)> {
    let mut head = Vec::with_capacity(MAGIC_LEN);
    (&mut r).take(MAGIC_LEN as u64).read_to_end(&mut head)?;
    let c = detect(&head);
    let whole = BufReader::new(io::Cursor::new(head).chain(r));
    Ok((c, decoder(c, whole)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const TEXT: &[u8] = b"hello, appliance\n";

    fn all(c: Compression) -> Vec<u8> {
        match c {
            Compression::None => TEXT.to_vec(),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(TEXT).unwrap();
                e.finish().unwrap()
            }
            Compression::Xz => {
                let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
                e.write_all(TEXT).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(TEXT, 1).unwrap(),
        }
    }

    #[test]
    fn each_format_is_detected_and_decoded() {
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Xz,
            Compression::Zstd,
        ] {
            let data = all(c);
            assert_eq!(detect(&data), c);
            let (got, mut r) = decompress(&data[..]).unwrap();
            assert_eq!(got, c);
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            assert_eq!(out, TEXT, "{c}");
        }
    }

    #[test]
    fn short_and_near_miss_heads_are_uncompressed() {
        for head in [
            &b""[..],
            b"\x1f",
            b"\x1f\x8b",
            b"\x1f\x8b\x07",
            b"\xfd7zXZ",
            b"(\xb5/",
        ] {
            assert_eq!(detect(head), Compression::None, "{head:?}");
            let (c, mut r) = decompress(head).unwrap();
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            assert_eq!((c, out.as_slice()), (Compression::None, head));
        }
    }

    #[test]
    fn multi_member_gzip_reads_every_member() {
        let mut data = all(Compression::Gzip);
        data.extend(all(Compression::Gzip));
        let (_, mut r) = decompress(&data[..]).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, [TEXT, TEXT].concat());
    }

    #[test]
    fn truncated_stream_is_an_error_not_short_data() {
        for c in [Compression::Gzip, Compression::Xz, Compression::Zstd] {
            let data = all(c);
            let cut = &data[..data.len() - 4];
            let (_, mut r) = decompress(cut).unwrap();
            let mut out = Vec::new();
            assert!(r.read_to_end(&mut out).is_err(), "{c}");
        }
    }
}
