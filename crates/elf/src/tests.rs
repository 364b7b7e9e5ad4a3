#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

/// A little ELF64 file: the header, then one program header per `(type, offset,
/// vaddr, filesz, align)`, then `tail` (offsets count from the start of the file).
fn build(phdrs: &[(u32, u64, u64, u64, u64)], tail: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 64];
    b[..6].copy_from_slice(&IDENT);
    b[E_MACHINE..E_MACHINE + 2].copy_from_slice(&62u16.to_le_bytes());
    b[E_PHOFF..E_PHOFF + 8].copy_from_slice(&64u64.to_le_bytes());
    b[E_PHENTSIZE..E_PHENTSIZE + 2].copy_from_slice(&56u16.to_le_bytes());
    b[E_PHNUM..E_PHNUM + 2].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
    for &(t, off, vaddr, filesz, align) in phdrs {
        let mut p = [0u8; 56];
        p[..4].copy_from_slice(&t.to_le_bytes());
        p[8..16].copy_from_slice(&off.to_le_bytes());
        p[16..24].copy_from_slice(&vaddr.to_le_bytes());
        p[32..40].copy_from_slice(&filesz.to_le_bytes());
        p[40..48].copy_from_slice(&filesz.to_le_bytes());
        p[48..56].copy_from_slice(&align.to_le_bytes());
        b.extend_from_slice(&p);
    }
    b.extend_from_slice(tail);
    b
}

fn with_interp(path: &[u8], off: u64, len: u64) -> Vec<u8> {
    build(&[(PT_INTERP, off, 0, len, 1)], path)
}

