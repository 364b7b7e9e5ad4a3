//! kiln's pacman reader against a root made by the real makepkg and pacman.

use kiln_packages::Database;
use kiln_packages::pacman::PacmanDb;

use crate::roots::pacman as pacroot;

fn pacman_root() -> (tempfile::TempDir, std::path::PathBuf) {
    assert!(
        pacroot::tools_present(),
        "makepkg, pacman, bsdtar and fakeroot are needed: run scripts/setup-host"
    );
    let t = tempfile::tempdir().unwrap();
    let root = pacroot::make_root(t.path(), &[], "");
    (t, root)
}

#[test]
fn closure_files_and_flags_match_pacman_itself() {
    let (_t, root) = pacman_root();
    let db = PacmanDb::load(&root).unwrap();
    assert_eq!(db.packages().len(), 4);
    let r = db.resolve(&["kiln-app", "not-installed"]).unwrap();
    let names: Vec<&str> = r
        .packages
        .iter()
        .map(|&i| db.packages()[i].display.as_str())
        .collect();
    // kiln-virtual>=1 → kiln-shell, libkiln.so=1-64 → kiln-libs.
    assert_eq!(
        names,
        [
            "kiln-app-1.0-1.any",
            "kiln-libs-1.0-1.any",
            "kiln-shell-1.0-1.any"
        ]
    );
    assert_eq!(r.missing, ["not-installed"]);
    let mut ours: Vec<String> = r
        .packages
        .iter()
        .flat_map(|&i| db.files(i).unwrap())
        .map(|f| f.path.display().to_string())
        .collect();
    ours.sort();
    let closure = ["kiln-app", "kiln-libs", "kiln-shell"];
    assert_eq!(ours, pacroot::pacman_ql(&root, &closure));
    let shell = r
        .packages
        .iter()
        .copied()
        .find(|&i| db.packages()[i].name == "kiln-shell")
        .unwrap();
    let conf: Vec<String> = db
        .config_files(shell)
        .unwrap()
        .iter()
        .map(|f| f.path.display().to_string())
        .collect();
    assert_eq!(conf, ["/etc/kiln-shell.conf"]);
    assert_eq!(
        (kiln_packages::pacman::DRIVER.fingerprint)(&root),
        [root.join("var/lib/pacman/local")]
    );
}
