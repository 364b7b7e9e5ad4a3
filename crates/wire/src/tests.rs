#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;

fn spec() -> Spec {
    Spec {
        argv: vec![b"sh".to_vec(), b"-c\xff".to_vec()],
        env: vec![b"A=b=c".to_vec()],
        cwd: Some(b"/tmp/\xfe".to_vec()),
        mounts: vec![Mount {
            tag: b"kiln0".to_vec(),
            guest: b"/tmp/x".to_vec(),
        }],
        tty: Some((24, 80)),
        stderr_tty: true,
        time: None,
        entropy: Vec::new(),
    }
}

#[test]
fn spec_layout_is_the_documented_one() {
    let p = spec().encode().unwrap();
    assert_eq!(&p[..7], b"a\x02\0\0\0sh");
    assert!(p.ends_with(b"t\x04\0\0\0\x18\0\x50\0\x32\0\0\0\0"));
    assert_eq!(Spec::decode(&p).unwrap(), spec());
}

#[test]
fn the_clock_and_entropy_fields_round_trip_and_bad_times_are_refused() {
    let mut s = spec();
    s.time = Some((1_796_000_000, 999_999_999));
    s.entropy = vec![0xa5; 64];
    let p = s.encode().unwrap();
    assert_eq!(Spec::decode(&p).unwrap(), s);
    let mut bad = spec().encode().unwrap();
    bad.extend_from_slice(b"T\x0c\0\0\0");
    bad.extend_from_slice(&0i64.to_le_bytes());
    bad.extend_from_slice(&1_000_000_000u32.to_le_bytes());
    assert!(Spec::decode(&bad).unwrap_err().contains("nanoseconds"));
    let w = ToHost::Waiting { pristine: true }.encode();
    assert_eq!(w, b"W\x01\0\0\0\x01");
    let (k, p, _) = split_frame(&w).unwrap().unwrap();
    assert_eq!(
        ToHost::decode(k, p).unwrap(),
        ToHost::Waiting { pristine: true }
    );
    assert!(ToHost::decode(b'W', &[2]).is_err());
}

#[test]
fn spec_errors() {
    let p = spec().encode().unwrap();
    assert!(Spec::decode(&p[..p.len() - 1]).is_err());
    assert!(
        Spec::decode(b"e\x03\0\0\0A=b")
            .unwrap_err()
            .contains("empty")
    );
    assert!(Spec::decode(b"?\0\0\0\0").is_err());
    assert!(Spec::decode(b"a\xff\xff\xff\xffsh").is_err());
    assert!(Spec::decode(b"m\x02\0\0\0ab").is_err());
    assert!(Spec::decode(b"t\x03\0\0\0abc").is_err());
    let bad = Spec {
        mounts: vec![Mount {
            tag: b"a\0b".to_vec(),
            guest: b"/x".to_vec(),
        }],
        ..spec()
    };
    assert_eq!(bad.encode(), Err(EncodeError::NulInTag));
}

#[test]
fn exit_layout() {
    let f = ToHost::Exit(Exit {
        signaled: true,
        code: 13,
        out: 1 << 40,
        err: 7,
    })
    .encode();
    assert_eq!(f.len(), HEADER + 21);
    assert_eq!(&f[..6], b"X\x15\0\0\0\x01");
    let (k, p) = read_frame(&mut &f[..]).unwrap();
    assert_eq!(
        ToHost::decode(k, &p).unwrap(),
        ToHost::Exit(Exit {
            signaled: true,
            code: 13,
            out: 1 << 40,
            err: 7
        })
    );
}

/// A header announcing 4 GiB is refused before anything is allocated or read.
#[test]
fn oversize_header_is_refused_unread() {
    let mut r: &[u8] = b"S\xff\xff\xff\xffrest";
    match read_frame(&mut r) {
        Err(RecvError::Oversize { kind, len }) => {
            assert_eq!((kind, len), (b'S', u32::MAX));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r, b"rest");
    let msg = recv_to_guest(&mut &b"S\0\0\x50\0"[..])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("oversize 'S' frame") && msg.contains("5242880"),
        "{msg}"
    );
    assert!(frame(b'F', &vec![0; MAX_PAYLOAD + 1]).is_err());
    assert!(frame(b'F', &vec![0; MAX_PAYLOAD]).is_ok());
    // A too-long failure message is cut, never an oversize frame.
    let f = ToHost::Fail(vec![b'x'; MAX_PAYLOAD + 10]).encode();
    assert_eq!(f.len(), HEADER + MAX_PAYLOAD);
}

#[test]
fn end_of_channel() {
    assert!(matches!(read_frame(&mut &b""[..]), Err(RecvError::Closed)));
    assert!(matches!(
        read_frame(&mut &b"A\0"[..]),
        Err(RecvError::Io(_))
    ));
    assert!(matches!(
        read_frame(&mut &b"F\x05\0\0\0abc"[..]),
        Err(RecvError::Io(_))
    ));
}

