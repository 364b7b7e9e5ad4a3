//! Installing the chosen kernel into an appliance directory as `OUT/kernel`.
//!
//! Invariant: writes only `OUT/kernel` (and, while copying, `OUT/.kernel.tmp`, which is
//! removed on failure); a copy appears under its final name only once complete.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::{Error, Kernel, Result};

/// Install the kernel as `out_dir/kernel`: a symlink to the chosen path (supermin's
/// default) or, with `copy`, a copy (fresh mtime, mode 0644). An existing `kernel` in
/// `out_dir` is replaced.
pub fn install(kernel: &Kernel, out_dir: &Path, copy: bool) -> Result<PathBuf> {
    let to = out_dir.join("kernel");
    let err = |e: io::Error| Error::Install {
        from: kernel.path.clone(),
        to: to.clone(),
        source: e,
    };
    match fs::remove_file(&to) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    if copy {
        let tmp = out_dir.join(".kernel.tmp");
        let _ = fs::remove_file(&tmp);
        let res = (|| {
            let mut src = fs::File::open(&kernel.path)?;
            let mut dst = fs::File::create(&tmp)?;
            io::copy(&mut src, &mut dst)?;
            dst.sync_all()?;
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))?;
            fs::rename(&tmp, &to)
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(err(e));
        }
    } else {
        std::os::unix::fs::symlink(&kernel.path, &to).map_err(err)?;
    }
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KernelEnv;
    use crate::choose::choose;
    use crate::choose::tests::{add_boot, fixture};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn install_symlink_and_copy() {
        let fx = fixture();
        let p = add_boot(&fx, "vmlinuz-6.1.0-10-amd64", "6.1.0-10-amd64", true);
        let k = choose("x86_64", &KernelEnv::default(), &fx.roots).unwrap();
        let out = fx.dir.path().join("out");
        fs::create_dir(&out).unwrap();
        let to = install(&k, &out, false).unwrap();
        assert_eq!(fs::read_link(&to).unwrap(), p);
        install(&k, &out, true).unwrap();
        let m = fs::symlink_metadata(&to).unwrap();
        assert!(m.is_file());
        assert_eq!(m.permissions().mode() & 0o7777, 0o644);
        assert_eq!(fs::read(&to).unwrap(), fs::read(&p).unwrap());
    }
}
