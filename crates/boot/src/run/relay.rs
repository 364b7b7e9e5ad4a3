//! The threads that relay the command's byte streams between this process and the
//! guest's ports, and the terminal's size to the guest.
//!
//! Pipeline semantics, as a local `CMD | consumer` would have them:
//! - a consumer that is gone (EPIPE) makes the guest close the command's end of that
//!   pipe ([`ToGuest::Closed`]), so the command gets SIGPIPE/EPIPE on its next write and
//!   ends as it would locally; what it wrote meanwhile is read and dropped, so the guest
//!   never blocks on it;
//! - any other write error (ENOSPC, EIO, ...) does the same and is reported: the run
//!   fails with that error, never a quiet truncation;
//! - EAGAIN (an `O_NONBLOCK` stdin, stdout or stderr) means "wait until it is ready"
//!   (poll(2)), never EOF or a drop;
//! - a slow consumer slows the command down (back-pressure through the port), however
//!   slow it is.
//!
//! Every wait here (poll) also watches a stop fd ([`Stop`]): when the run ends, dropping
//! its write end wakes every thread, so none is left blocked on a consumer that never
//! reads or a stdin that never ends.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use kiln_wire::{Stream, ToGuest};
use rustix::event::{PollFd, PollFlags, poll};
use rustix::io::Errno;

/// A pipe whose write end the run keeps; dropping it ([`Stop::stop`]) wakes every relay
/// thread polling the read end, and they return.
pub(super) struct Stop {
    r: Arc<OwnedFd>,
    w: Option<OwnedFd>,
}

impl Stop {
    pub(super) fn new() -> io::Result<Stop> {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        Ok(Stop {
            r: Arc::new(r),
            w: Some(w),
        })
    }

    fn watch(&self) -> Arc<OwnedFd> {
        Arc::clone(&self.r)
    }

    pub(super) fn stop(&mut self) {
        self.w = None;
    }
}

/// A self-pipe the relay threads write a byte to when the main loop should look again
/// (bytes counted); the main loop polls the read end and drains it.
pub(super) struct Waker {
    r: OwnedFd,
    w: Arc<OwnedFd>,
}

impl Waker {
    pub(super) fn new() -> io::Result<Waker> {
        use rustix::pipe::PipeFlags;
        let (r, w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        Ok(Waker { r, w: Arc::new(w) })
    }

    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.r.as_fd()
    }

    /// Empty the pipe (after poll said it is readable).
    pub(super) fn drain(&self) {
        let mut b = [0u8; 256];
        while matches!(rustix::io::read(&self.r, &mut b), Ok(n) if n > 0) {}
    }

    fn handle(&self) -> Arc<OwnedFd> {
        Arc::clone(&self.w)
    }
}

fn wake(w: &OwnedFd) {
    // A full pipe already holds a wake-up.
    let _ = rustix::io::write(w, &[1]);
}

/// Wait until `fd` is ready for `flags` (or in error, or hung up: the next read or
/// write says which). False when `stop` fired and `fd` is not ready: what is there is
/// still taken after the stop.
fn wait(fd: BorrowedFd<'_>, flags: PollFlags, stop: &OwnedFd) -> bool {
    loop {
        let mut fds = [PollFd::new(&fd, flags), PollFd::new(stop, PollFlags::IN)];
        match poll(&mut fds, None) {
            Ok(_) => {
                if !fds[0].revents().is_empty() {
                    return true;
                }
                if !fds[1].revents().is_empty() {
                    return false;
                }
            }
            Err(Errno::INTR) => {}
            // poll(2) itself failing (ENOMEM): the read or write will say more.
            Err(_) => return true,
        }
    }
}

/// Queue a message for the guest (the control writer thread sends it).
pub(super) type ToGuestTx = mpsc::Sender<ToGuest>;

/// What an output pump found.
pub(super) struct OutReport {
    /// A write error other than EPIPE: the run must fail with it.
    pub error: Option<io::Error>,
}

