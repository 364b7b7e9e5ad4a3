//! Property tests of the readers of untrusted bytes in `supermin.d`: content sniffing,
//! list parsing, and base images (tar, plain or gzip/xz/zstd) — arbitrary, corrupted
//! and truncated bytes give an error naming the input, never a panic, and never wrong
//! data. A few thousand cases each; `PROPTEST_CASES=N` for a longer run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_inputs::{Class, InputKind, MemberKind, classify, read_inputs, read_tar};
use proptest::prelude::*;

/// File data with runs of zeros (whole blocks become holes in the spill file) and
/// runs of other bytes.
fn data() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((any::<bool>(), 1..6000usize, any::<u8>()), 0..4).prop_map(|runs| {
        let mut v = Vec::new();
        for (zero, len, seed) in runs {
            if zero {
                v.resize(v.len() + len, 0);
            } else {
                v.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1));
            }
        }
        v
    })
}

/// Members with distinct safe names and their data.
fn members() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    prop::collection::vec(data(), 0..6).prop_map(|ds| {
        ds.into_iter()
            .enumerate()
            .map(|(i, d)| (format!("dir{}/file{i}", i % 2), d))
            .collect()
    })
}

fn tar_of(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, d) in members {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(d.len() as u64);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        b.append_data(&mut h, name, &d[..]).unwrap();
    }
    b.into_inner().unwrap()
}

#[derive(Debug, Clone, Copy)]
enum Format {
    Plain,
    Gzip,
    Xz,
    Zstd,
}

fn compress(f: Format, data: &[u8]) -> Vec<u8> {
    match f {
        Format::Plain => data.to_vec(),
        Format::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Format::Xz => {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 0);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Format::Zstd => zstd::encode_all(data, 1).unwrap(),
    }
}

fn format() -> impl Strategy<Value = Format> {
    prop_oneof![
        Just(Format::Plain),
        Just(Format::Gzip),
        Just(Format::Xz),
        Just(Format::Zstd)
    ]
}

/// The (path, bytes) of the regular members read.
fn read_back(img: &kiln_inputs::BaseImage) -> Vec<(PathBuf, Vec<u8>)> {
    img.members
        .iter()
        .filter_map(|m| match &m.kind {
            MemberKind::File(r) => Some((m.path.clone(), r.to_vec().unwrap())),
            _ => None,
        })
        .collect()
}

fn expected(members: &[(String, Vec<u8>)]) -> Vec<(PathBuf, Vec<u8>)> {
    members
        .iter()
        .map(|(n, d)| (PathBuf::from(format!("/{n}")), d.clone()))
        .collect()
}

