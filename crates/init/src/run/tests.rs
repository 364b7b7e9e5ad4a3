use super::*;

#[test]
fn words_and_module_names() {
    assert!(wanted("quiet kiln.run root=UUID=x"));
    assert!(!wanted("kiln.running kiln.run=0"));
    assert_eq!(module_name("kernel/net/9p/9pnet-virtio.ko"), "9pnet_virtio");
    assert_eq!(module_name("kernel/fs/9p/9p.ko.xz"), "9p");
}
