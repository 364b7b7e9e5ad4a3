//! The frames and fields of the control channel, the host's half (the guest's is
//! kiln-init's `run` module, which documents the format).

use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;

use super::RunSpec;

pub(super) fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + payload.len());
    v.push(kind);
    v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

fn field(out: &mut Vec<u8>, tag: u8, v: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    out.extend_from_slice(v);
}

/// The spec frame's payload (see kiln-init's `run` module for the format).
pub(super) fn encode_spec(spec: &RunSpec) -> Vec<u8> {
    let mut p = Vec::new();
    for a in &spec.argv {
        field(&mut p, b'a', a.as_bytes());
    }
    for e in &spec.env {
        field(&mut p, b'e', e.as_bytes());
    }
    if let Some(c) = &spec.cwd {
        field(&mut p, b'c', c.as_os_str().as_bytes());
    }
    for (i, s) in spec.shares.iter().enumerate() {
        let mut v = share_tag(i).into_bytes();
        v.push(0);
        v.extend_from_slice(s.guest.as_os_str().as_bytes());
        field(&mut p, b'm', &v);
    }
    if let Some((r, c)) = spec.tty {
        let mut v = r.to_le_bytes().to_vec();
        v.extend_from_slice(&c.to_le_bytes());
        field(&mut p, b't', &v);
        if spec.stderr_tty {
            field(&mut p, b'2', &[]);
        }
    }
    p
}

pub(super) fn share_tag(i: usize) -> String {
    format!("kiln{i}")
}

pub(super) fn read_frame(r: &mut impl Read) -> io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 5];
    r.read_exact(&mut h)?;
    let len = u32::from_le_bytes([h[1], h[2], h[3], h[4]]) as usize;
    if len > 1 << 20 {
        return Err(io::Error::other("oversized frame from the guest"));
    }
    let mut p = vec![0u8; len];
    r.read_exact(&mut p)?;
    Ok((h[0], p))
}