/// An input file named `name` in a fresh directory.
fn input(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join(name);
    fs::write(&p, bytes).unwrap();
    (t, p)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Sniffing decides by the first bytes only, as supermin: never panics, and the
    /// classes it gives follow the documented rules.
    #[test]
    fn classify_follows_the_first_bytes(sample in prop::collection::vec(any::<u8>(), 0..600)) {
        let c = classify(&sample);
        let ustar = sample.len() >= 262 && &sample[257..262] == b"ustar";
        match c {
            Class::Kind(InputKind::BaseImage) => prop_assert!(ustar),
            Class::Kind(InputKind::Empty) => prop_assert!(sample.is_empty()),
            Class::Kind(InputKind::Hostfiles) => prop_assert!(!ustar && sample[0] == b'/'),
            Class::Kind(InputKind::Excludefiles) => prop_assert!(!ustar && sample[0] == b'-'),
            Class::Kind(InputKind::Packages) => {
                prop_assert!(!ustar && sample[0].is_ascii_alphanumeric())
            }
            Class::Cpio => prop_assert!(sample.starts_with(b"070701")),
            Class::Unknown => prop_assert!(
                !ustar && !sample.is_empty() && !sample[0].is_ascii_alphanumeric()
                    && !matches!(sample[0], b'/' | b'-')
                    || sample.len() == 1 && matches!(sample[0], b'/' | b'-')
            ),
        }
    }

    /// Any bytes as a supermin.d file: a result or an error naming the file.
    #[test]
    fn arbitrary_input_files_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let (_t, p) = input("input", &bytes);
        if let Err(e) = read_inputs(std::slice::from_ref(&p)) {
            prop_assert!(e.to_string().contains(&p.display().to_string()), "{}", e);
        }
    }

    /// Hostfiles lists: one pattern per line, bytes kept as they are (not UTF-8 either),
    /// empty and `#` lines skipped, line numbers counted from 1.
    #[test]
    fn hostfiles_lists_parse_line_by_line(
        lines in prop::collection::vec(prop::collection::vec(
            any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..40), 0..20)
    ) {
        let mut text = b"/first\n".to_vec();
        for l in &lines {
            text.extend_from_slice(l);
            text.push(b'\n');
        }
        let (_t, p) = input("hostfiles", &text);
        let inputs = read_inputs(std::slice::from_ref(&p)).unwrap();
        let mut want: Vec<(usize, &[u8])> = vec![(1, &b"/first"[..])];
        want.extend(
            lines.iter().enumerate()
                .filter(|(_, l)| !l.is_empty() && l[0] != b'#')
                .map(|(i, l)| (i + 2, &l[..])),
        );
        let got: Vec<(usize, Vec<u8>)> = inputs.hostfiles.iter()
            .map(|l| {
                use std::os::unix::ffi::OsStrExt;
                (l.origin.line, l.value.as_os_str().as_bytes().to_vec())
            })
            .collect();
        let want: Vec<(usize, Vec<u8>)> = want.into_iter().map(|(n, l)| (n, l.to_vec())).collect();
        prop_assert_eq!(got, want);
    }

    /// Excludefiles lists: a line not starting with `-` is an error naming file and line.
    #[test]
    fn excludefiles_lines_must_start_with_a_dash(
        lines in prop::collection::vec("[-a-z/#]{0,6}", 0..10)
    ) {
        let text = format!("-/first\n{}", lines.iter().map(|l| format!("{l}\n")).collect::<String>());
        let (_t, p) = input("excludefiles", text.as_bytes());
        let bad = lines.iter().position(|l| !l.is_empty() && !l.starts_with(['-', '#']));
        match (read_inputs(std::slice::from_ref(&p)), bad) {
            (Ok(i), None) => prop_assert_eq!(
                i.excludes.len(),
                1 + lines.iter().filter(|l| l.starts_with('-')).count()
            ),
            (Err(e), Some(n)) => prop_assert!(
                e.to_string().contains(&format!("{}:{}", p.display(), n + 2)), "{}", e
            ),
            (r, b) => prop_assert!(false, "{:?} with bad line {:?}", r.map(|_| ()), b),
        }
    }

    /// Any bytes as a tar stream: an error naming the tarball, never a panic.
    #[test]
    fn arbitrary_tar_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..3000)) {
        if let Err(e) = read_tar(Path::new("any.tar"), &bytes[..]) {
            prop_assert!(e.to_string().contains("any.tar"), "{}", e);
        }
    }

    /// Valid archives read back exactly, holes and all.
    #[test]
    fn archives_round_trip(members in members()) {
        let img = read_tar(Path::new("ok.tar"), &tar_of(&members)[..]).unwrap();
        prop_assert_eq!(read_back(&img), expected(&members));
    }

    /// A tarball (plain or compressed) cut anywhere or with one byte changed: an
    /// error naming it, or (cut between members, or a change the format cannot see)
    /// members that are a prefix of the archive's with their exact bytes, never wrong
    /// or partial data.
    #[test]
    fn damaged_tarballs_give_an_error_or_a_true_prefix(
        members in members(),
        fmt in format(),
        cut in any::<prop::sample::Index>(),
        flip in any::<Option<(prop::sample::Index, u8)>>(),
    ) {
        let whole = compress(fmt, &tar_of(&members));
        let mut bytes = whole[..cut.index(whole.len() + 1)].to_vec();
        if let Some((at, x)) = flip && !bytes.is_empty() {
            let i = at.index(bytes.len());
            bytes[i] ^= x | 1;
        }
        let (_t, p) = input("base.tar.any", &bytes);
        match read_inputs(std::slice::from_ref(&p)) {
            Err(e) => prop_assert!(e.to_string().contains(&p.display().to_string()), "{}", e),
            Ok(i) if flip.is_none() => {
                let want = expected(&members);
                let got: Vec<_> = i.base_images.iter().flat_map(read_back).collect();
                prop_assert!(want.starts_with(&got), "{:?} not a prefix", got);
            }
            // A changed byte inside member data is not detectable by tar: only the
            // absence of a panic is asserted.
            Ok(_) => {}
        }
    }
}
