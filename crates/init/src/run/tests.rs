use super::*;

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
