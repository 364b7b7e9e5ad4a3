//! Checks against the host's own kernel (linux-image-amd64 is installed by
//! scripts/setup-host).

use std::fs;
use std::path::Path;

#[test]
fn version_from_real_host_kernel() {
    let mut found = false;
    for ent in fs::read_dir("/boot").unwrap() {
        let name = ent.unwrap().file_name().into_string().unwrap();
        if let Some(v) = name.strip_prefix("vmlinuz-") {
            let got = kiln_kernel::bzimage_version_of(&Path::new("/boot").join(&name)).unwrap();
            assert_eq!(got.as_deref(), Some(v), "{name}");
            found = true;
        }
    }
    assert!(found, "no /boot/vmlinuz-* on this host");
}

#[test]
fn host_kernel_is_chosen_with_its_modules() {
    let k = kiln_kernel::choose_host("x86_64").unwrap();
    assert!(k.modules.join("modules.dep").is_file(), "{k:?}");
    assert_eq!(
        kiln_kernel::bzimage_version_of(&k.path).unwrap().as_deref(),
        Some(k.version.as_str())
    );
}