#[test]
fn wrong_direction_and_sizes_are_malformed() {
    assert!(ToGuest::decode(b'R', b"").is_err());
    assert!(ToHost::decode(b'A', b"").is_err());
    assert!(ToGuest::decode(b'A', b"x").is_err());
    assert!(ToGuest::decode(b'P', &[3]).is_err());
    assert!(ToGuest::decode(b'K', &[1, 2, 3]).is_err());
    assert!(ToHost::decode(b'X', &[2; 21]).is_err());
    let m = ToGuest::decode(0x01, b"").unwrap_err().to_string();
    assert_eq!(m, "malformed 0x01 frame: not a host-to-guest message");
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn any_spec() -> impl Strategy<Value = Spec> {
    (
        proptest::collection::vec(bytes(12), 1..4),
        proptest::collection::vec(bytes(12), 0..4),
        proptest::option::of(bytes(12)),
        proptest::collection::vec(
            (proptest::collection::vec(1u8..=255, 0..6), bytes(12)),
            0..3,
        ),
        proptest::option::of(any::<(u16, u16)>()),
        any::<bool>(),
        proptest::option::of((any::<i64>(), 0u32..1_000_000_000)),
        bytes(64),
    )
        .prop_map(|(argv, env, cwd, mounts, tty, e, time, entropy)| Spec {
            argv,
            env,
            cwd,
            mounts: mounts
                .into_iter()
                .map(|(tag, guest)| Mount { tag, guest })
                .collect(),
            tty,
            stderr_tty: e && tty.is_some(),
            time,
            entropy,
        })
}

fn any_to_guest() -> impl Strategy<Value = ToGuest> {
    prop_oneof![
        any_spec().prop_map(ToGuest::Spec),
        any::<(u16, u16)>().prop_map(|(rows, cols)| ToGuest::Winsize { rows, cols }),
        any::<u32>().prop_map(ToGuest::Signal),
        any::<bool>().prop_map(|o| ToGuest::Closed(if o {
            Stream::Stdout
        } else {
            Stream::Stderr
        })),
        Just(ToGuest::Ack),
    ]
}

fn any_to_host() -> impl Strategy<Value = ToHost> {
    prop_oneof![
        Just(ToHost::Ready),
        bytes(40).prop_map(ToHost::Fail),
        (any::<bool>(), any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
            |(signaled, code, out, err)| ToHost::Exit(Exit {
                signaled,
                code,
                out,
                err
            })
        ),
    ]
}

proptest! {
    /// Whatever arrives, reading and decoding return (a message or an error) and never
    /// hold more than the cap.
    #[test]
    fn random_bytes_never_panic(input in bytes(300)) {
        let mut r = &input[..];
        while let Ok((k, p)) = read_frame(&mut r) {
            prop_assert!(p.len() <= MAX_PAYLOAD);
            let _ = ToGuest::decode(k, &p);
            let _ = ToHost::decode(k, &p);
        }
        let _ = Spec::decode(&input);
    }

    /// Headers with any length and a payload of any size: an oversize length is
    /// refused, a short payload is an error, a whole one is returned.
    #[test]
    fn any_header(kind in any::<u8>(), len in any::<u32>(), body in bytes(64)) {
        let mut f = vec![kind];
        f.extend_from_slice(&len.to_le_bytes());
        f.extend_from_slice(&body);
        match read_frame(&mut &f[..]) {
            Ok((k, p)) => {
                prop_assert_eq!(k, kind);
                prop_assert_eq!(p.len(), len as usize);
            }
            Err(RecvError::Oversize { .. }) => prop_assert!(len as usize > MAX_PAYLOAD),
            Err(RecvError::Io(_)) => prop_assert!(body.len() < len as usize),
            Err(e) => prop_assert!(false, "{}", e),
        }
    }

    /// Spec fields built from random tags and lengths decode without panicking.
    #[test]
    fn random_spec_fields(fields in proptest::collection::vec((any::<u8>(), any::<u32>(), bytes(16)), 0..6)) {
        let mut p = Vec::new();
        for (tag, len, v) in fields {
            p.push(tag);
            p.extend_from_slice(&len.to_le_bytes());
            p.extend_from_slice(&v);
        }
        let _ = Spec::decode(&p);
    }

    #[test]
    fn to_guest_round_trips(m in any_to_guest()) {
        let f = m.encode().unwrap();
        prop_assert_eq!(recv_to_guest(&mut &f[..]).unwrap(), m);
    }

    #[test]
    fn to_host_round_trips(m in any_to_host()) {
        let f = m.encode();
        prop_assert_eq!(recv_to_host(&mut &f[..]).unwrap(), m);
    }

    /// Gathering bytes in any chunks and splitting frames off the front gives what
    /// reading them from a stream gives.
    #[test]
    fn split_agrees_with_read(input in bytes(200), msgs in proptest::collection::vec(any_to_host(), 0..4)) {
        let mut all: Vec<u8> = msgs.iter().flat_map(|m| m.encode()).collect();
        all.extend_from_slice(&input);
        let mut r = &all[..];
        let mut buf = &all[..];
        loop {
            match (read_frame(&mut r), split_frame(buf)) {
                (Ok((k, p)), Ok(Some((k2, p2, used)))) => {
                    prop_assert_eq!((k, &p[..]), (k2, p2));
                    buf = &buf[used..];
                }
                (Err(RecvError::Oversize { .. }), Err(RecvError::Oversize { .. })) => break,
                (Err(_), Ok(None)) => break,
                (a, b) => prop_assert!(false, "{:?} vs {:?}", a, b),
            }
        }
    }

    /// A message cut anywhere is an error, never a different message.
    #[test]
    fn cut_frames_are_errors(m in any_to_guest(), cut in any::<prop::sample::Index>()) {
        let f = m.encode().unwrap();
        let at = cut.index(f.len());
        prop_assert!(recv_to_guest(&mut &f[..at]).is_err());
    }
}
