//! A minimal client of qemu's machine protocol (QMP) on one end of a socketpair whose
//! other end qemu got as `-chardev socket,fd=N` + `-mon mode=control`: what saving
//! and restarting a VM's state needs (`migrate` to a descriptor passed with
//! SCM_RIGHTS, its completion event, `cont`), nothing more.
//!
//! Invariants: every wait has a deadline (poll(2) on the socket, no sleeps); a reply
//! is matched to its command by order (one command in flight at a time), events seen
//! meanwhile are kept for [`Qmp::wait_event`]; a line longer than [`MAX_LINE`] is an
//! error, not an allocation.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use rustix::event::{PollFd, PollFlags};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use serde_json::{Value, json};

/// The longest reply line accepted (qemu's replies here are well under 4 KiB).
const MAX_LINE: usize = 1 << 20;

pub(crate) struct Qmp {
    sock: UnixStream,
    buf: Vec<u8>,
    events: Vec<Value>,
}

fn protocol(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl Qmp {
    /// Read qemu's greeting and leave capabilities negotiation.
    pub(crate) fn connect(sock: UnixStream, deadline: Instant) -> io::Result<Qmp> {
        let mut q = Qmp {
            sock,
            buf: Vec::new(),
            events: Vec::new(),
        };
        let hello = q.read_message(deadline)?;
        if hello.get("QMP").is_none() {
            return Err(protocol(format!("qemu's monitor greeted with {hello}")));
        }
        q.execute("qmp_capabilities", json!({}), None, deadline)?;
        Ok(q)
    }

    /// Run `command` with `args` (and `fd` passed along, for `getfd`); its `return`
    /// value, or qemu's error text as an error.
    pub(crate) fn execute(
        &mut self,
        command: &str,
        args: Value,
        fd: Option<BorrowedFd<'_>>,
        deadline: Instant,
    ) -> io::Result<Value> {
        let mut line = json!({ "execute": command, "arguments": args }).to_string();
        line.push('\n');
        self.send(line.as_bytes(), fd)?;
        loop {
            let m = self.read_message(deadline)?;
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                let desc = e.get("desc").and_then(Value::as_str).unwrap_or("no reason");
                return Err(io::Error::other(format!("qemu refused {command}: {desc}")));
            }
            if m.get("event").is_some() {
                self.events.push(m);
            }
        }
    }

    /// The first event (seen before or arriving now) for which `want` is true.
    pub(crate) fn wait_event(
        &mut self,
        want: impl Fn(&Value) -> bool,
        deadline: Instant,
    ) -> io::Result<Value> {
        if let Some(i) = self.events.iter().position(&want) {
            return Ok(self.events.remove(i));
        }
        loop {
            let m = self.read_message(deadline)?;
            if m.get("event").is_some() {
                if want(&m) {
                    return Ok(m);
                }
                self.events.push(m);
            }
        }
    }

    fn send(&self, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut anc = SendAncillaryBuffer::new(&mut space);
        let fds;
        if let Some(fd) = fd {
            fds = [fd];
            if !anc.push(SendAncillaryMessage::ScmRights(&fds)) {
                return Err(io::Error::other("no room to pass a descriptor"));
            }
        }
        let mut sent = 0;
        while sent < bytes.len() {
            // The descriptor goes with the first byte; the rest (if the socket took
            // only part) follows without it.
            let n = if sent == 0 {
                rustix::net::sendmsg(
                    self.sock.as_fd(),
                    &[IoSlice::new(bytes)],
                    &mut anc,
                    SendFlags::NOSIGNAL,
                )
            } else {
                rustix::net::send(self.sock.as_fd(), &bytes[sent..], SendFlags::NOSIGNAL)
            };
            match n {
                Ok(n) => sent += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The next JSON line from qemu.
    fn read_message(&mut self, deadline: Instant) -> io::Result<Value> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let text = String::from_utf8_lossy(&line);
                let text = text.trim();
                if text.is_empty() {
                    continue;
                }
                return serde_json::from_str(text)
                    .map_err(|e| protocol(format!("qemu's monitor said {text:.200}: {e}")));
            }
            if self.buf.len() > MAX_LINE {
                return Err(protocol("qemu's monitor sent a line over 1 MiB"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "qemu's monitor did not answer in time",
                ));
            }
            let ts = rustix::event::Timespec {
                tv_sec: left.as_secs().min(i64::MAX as u64) as i64,
                tv_nsec: left.subsec_nanos().into(),
            };
            let mut fds = [PollFd::new(&self.sock, PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            let mut b = [0u8; 4096];
            match rustix::net::recv(self.sock.as_fd(), &mut b, rustix::net::RecvFlags::DONTWAIT) {
                Ok((0, _)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "qemu closed its monitor",
                    ));
                }
                Ok((n, _)) => self.buf.extend_from_slice(&b[..n]),
                Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}
