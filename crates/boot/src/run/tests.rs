use super::*;

#[test]
fn status_codes() {
    assert_eq!(Status::Exited(7).code(), 7);
    assert_eq!(Status::Signaled(9).code(), 137);
    assert_eq!(Status::Exited(256 + 3).code(), 3);
}

#[test]
fn spec_encoding() {
    let spec = RunSpec {
        argv: vec!["sh".into(), "-c".into()],
        tty: Some((24, 80)),
        ..Default::default()
    };
    let p = encode_spec(&spec);
    assert_eq!(&p[..7], b"a\x02\0\0\0sh");
    assert!(p.ends_with(b"t\x04\0\0\0\x18\0\x50\0"));
}

#[test]
fn panic_is_found() {
    let c = "a\nb\n[ 1.0] Kernel panic - not syncing: Attempted to kill init!\nc\n";
    assert!(panic_text(c).unwrap().contains("Attempted to kill init"));
    assert!(panic_text("all fine\n").is_none());
}
