//! The qemu process of one attempt: its command line (byte-exact, with qemu's option
//! escaping) and a guard that owns it from spawn to reap.
//!
//! The guard ([`Qemu`]) kills and reaps qemu when dropped, so every way out of a run
//! (an error's `?`, a panic unwinding, a timeout, an interrupt) leaves no qemu and no
//! zombie behind. Two more layers cover what Drop cannot:
//! - qemu gets `PR_SET_PDEATHSIG(SIGKILL)`, so it dies if kiln's process dies without
//!   unwinding (SIGKILL, abort). The kernel ties that signal to the *thread* that
//!   forked, not the process: qemu is therefore always spawned by the thread that calls
//!   [`super::run`] and that thread stays inside `run` (owning the guard) until qemu is
//!   reaped, so a library caller running kiln on a worker thread cannot have qemu
//!   killed early by some other thread's exit, nor outlive the call;
//! - qemu runs in its own process group, so a terminal's signals reach kiln (which
//!   forwards them to the guest's command) and not qemu.
//!
//! A pidfd (when the kernel has them, 5.3 and later) lets the run's event loop poll(2)
//! for qemu's exit instead of sleeping.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};

/// qemu's option syntax doubles commas inside a value; the bytes stay bytes (a path
/// that is not UTF-8 must reach qemu as it is).
pub(super) fn escaped(out: &mut Vec<u8>, value: &[u8]) {
    for &b in value {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
}

/// `-virtfs` for a 9p share of `host` (escaped) with mount tag `tag`.
pub(super) fn virtfs_arg(host: &Path, tag: &str, id: &str) -> OsString {
    let mut v = b"local,path=".to_vec();
    escaped(&mut v, host.as_os_str().as_bytes());
    v.extend_from_slice(format!(",mount_tag={tag},security_model=none,id={id}").as_bytes());
    OsString::from_vec(v)
}

/// The running qemu; killed and reaped when dropped.
pub(crate) struct Qemu {
    child: Child,
    pidfd: Option<OwnedFd>,
    status: Option<ExitStatus>,
}

impl Qemu {
    /// Spawn `cmd` with the fds `inherit` passed down as they are (they must stay open
    /// until this returns), in its own process group, with the parent-death signal.
    pub(crate) fn spawn(cmd: &mut Command, inherit: &[RawFd]) -> io::Result<Qemu> {
        let inherit = inherit.to_vec();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe syscalls (fcntl, prctl, setpgid) on fds the
        // caller keeps open until spawn returns; nothing is allocated.
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &inherit {
                    let fd = BorrowedFd::borrow_raw(fd);
                    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
                }
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))?;
                rustix::process::setpgid(None, None)?;
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        // From here on the guard owns it: any return kills and reaps it.
        let pidfd = rustix::process::Pid::from_raw(child.id() as i32).and_then(|p| {
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
        });
        Ok(Qemu {
            child,
            pidfd,
            status: None,
        })
    }

    pub(crate) fn take_output(&mut self) -> (Option<ChildStdout>, Option<ChildStderr>) {
        (self.child.stdout.take(), self.child.stderr.take())
    }

    /// Readable once qemu has exited (None without pidfd support: the loop then
    /// wakes at least every [`super::NO_PIDFD_TICK`] to look).
    pub(crate) fn exit_fd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(|f| f.as_fd())
    }

    /// qemu's status if it has exited (reaping it).
    pub(crate) fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Wait for qemu to exit.
    pub(crate) fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let s = self.child.wait()?;
        self.status = Some(s);
        Ok(s)
    }

    /// Kill qemu (if it still runs) and wait for it, with the error of that wait.
    pub(crate) fn wait_after_kill(&mut self) -> io::Result<ExitStatus> {
        if self.status.is_none() {
            // Not reaped yet, so the pid cannot have been reused.
            let _ = self.child.kill();
        }
        self.wait()
    }

    /// Kill qemu (if it still runs) and reap it.
    pub(crate) fn kill(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            // Not reaped yet, so the pid cannot have been reused.
            let _ = self.child.kill();
        }
        self.wait().ok()
    }

    #[cfg(test)]
    pub(super) fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn virtfs_keeps_bytes_and_doubles_commas() {
        let p = std::path::PathBuf::from(OsString::from_vec(b"/s/\xff,x".to_vec()));
        assert_eq!(
            virtfs_arg(&p, "kiln0", "kfs0").as_bytes(),
            &b"local,path=/s/\xff,,x,mount_tag=kiln0,security_model=none,id=kfs0"[..]
        );
    }

    /// Dropping the guard on any path kills and reaps the process: no zombie, no
    /// survivor.
    #[test]
    fn drop_kills_and_reaps() {
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (c, d) = std::os::unix::net::UnixStream::pair().unwrap();
        let fds = [a.as_raw_fd(), b.as_raw_fd(), c.as_raw_fd(), d.as_raw_fd()];
        let q = Qemu::spawn(&mut cmd, &fds).unwrap();
        let pid = q.id();
        assert!(q.exit_fd().is_some(), "this kernel has pidfds");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _q = q;
            panic!("a failure while qemu runs");
        }));
        assert!(r.is_err());
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} survived the guard"
        );
    }
}
