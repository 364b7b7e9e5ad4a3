//! The host's view of the control channel's spec: a [`RunSpec`] as `kiln-wire` carries
//! it (the format itself is defined once, in `kiln-wire`, for host and init).

use std::os::unix::ffi::OsStrExt;

use super::RunSpec;

/// The spec message for the guest.
pub(super) fn spec(spec: &RunSpec) -> kiln_wire::Spec {
    kiln_wire::Spec {
        argv: spec.argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        env: spec.env.iter().map(|e| e.as_bytes().to_vec()).collect(),
        cwd: spec.cwd.as_ref().map(|c| c.as_os_str().as_bytes().to_vec()),
        mounts: spec
            .shares
            .iter()
            .enumerate()
            .map(|(i, s)| kiln_wire::Mount {
                tag: share_tag(i).into_bytes(),
                guest: s.guest.as_os_str().as_bytes().to_vec(),
            })
            .collect(),
        tty: spec.tty,
        stderr_tty: spec.tty.is_some() && spec.stderr_tty,
        time: None,
        entropy: Vec::new(),
    }
}

/// The 9p mount tag of the `i`th share.
pub(super) fn share_tag(i: usize) -> String {
    format!("kiln{i}")
}
