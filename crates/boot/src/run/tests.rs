#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn status_codes() {
    assert_eq!(Status::Exited(7).code(), 7);
    assert_eq!(Status::Signaled(9).code(), 137);
    assert_eq!(Status::Exited(256 + 3).code(), 3);
}

#[test]
fn spec_goes_to_the_wire_as_given() {
    use std::os::unix::ffi::OsStringExt;
    let spec = RunSpec {
        argv: vec!["sh".into(), OsString::from_vec(b"-c\xff".to_vec())],
        cwd: Some("/w".into()),
        shares: vec![Share {
            host: "/h".into(),
            guest: "/g".into(),
        }],
        tty: Some((24, 80)),
        stderr_tty: true,
        ..Default::default()
    };
    let w = wire::spec(&spec);
    assert_eq!(w.argv, vec![b"sh".to_vec(), b"-c\xff".to_vec()]);
    assert_eq!(w.mounts[0].tag, b"kiln0");
    assert_eq!(w.mounts[0].guest, b"/g");
    assert_eq!((w.tty, w.stderr_tty), (Some((24, 80)), true));
    let p = w.encode().unwrap();
    assert_eq!(&p[..7], b"a\x02\0\0\0sh");
}

/// Frames gathered from a socket in any pieces come out whole and in order; a
/// malformed one is an error, never a panic.
#[test]
fn control_frames_from_pieces() {
    let mut all = ToHost::Ready.encode();
    all.extend(ToHost::Fail(b"no".to_vec()).encode());
    let mut buf = Vec::new();
    let mut got = Vec::new();
    for b in &all {
        buf.push(*b);
        while let Some(m) = next_message(&mut buf).unwrap() {
            got.push(m);
        }
    }
    assert_eq!(got, vec![ToHost::Ready, ToHost::Fail(b"no".to_vec())]);
    assert!(buf.is_empty());
    let mut bad = b"X\x01\0\0\0\x00".to_vec();
    assert!(next_message(&mut bad).is_err());
    let mut huge = b"F\xff\xff\xff\xff".to_vec();
    assert!(next_message(&mut huge).is_err());
}

#[test]
fn qemu_status_in_words() {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        qemu_status(Some(ExitStatus::from_raw(0))),
        "qemu exited with status 0"
    );
    assert_eq!(
        qemu_status(Some(ExitStatus::from_raw(9))),
        "qemu was killed by signal 9"
    );
}

#[test]
fn panic_is_found() {
    let c = "a\nb\n[ 1.0] Kernel panic - not syncing: Attempted to kill init!\nc\n";
    assert!(panic_text(c).unwrap().contains("Attempted to kill init"));
    assert!(panic_text("all fine\n").is_none());
}
