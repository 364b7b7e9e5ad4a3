//! The host's own dpkg database (Debian 12, as CI runs on).

use std::path::Path;

use kiln_packages::dpkg::DpkgDb;

fn names(db: &DpkgDb, r: &kiln_packages::dpkg::Resolution) -> Vec<String> {
    r.packages
        .iter()
        .map(|&i| db.package(i).display())
        .collect()
}

#[test]
fn real_host_database_loads() {
    let db = DpkgDb::load(Path::new("/")).unwrap();
    assert_eq!(db.native_arch, "amd64");
    let r = db.resolve(&["bash", "coreutils"]);
    assert!(r.missing.is_empty());
    let n = names(&db, &r);
    assert!(n.iter().any(|p| p.starts_with("libc6_")), "{n:?}");
}

#[test]
fn the_host_is_detected_as_debian() {
    assert!((kiln_packages::dpkg::DRIVER.detect)(Path::new("/")));
}