#[test]
fn interp_reads_the_loader_path_and_refuses_what_is_out_of_bounds() {
    let p = b"/lib64/ld-linux-x86-64.so.2\0";
    let b = with_interp(p, 120, p.len() as u64);
    assert_eq!(interp(&b), Ok(Some(&p[..p.len() - 1])));
    assert_eq!(has_interp(&b), Ok(true));
    assert_eq!(
        interp(&with_interp(p, 120, 1 << 40)),
        Err(Error::BadSegment)
    );
    assert_eq!(interp(&with_interp(p, u64::MAX, 2)), Err(Error::BadSegment));
    assert_eq!(
        interp(&with_interp(p, 120, u64::MAX)),
        Err(Error::BadSegment)
    );
    assert_eq!(interp(b"#!/bin/sh\n"), Err(Error::NotElf64));
    assert_eq!(
        has_interp(&build(&[(PT_LOAD, 0, 0, 64, 8)], b"")),
        Ok(false)
    );
    // A header table past the end of the file, or one that wraps around.
    let mut padded = p.to_vec();
    padded.resize(60, 0);
    let mut t = with_interp(&padded, 120, 28);
    t[E_PHNUM..E_PHNUM + 2].copy_from_slice(&2u16.to_le_bytes());
    assert_eq!(
        interp(&t),
        Ok(Some(&p[..p.len() - 1])),
        "the second fits in `p`"
    );
    t[E_PHNUM..E_PHNUM + 2].copy_from_slice(&3u16.to_le_bytes());
    assert_eq!(interp(&t), Err(Error::Truncated));
    t[E_PHOFF..E_PHOFF + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(interp(&t), Err(Error::Truncated));
}

/// A dynamic section whose string table is found through its PT_LOAD mapping.
#[test]
fn dynamic_names_through_the_string_table() {
    // Layout: header 64, 3 phdrs (168) → 232; strtab at 232; dynamic after it.
    let strtab = b"\0libfoo.so.1\0libc.so.6\0$ORIGIN/../lib\0libme.so\0";
    let (s_off, base) = (232u64, 0x400000u64);
    let d_off = s_off + strtab.len() as u64;
    let mut dynamic = Vec::new();
    for (t, v) in [
        (DT_NEEDED, 1),
        (DT_NEEDED, 13),
        (DT_STRTAB, base + s_off),
        (DT_STRSZ, strtab.len() as u64),
        (DT_RUNPATH, 23),
        (DT_SONAME, 38),
        (DT_NULL, 0),
        (DT_NEEDED, 999),
    ] {
        dynamic.extend_from_slice(&t.to_le_bytes());
        dynamic.extend_from_slice(&u64::to_le_bytes(v));
    }
    let mut tail = strtab.to_vec();
    tail.extend_from_slice(&dynamic);
    let total = d_off + dynamic.len() as u64;
    let b = build(
        &[
            (PT_LOAD, 0, base, total, 0x1000),
            (PT_DYNAMIC, d_off, base + d_off, dynamic.len() as u64, 8),
            (PT_NOTE, 0, 0, 0, 4),
        ],
        &tail,
    );
    let e = Elf::parse(&b).unwrap();
    assert_eq!(e.machine(), 62);
    let d = e.dynamic().unwrap().unwrap();
    assert_eq!(d.needed, vec![&b"libfoo.so.1"[..], b"libc.so.6"]);
    assert_eq!(d.runpath, Some(&b"$ORIGIN/../lib"[..]));
    assert_eq!(d.soname, Some(&b"libme.so"[..]));
    assert_eq!(d.rpath, None);
    assert_eq!(e.file_offset(base + 5), Some(5));
    assert_eq!(e.file_offset(base + total), None);

    // A string offset outside the table, and a table the loads do not map.
    let mut bad = b.clone();
    let at = (d_off + 8) as usize;
    bad[at..at + 8].copy_from_slice(&500u64.to_le_bytes());
    assert_eq!(Elf::parse(&bad).unwrap().dynamic(), Err(Error::BadDynamic));
    let mut unmapped = b.clone();
    let at = (d_off + 2 * 16 + 8) as usize;
    unmapped[at..at + 8].copy_from_slice(&7u64.to_le_bytes());
    assert_eq!(
        Elf::parse(&unmapped).unwrap().dynamic(),
        Err(Error::BadDynamic)
    );
    // Without PT_DYNAMIC: no answer, not an error.
    assert_eq!(
        Elf::parse(&with_interp(b"/x\0", 120, 3)).unwrap().dynamic(),
        Ok(None)
    );
}

fn note(name: &[u8], kind: u32, desc: &[u8], align: usize) -> Vec<u8> {
    let mut n = Vec::new();
    n.extend_from_slice(&(name.len() as u32).to_le_bytes());
    n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    n.extend_from_slice(&kind.to_le_bytes());
    n.extend_from_slice(name);
    n.resize(12 + name.len().next_multiple_of(align), 0);
    n.extend_from_slice(desc);
    n.resize(
        n.len() + (desc.len().next_multiple_of(align) - desc.len()),
        0,
    );
    n
}

#[test]
fn notes_are_walked_with_their_alignment_and_stop_at_garbage() {
    let mut notes = note(b"GNU\0", 3, b"0123456789abcdefghij", 4);
    notes.extend(note(b"Xen\0", 18, &0x1000000u32.to_le_bytes(), 4));
    let b = build(&[(PT_NOTE, 120, 0, notes.len() as u64, 4)], &notes);
    let got: Vec<_> = Elf::parse(&b).unwrap().notes().collect();
    assert_eq!(got.len(), 2);
    assert_eq!((got[1].name, got[1].kind), (&b"Xen"[..], 18));
    assert_eq!(got[1].desc, 0x1000000u32.to_le_bytes());

    let n8 = note(b"GNU\0", 5, b"abc", 8);
    let b = build(&[(PT_NOTE, 120, 0, n8.len() as u64, 8)], &n8);
    let got: Vec<_> = Elf::parse(&b).unwrap().notes().collect();
    assert_eq!(got[0].desc, b"abc");

    // A name size that runs past the segment ends the walk without a note.
    let mut bad = note(b"Xen\0", 18, b"", 4);
    bad[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    let b = build(&[(PT_NOTE, 120, 0, bad.len() as u64, 4)], &bad);
    assert_eq!(Elf::parse(&b).unwrap().notes().count(), 0);
    // A segment outside the file: no notes.
    let b = build(&[(PT_NOTE, 1 << 40, 0, 16, 4)], b"");
    assert_eq!(Elf::parse(&b).unwrap().notes().count(), 0);
}

/// The host's own shell and C library, read as they are.
#[test]
fn host_binaries_read_like_readelf_shows_them() {
    let sh = std::fs::read("/bin/sh").unwrap();
    let e = Elf::parse(&sh).unwrap();
    let interp = e.interp().unwrap().unwrap();
    assert!(interp.ends_with(b"/ld-linux-x86-64.so.2"), "{interp:?}");
    let d = e.dynamic().unwrap().unwrap();
    assert!(d.needed.contains(&&b"libc.so.6"[..]), "{d:?}");
    let libc = std::fs::read("/lib/x86_64-linux-gnu/libc.so.6").unwrap();
    let d = Elf::parse(&libc).unwrap().dynamic().unwrap().unwrap();
    assert_eq!(d.soname, Some(&b"libc.so.6"[..]));
    assert!(d.needed.contains(&&b"ld-linux-x86-64.so.2"[..]), "{d:?}");
    assert!(Elf::parse(&libc).unwrap().notes().any(|n| n.name == b"GNU"));
}

fn proptest_config() -> proptest::test_runner::Config {
    let mut c = proptest::test_runner::Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 4096;
    }
    c.failure_persistence = None;
    c
}

/// Everything the reader offers, on any input: answers or errors, never a panic.
fn read_all(b: &[u8]) {
    if let Ok(e) = Elf::parse(b) {
        let _ = (e.machine(), e.file_type(), e.osabi());
        for p in e.program_headers() {
            let _ = e.segment(&p);
            let _ = e.file_offset(p.vaddr);
        }
        let _ = e.interp();
        let _ = e.dynamic();
        for n in e.notes() {
            assert!(n.name.len() <= b.len() && n.desc.len() <= b.len());
        }
    }
    let _ = has_interp(b);
}

/// An ELF64 header with arbitrary program headers and arbitrary bytes after them.
fn elf_like() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let field = prop_oneof![Just(0u64), 0u64..400, any::<u64>()];
    let phdr = (
        prop_oneof![1u32..5, any::<u32>()],
        field.clone(),
        field.clone(),
        field.clone(),
        prop_oneof![Just(4u64), Just(8u64), any::<u64>()],
    );
    (
        proptest::collection::vec(phdr, 0..6),
        proptest::collection::vec(any::<u8>(), 0..400),
        any::<bool>(),
        any::<u16>(),
    )
        .prop_map(|(phdrs, tail, odd, phentsize)| {
            let mut b = build(&phdrs, &tail);
            if odd {
                b[E_PHENTSIZE..E_PHENTSIZE + 2].copy_from_slice(&phentsize.to_le_bytes());
            }
            b
        })
}

/// The host's shell with a few bytes overwritten (in the headers most of the time)
/// and possibly cut short.
fn mutated_shell() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    static SH: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let sh = SH.get_or_init(|| std::fs::read("/bin/sh").unwrap());
    let len = sh.len();
    (
        proptest::collection::vec((prop_oneof![0usize..1024, 0..len], any::<u8>()), 1..8),
        prop_oneof![Just(len), 0..len],
    )
        .prop_map(move |(edits, cut)| {
            let mut b = sh.clone();
            for (at, v) in edits {
                b[at] = v;
            }
            b.truncate(cut);
            b
        })
}

proptest::proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
        read_all(&b);
    }

    #[test]
    fn hostile_headers_never_panic(b in elf_like()) {
        read_all(&b);
        let phnum = u16::from_le_bytes([b[E_PHNUM], b[E_PHNUM + 1]]);
        if phnum == 0 {
            proptest::prop_assert_eq!(has_interp(&b), Ok(false));
        }
    }

    #[test]
    fn mutated_real_binaries_never_panic(b in mutated_shell()) {
        read_all(&b);
    }
}
