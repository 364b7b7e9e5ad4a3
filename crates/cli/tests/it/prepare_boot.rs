//! `kiln prepare` end to end: a supermin.d prepared from `bash coreutils` (plus an init
//! tarball, as libguestfs adds its own) builds with `kiln build -f ext2` and boots under
//! `kiln boot`, running bash and coreutils from the prepared packages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{kiln, text};

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[test]
fn prepared_bash_coreutils_builds_and_boots() {
    let t = tempfile::tempdir().unwrap();
    let prepared = t.path().join("prepared.d");
    let o = Command::new(kiln())
        .args(["prepare", "-o"])
        .arg(&prepared)
        .args(["bash", "coreutils"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        fs::read_to_string(prepared.join("packages")).unwrap(),
        "bash\ncoreutils\n"
    );
    assert!(prepared.join("base.tar.gz").is_file());

    // The appliance's /init: bash, with coreutils' uname and wc. When it exits the
    // kernel panics and reboots (panic=1), which ends qemu (-no-reboot).
    let initd = t.path().join("init.d");
    fs::create_dir(&initd).unwrap();
    let script = "#!/bin/bash\n\
                  n=$(/usr/bin/ls /usr/bin | /usr/bin/wc -l)\n\
                  echo \"prepared appliance: bash ${BASH_VERSION}, Linux $(/usr/bin/uname -r), $n programs\"\n";
    fs::write(initd.join("init"), script).unwrap();
    fs::set_permissions(initd.join("init"), fs::Permissions::from_mode(0o755)).unwrap();
    let init_tgz = t.path().join("init.tar.gz");
    let o = Command::new("tar")
        .args(["--owner=0", "--group=0", "-czf"])
        .arg(&init_tgz)
        .arg("-C")
        .arg(&initd)
        .arg("init")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));

    let app = t.path().join("appliance");
    let o = Command::new(kiln())
        .args(["build", "-f", "ext2", "--size", "1G"])
        .arg(&prepared)
        .arg(&init_tgz)
        .arg("-o")
        .arg(&app)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));

    let o = Command::new(kiln())
        .args(["boot", "--timeout", "240"])
        .arg(&app)
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", text(&o));
    let line = console
        .lines()
        .find(|l| l.contains("prepared appliance: bash 5."))
        .unwrap_or_else(|| panic!("no greeting from bash:\n{}", text(&o)));
    let uname = String::from_utf8_lossy(
        &Command::new("ls")
            .arg("/lib/modules")
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .to_string();
    assert!(line.contains(&format!("Linux {uname}")), "{line}");
}
