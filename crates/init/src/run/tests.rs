use super::*;

fn field(tag: u8, v: &[u8]) -> Vec<u8> {
    let mut f = vec![tag];
    f.extend_from_slice(&(v.len() as u32).to_le_bytes());
    f.extend_from_slice(v);
    f
}

#[test]
fn spec_roundtrip_and_errors() {
    let mut p = field(b'a', b"sh");
    p.extend(field(b'a', b"-c\xff"));
    p.extend(field(b'e', b"A=b=c"));
    p.extend(field(b'm', b"kiln0\0/tmp/x"));
    p.extend(field(b't', &[24, 0, 80, 0]));
    let s = parse_spec(&p).unwrap();
    assert_eq!(s.argv, vec![b"sh".to_vec(), b"-c\xff".to_vec()]);
    assert_eq!(s.env, vec![b"A=b=c".to_vec()]);
    assert_eq!(s.mounts, vec![(b"kiln0".to_vec(), b"/tmp/x".to_vec())]);
    assert_eq!(s.tty, Some((24, 80)));
    assert!(parse_spec(&p[..p.len() - 1]).is_err());
    assert!(parse_spec(&field(b'e', b"A=b")).is_err());
    assert!(parse_spec(&field(b'?', b"")).is_err());
}

#[test]
fn words_and_module_names() {
    assert!(wanted("quiet kiln.run root=UUID=x"));
    assert!(!wanted("kiln.running kiln.run=0"));
    assert_eq!(module_name("kernel/net/9p/9pnet-virtio.ko"), "9pnet_virtio");
    assert_eq!(module_name("kernel/fs/9p/9p.ko.xz"), "9p");
}

#[test]
fn builtin_and_compressed_modules() {
    let d = tempfile::tempdir().unwrap();
    fs::write(
        d.path().join("modules.builtin"),
        "kernel/drivers/virtio/virtio.ko\nkernel/drivers/char/virtio_console.ko\n",
    )
    .unwrap();
    assert!(builtin(d.path(), "virtio_console"));
    assert!(!builtin(d.path(), "virtio_blk"));
    assert!(!builtin(&d.path().join("absent"), "virtio_console"));
    assert_eq!(compressed_flag("kernel/a/b.ko.xz"), 4);
    assert_eq!(compressed_flag("kernel/a/b.ko.zst"), 4);
    assert_eq!(compressed_flag("kernel/a/b.ko"), 0);
}
