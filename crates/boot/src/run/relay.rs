//! The threads that relay the command's byte streams between this process and the
//! guest's ports, and the terminal's size to the guest.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::wire::frame;

/// Copy a port to this process's fd 1 or 2 (unbuffered), counting bytes.
pub(super) fn spawn_out(
    mut from: UnixStream,
    fd: i32,
    n: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let target = if fd == 1 {
            rustix::io::dup(rustix::stdio::stdout())
        } else {
            rustix::io::dup(rustix::stdio::stderr())
        };
        let mut to = target.ok().map(fs::File::from);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let k = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            // A closed stdout (e.g. `| head`) drops the rest but keeps counting, so
            // the guest is still released.
            if let Some(t) = &mut to
                && t.write_all(&buf[..k]).is_err()
            {
                to = None;
            }
            n.fetch_add(k as u64, Ordering::SeqCst);
        }
    })
}

/// Copy this process's stdin to the guest; at EOF, half-close so the guest sees EOF.
pub(super) fn spawn_stdin(mut to: UnixStream) {
    std::thread::spawn(move || {
        let Ok(fd) = rustix::io::dup(rustix::stdio::stdin()) else {
            return;
        };
        let mut from = fs::File::from(fd);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => {
                    if to.write_all(&buf[..k]).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

/// Terminal mode: send the host terminal's size whenever it changes (polled: kiln
/// installs no signal handlers).
pub(super) fn spawn_winsize(mut ctl: UnixStream, initial: Option<(u16, u16)>) {
    std::thread::spawn(move || {
        let mut last = initial;
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let Some(now) = terminal_size(rustix::stdio::stdout()) else {
                continue;
            };
            if Some(now) != last {
                last = Some(now);
                let mut p = now.0.to_le_bytes().to_vec();
                p.extend_from_slice(&now.1.to_le_bytes());
                if ctl.write_all(&frame(b'W', &p)).is_err() {
                    return;
                }
            }
        }
    });
}

/// Rows and columns of the terminal on `fd`, if it is one.
pub fn terminal_size(fd: impl AsFd) -> Option<(u16, u16)> {
    let w = rustix::termios::tcgetwinsize(fd).ok()?;
    (w.ws_row > 0 && w.ws_col > 0).then_some((w.ws_row, w.ws_col))
}