/// Copy a port to this process's fd 1 or 2, counting every byte read from the port
/// (written or, once the consumer is gone, dropped).
pub(super) fn spawn_out(
    mut from: UnixStream,
    stream: Stream,
    count: Arc<AtomicU64>,
    ctl: ToGuestTx,
    waker: &Waker,
    stop: &Stop,
) -> std::thread::JoinHandle<OutReport> {
    let (wake_fd, stop_fd) = (waker.handle(), stop.watch());
    std::thread::spawn(move || {
        let target = match stream {
            Stream::Stdout => rustix::io::dup(rustix::stdio::stdout()),
            Stream::Stderr => rustix::io::dup(rustix::stdio::stderr()),
        };
        let mut error = None;
        let mut sink = target.ok();
        if sink.is_none() {
            // No such fd (closed at start): nobody to write for.
            let _ = ctl.send(ToGuest::Closed(stream));
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if !wait(from.as_fd(), PollFlags::IN, &stop_fd) {
                break;
            }
            let k = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => break,
            };
            if let Some(fd) = &sink {
                match write_all(fd.as_fd(), &buf[..k], &stop_fd) {
                    Ok(true) => {}
                    // Stopped while waiting for a slow consumer.
                    Ok(false) => break,
                    Err(e) => {
                        if e != Errno::PIPE {
                            error = Some(io::Error::from(e));
                        }
                        sink = None;
                        let _ = ctl.send(ToGuest::Closed(stream));
                    }
                }
            }
            count.fetch_add(k as u64, Ordering::SeqCst);
            wake(&wake_fd);
        }
        OutReport { error }
    })
}

/// Write all of `b` to `fd`, waiting out EAGAIN. Ok(false) when stopped.
fn write_all(fd: BorrowedFd<'_>, mut b: &[u8], stop: &OwnedFd) -> Result<bool, Errno> {
    while !b.is_empty() {
        match rustix::io::write(fd, b) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => b = &b[n..],
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => {
                if !wait(fd, PollFlags::OUT, stop) {
                    return Ok(false);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Copy this process's stdin to the guest; at EOF, half-close so the guest sees EOF
/// (the caller keeps another handle: a full close would make qemu drop what the guest
/// has not read yet). EAGAIN waits; a read error other than that ends stdin as EOF does
/// (a terminal that went away), logged.
pub(super) fn spawn_stdin(to: UnixStream, stop: &Stop) {
    let stop_fd = stop.watch();
    std::thread::spawn(move || {
        let Ok(from) = rustix::io::dup(rustix::stdio::stdin()) else {
            let _ = to.shutdown(std::net::Shutdown::Write);
            return;
        };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if !wait(from.as_fd(), PollFlags::IN, &stop_fd) {
                return;
            }
            match rustix::io::read(&from, &mut buf) {
                Ok(0) => break,
                Ok(k) => {
                    // The guest not reading is back-pressure; the stop fd ends the
                    // wait when the run is over.
                    match write_all(to.as_fd(), &buf[..k], &stop_fd) {
                        Ok(true) => {}
                        Ok(false) | Err(_) => return,
                    }
                }
                Err(Errno::INTR) | Err(Errno::AGAIN) => {}
                Err(e) => {
                    tracing::debug!("reading stdin: {e}; the command gets EOF");
                    break;
                }
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

/// The control channel's writer: one thread writes every queued message in order, so
/// the main loop never blocks on a guest that does not read, and frames from several
/// threads never interleave. It ends when every sender is gone or the guest is.
pub(super) fn spawn_ctl_writer(mut ctl: UnixStream, rx: mpsc::Receiver<ToGuest>) {
    std::thread::spawn(move || {
        for m in rx {
            // Every message was checked to fit (the spec before qemu started; the rest
            // are a few bytes); a write error means the guest is gone.
            let Ok(f) = m.encode() else { continue };
            if ctl.write_all(&f).is_err() {
                return;
            }
        }
    });
}

/// Terminal mode: send the host terminal's size whenever it changes. Polled every
/// 200 ms: kiln installs no SIGWINCH handler (a library must not take signals from its
/// caller). Ends when the run does.
pub(super) fn spawn_winsize(ctl: ToGuestTx, initial: Option<(u16, u16)>, stop: &Stop) {
    let stop_fd = stop.watch();
    std::thread::spawn(move || {
        let mut last = initial;
        loop {
            let mut fds = [PollFd::new(&*stop_fd, PollFlags::IN)];
            let t = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: Duration::from_millis(200).as_nanos() as _,
            };
            if matches!(poll(&mut fds, Some(&t)), Ok(n) if n > 0) {
                return;
            }
            let Some(now) = terminal_size(rustix::stdio::stdout()) else {
                continue;
            };
            if Some(now) != last {
                last = Some(now);
                let m = ToGuest::Winsize {
                    rows: now.0,
                    cols: now.1,
                };
                if ctl.send(m).is_err() {
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
