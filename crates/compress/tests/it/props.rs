//! Property tests of decompression: arbitrary bytes behind each magic number, truncated
//! and corrupted streams give an error (or, for a corrupted stream the checksum cannot
//! see, some bytes), never a panic; whole streams read back exactly, whatever the split
//! of the reads. A few thousand cases each; `PROPTEST_CASES=N` for a longer run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};

use kiln_compress::{Compression, decompress, detect};
use proptest::prelude::*;

/// Decompressed output is read at most this far: a few hundred input bytes cannot
/// legitimately expand beyond it here, and a decoder that loops is cut short.
const LIMIT: u64 = 64 << 20;

fn format() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::None),
        Just(Compression::Gzip),
        Just(Compression::Xz),
        Just(Compression::Zstd),
    ]
}

fn magic(c: Compression) -> &'static [u8] {
    match c {
        Compression::None => b"",
        Compression::Gzip => &[0x1f, 0x8b, 0x08],
        Compression::Xz => &[0xfd, b'7', b'z', b'X', b'Z', 0],
        Compression::Zstd => &[0x28, 0xb5, 0x2f, 0xfd],
    }
}

fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
    match c {
        Compression::None => data.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Compression::Xz => {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 0);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Compression::Zstd => zstd::encode_all(data, 1).unwrap(),
    }
}

/// Compressible data: runs of repeated and of varied bytes.
fn data() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((any::<bool>(), 1..3000usize, any::<u8>()), 0..4).prop_map(|runs| {
        let mut v = Vec::new();
        for (same, len, seed) in runs {
            if same {
                v.resize(v.len() + len, seed);
            } else {
                v.extend((0..len).map(|i| (i as u8).wrapping_mul(73).wrapping_add(seed)));
            }
        }
        v
    })
}

/// A reader that hands out at most `n` bytes per call, to exercise the peeking of
/// [`decompress`] and the decoders' buffer refills.
struct Trickle<'a> {
    rest: &'a [u8],
    n: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.n.min(buf.len()).min(self.rest.len());
        buf[..k].copy_from_slice(&self.rest[..k]);
        self.rest = &self.rest[k..];
        Ok(k)
    }
}

/// Everything `decompress` gives for `bytes`, read `n` bytes at a time.
fn read_all(bytes: &[u8], n: usize) -> std::io::Result<(Compression, Vec<u8>)> {
    let (c, r) = decompress(Trickle { rest: bytes, n })?;
    let mut out = Vec::new();
    r.take(LIMIT).read_to_end(&mut out)?;
    Ok((c, out))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Arbitrary bytes behind each magic number: detected as that format, and an
    /// error or some bytes, never a panic.
    #[test]
    fn arbitrary_streams_never_panic(
        c in format(),
        tail in prop::collection::vec(any::<u8>(), 0..400),
        n in 1..64usize,
    ) {
        let mut bytes = magic(c).to_vec();
        bytes.extend_from_slice(&tail);
        prop_assert_eq!(detect(&bytes), c);
        if let Ok((got, out)) = read_all(&bytes, n) {
            prop_assert_eq!(got, c);
            if c == Compression::None {
                prop_assert_eq!(out, bytes);
            }
        }
    }

    /// Whole streams read back exactly, in any read sizes.
    #[test]
    fn whole_streams_round_trip(c in format(), d in data(), n in 1..4096usize) {
        let z = compress(c, &d);
        let (got, out) = read_all(&z, n).unwrap();
        prop_assert_eq!(got, c);
        prop_assert!(out == d, "{} bytes back for {}", out.len(), d.len());
    }

    /// A compressed stream cut short (after its magic number: a shorter head is not
    /// recognisable and passes through as it is) is an error, never a silent short read.
    #[test]
    fn truncated_streams_are_errors(
        c in prop_oneof![Just(Compression::Gzip), Just(Compression::Xz), Just(Compression::Zstd)],
        d in data(),
        cut in any::<prop::sample::Index>(),
        n in 1..4096usize,
    ) {
        let z = compress(c, &d);
        let m = magic(c).len();
        let keep = m + cut.index(z.len() - m);
        let r = read_all(&z[..keep], n);
        prop_assert!(r.is_err(), "{} of {} bytes of {} read as {:?} bytes", keep, z.len(), c,
            r.as_ref().map(|(_, o)| o.len()).ok());
    }

    /// One corrupted byte: an error, or bytes (the decoder may not notice every
    /// change before its checksum), never a panic.
    #[test]
    fn corrupted_streams_never_panic(
        c in prop_oneof![Just(Compression::Gzip), Just(Compression::Xz), Just(Compression::Zstd)],
        d in data(),
        at in any::<prop::sample::Index>(),
        x in 1..=255u8,
        n in 1..4096usize,
    ) {
        let mut z = compress(c, &d);
        let i = at.index(z.len());
        z[i] ^= x;
        let _ = read_all(&z, n);
    }
}
