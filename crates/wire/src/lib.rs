//! The control channel of `kiln run`: the one definition of its frames and messages,
//! used by the host (`kiln_boot::run`) and by the guest's PID 1 (kiln-init's run mode).
//!
//! The channel is a virtio-serial port (`kiln.ctl`) carrying frames
//! `[kind: u8][len: u32 LE][payload: len bytes]`, with `len` at most [`MAX_PAYLOAD`] on
//! both sides: a reader refuses a longer header *before* allocating anything, so a
//! corrupt or hostile frame costs at most that much memory (in PID 1 an unbounded
//! allocation would be a kernel panic), and a writer refuses to produce one.
//!
//! Host → guest ([`ToGuest`]):
//! - `S` the command spec ([`Spec`]): a sequence of fields `[tag: u8][len: u32 LE][bytes]`:
//!   `a` one argv word, `e` one `NAME=VALUE`, `c` the working directory, `m` a 9p mount
//!   `TAG\0GUEST_PATH`, `t` terminal mode (`rows: u16, cols: u16`), `2` stderr goes to
//!   the terminal too (empty), `T` the host's clock (`secs: i64, nanos: u32`), `r`
//!   random bytes for the guest's entropy pool;
//! - `W` window size (`rows: u16, cols: u16`);
//! - `K` a signal for the command's process group (`u32`);
//! - `P` an output stream's consumer is gone (`u8`: 1 stdout, 2 stderr): the guest closes
//!   the command's end so it gets SIGPIPE/EPIPE as in a local pipeline (SIGHUP for a
//!   terminal);
//! - `A` the host has every byte the guest counted: power off (empty).
//!
//! Guest → host ([`ToHost`]):
//! - `W` the guest waits for the spec (`u8`: 1 when the root disk is still untouched,
//!   the ready point at which `kiln run` saves a VM's start state);
//! - `R` the command started (empty);
//! - `F` what failed before the command could run (text);
//! - `X` the command's end ([`Exit`]): `kind: u8` (0 exited, 1 killed by a signal),
//!   `code: u32`, then the bytes written to the stdout and stderr ports (`u64` each).
//!
//! All integers are little-endian. Every decoder takes arbitrary bytes and returns an
//! error for anything it does not recognise; nothing here panics on input (the property
//! tests feed it random frames). This crate uses `std` only: it is linked into the
//! static init.

use std::fmt;
use std::io::{self, Read};

/// The largest payload a frame may carry: room for a command line and environment as
/// large as Linux's `execve` accepts by default (a quarter of an 8 MiB stack), twice.
pub const MAX_PAYLOAD: usize = 4 << 20;

/// The header: kind byte and payload length.
pub const HEADER: usize = 5;

/// A 9p share to mount in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mount {
    /// The virtio-9p mount tag (no NUL byte).
    pub tag: Vec<u8>,
    /// Where to mount it (absolute path, bytes).
    pub guest: Vec<u8>,
}

/// What to run in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Spec {
    pub argv: Vec<Vec<u8>>,
    /// `NAME=VALUE` words, the command's whole environment.
    pub env: Vec<Vec<u8>>,
    pub cwd: Option<Vec<u8>>,
    pub mounts: Vec<Mount>,
    /// Terminal mode: rows and columns of the command's pty.
    pub tty: Option<(u16, u16)>,
    /// In terminal mode, stderr goes to the pty too.
    pub stderr_tty: bool,
    /// The host's wall-clock time (seconds and nanoseconds since the epoch) when it
    /// sent the spec: a guest started from a saved state has the clock of the moment
    /// it was saved.
    pub time: Option<(i64, u32)>,
    /// Random bytes from the host, mixed into the guest's entropy pool before the
    /// command starts: two VMs started from one saved state must not share a stream.
    pub entropy: Vec<u8>,
}

/// One of the command's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn byte(self) -> u8 {
        match self {
            Stream::Stdout => 1,
            Stream::Stderr => 2,
        }
    }
}

/// How the command ended and how many bytes the guest wrote to each output port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Killed by signal `code` (else exited with status `code`).
    pub signaled: bool,
    pub code: u32,
    pub out: u64,
    pub err: u64,
}

/// A message from the host to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToGuest {
    Spec(Spec),
    Winsize { rows: u16, cols: u16 },
    Signal(u32),
    Closed(Stream),
    Ack,
}

/// A message from the guest to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToHost {
    /// The guest is at its ready point: root mounted (read-only), modules loaded,
    /// waiting for the spec. `pristine`: nothing was written to the root disk so far,
    /// so the VM's state may be saved and started again over a fresh disk overlay.
    Waiting {
        pristine: bool,
    },
    Ready,
    Fail(Vec<u8>),
    Exit(Exit),
}

/// A message that cannot be put in a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// The payload would exceed [`MAX_PAYLOAD`].
    TooLarge { kind: u8, len: usize },
    /// A 9p mount tag contains a NUL byte (the field's separator).
    NulInTag,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::TooLarge { kind, len } => write!(
                f,
                "the {} message would be {len} bytes, more than the {MAX_PAYLOAD} a control frame may carry",
                name(*kind)
            ),
            EncodeError::NulInTag => f.write_str("a share's mount tag contains a NUL byte"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// A frame that was read whole but does not say anything this side understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    pub kind: u8,
    pub why: String,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed {} frame: {}", name(self.kind), self.why)
    }
}

impl std::error::Error for Malformed {}

/// Why no message could be received.
#[derive(Debug)]
pub enum RecvError {
    /// The channel ended at a frame boundary.
    Closed,
    /// Reading failed, or the channel ended inside a frame.
    Io(io::Error),
    /// A header announced more than [`MAX_PAYLOAD`] bytes (nothing was allocated).
    Oversize {
        kind: u8,
        len: u32,
    },
    Malformed(Malformed),
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Closed => f.write_str("the control channel was closed"),
            RecvError::Io(e) => write!(f, "reading the control channel: {e}"),
            RecvError::Oversize { kind, len } => write!(
                f,
                "oversize {} frame: {len} bytes announced, at most {MAX_PAYLOAD} allowed",
                name(*kind)
            ),
            RecvError::Malformed(m) => m.fmt(f),
        }
    }
}

impl std::error::Error for RecvError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RecvError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// A frame kind for messages: the letter when printable, else its number.
fn name(kind: u8) -> String {
    if kind.is_ascii_graphic() {
        format!("'{}'", kind as char)
    } else {
        format!("0x{kind:02x}")
    }
}

/// One frame: header and payload.
pub fn frame(kind: u8, payload: &[u8]) -> Result<Vec<u8>, EncodeError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&l| l as usize <= MAX_PAYLOAD)
        .ok_or(EncodeError::TooLarge {
            kind,
            len: payload.len(),
        })?;
    let mut v = Vec::with_capacity(HEADER + payload.len());
    v.push(kind);
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(payload);
    Ok(v)
}

/// Read one frame. The length is checked before anything is allocated, and the payload
/// buffer grows only with the bytes that actually arrive.
pub fn read_frame(r: &mut impl Read) -> Result<(u8, Vec<u8>), RecvError> {
    let mut h = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Err(RecvError::Closed),
            Ok(0) => {
                return Err(RecvError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the control channel ended inside a frame header",
                )));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(RecvError::Io(e)),
        }
    }
    let kind = h[0];
    let len = u32::from_le_bytes([h[1], h[2], h[3], h[4]]);
    if len as usize > MAX_PAYLOAD {
        return Err(RecvError::Oversize { kind, len });
    }
    let mut p = Vec::new();
    r.take(u64::from(len))
        .read_to_end(&mut p)
        .map_err(RecvError::Io)?;
    if p.len() != len as usize {
        return Err(RecvError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "the control channel ended inside a {} frame ({} of {len} bytes)",
                name(kind),
                p.len()
            ),
        )));
    }
    Ok((kind, p))
}

/// A frame found at the front of a buffer: kind, payload, bytes it took.
pub type Split<'a> = (u8, &'a [u8], usize);

/// The first whole frame at the start of `buf`, for a reader that gathers bytes as
/// they come (a poll loop), or None while more bytes are needed. An oversize header is
/// an error as soon as the header is there.
pub fn split_frame(buf: &[u8]) -> Result<Option<Split<'_>>, RecvError> {
    let Some((h, rest)) = buf.split_first_chunk::<HEADER>() else {
        return Ok(None);
    };
    let kind = h[0];
    let len = u32::from_le_bytes([h[1], h[2], h[3], h[4]]);
    if len as usize > MAX_PAYLOAD {
        return Err(RecvError::Oversize { kind, len });
    }
    Ok(rest
        .get(..len as usize)
        .map(|p| (kind, p, HEADER + len as usize)))
}

fn field(out: &mut Vec<u8>, tag: u8, v: &[u8]) -> Result<(), EncodeError> {
    let len = u32::try_from(v.len())
        .ok()
        .filter(|&l| l as usize <= MAX_PAYLOAD)
        .ok_or(EncodeError::TooLarge {
            kind: b'S',
            len: v.len(),
        })?;
    out.push(tag);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(v);
    Ok(())
}

fn rows_cols(rows: u16, cols: u16) -> [u8; 4] {
    let [a, b] = rows.to_le_bytes();
    let [c, d] = cols.to_le_bytes();
    [a, b, c, d]
}

impl Spec {
    /// The `S` frame's payload.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut p = Vec::new();
        for a in &self.argv {
            field(&mut p, b'a', a)?;
        }
        for e in &self.env {
            field(&mut p, b'e', e)?;
        }
        if let Some(c) = &self.cwd {
            field(&mut p, b'c', c)?;
        }
        for m in &self.mounts {
            if m.tag.contains(&0) {
                return Err(EncodeError::NulInTag);
            }
            let mut v = m.tag.clone();
            v.push(0);
            v.extend_from_slice(&m.guest);
            field(&mut p, b'm', &v)?;
        }
        if let Some((r, c)) = self.tty {
            field(&mut p, b't', &rows_cols(r, c))?;
            if self.stderr_tty {
                field(&mut p, b'2', &[])?;
            }
        }
        if let Some((secs, nanos)) = self.time {
            let mut v = secs.to_le_bytes().to_vec();
            v.extend_from_slice(&nanos.to_le_bytes());
            field(&mut p, b'T', &v)?;
        }
        if !self.entropy.is_empty() {
            field(&mut p, b'r', &self.entropy)?;
        }
        Ok(p)
    }

    /// Parse an `S` frame's payload.
    pub fn decode(mut p: &[u8]) -> Result<Spec, String> {
        let mut s = Spec::default();
        while let Some((&tag, rest)) = p.split_first() {
            let Some((len, rest)) = rest.split_first_chunk::<4>() else {
                return Err(format!("field '{}' cut short in its header", tag as char));
            };
            let len = u32::from_le_bytes(*len) as usize;
            let Some((v, rest)) = rest.split_at_checked(len) else {
                return Err(format!(
                    "field '{}' says {len} bytes, {} remain",
                    tag as char,
                    rest.len()
                ));
            };
            p = rest;
            match tag {
                b'a' => s.argv.push(v.to_vec()),
                b'e' => s.env.push(v.to_vec()),
                b'c' => s.cwd = Some(v.to_vec()),
                b'm' => {
                    let Some(i) = v.iter().position(|&b| b == 0) else {
                        return Err("mount field without a NUL between tag and path".into());
                    };
                    s.mounts.push(Mount {
                        tag: v[..i].to_vec(),
                        guest: v[i + 1..].to_vec(),
                    });
                }
                b't' => {
                    let [a, b, c, d] = <[u8; 4]>::try_from(v)
                        .map_err(|_| format!("terminal field of {len} bytes, not 4"))?;
                    s.tty = Some((u16::from_le_bytes([a, b]), u16::from_le_bytes([c, d])));
                }
                b'2' => s.stderr_tty = true,
                b'T' => {
                    let t = <[u8; 12]>::try_from(v)
                        .map_err(|_| format!("time field of {len} bytes, not 12"))?;
                    let (secs, nanos) = t.split_at(8);
                    let secs = i64::from_le_bytes(secs.try_into().map_err(|_| "time")?);
                    let nanos = u32::from_le_bytes(nanos.try_into().map_err(|_| "time")?);
                    if nanos >= 1_000_000_000 {
                        return Err(format!("time field with {nanos} nanoseconds"));
                    }
                    s.time = Some((secs, nanos));
                }
                b'r' => s.entropy = v.to_vec(),
                _ => return Err(format!("unknown field {}", name(tag))),
            }
        }
        if s.argv.is_empty() {
            return Err("empty command".into());
        }
        Ok(s)
    }
}

fn malformed(kind: u8, why: impl Into<String>) -> Malformed {
    Malformed {
        kind,
        why: why.into(),
    }
}

fn empty(kind: u8, p: &[u8]) -> Result<(), Malformed> {
    if p.is_empty() {
        Ok(())
    } else {
        Err(malformed(
            kind,
            format!("{} bytes where none belong", p.len()),
        ))
    }
}

fn exactly<const N: usize>(kind: u8, p: &[u8]) -> Result<[u8; N], Malformed> {
    <[u8; N]>::try_from(p).map_err(|_| malformed(kind, format!("{} bytes, not {N}", p.len())))
}

impl ToGuest {
    /// The whole frame.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        match self {
            ToGuest::Spec(s) => frame(b'S', &s.encode()?),
            ToGuest::Winsize { rows, cols } => frame(b'W', &rows_cols(*rows, *cols)),
            ToGuest::Signal(s) => frame(b'K', &s.to_le_bytes()),
            ToGuest::Closed(s) => frame(b'P', &[s.byte()]),
            ToGuest::Ack => frame(b'A', &[]),
        }
    }

    pub fn decode(kind: u8, p: &[u8]) -> Result<ToGuest, Malformed> {
        Ok(match kind {
            b'S' => ToGuest::Spec(Spec::decode(p).map_err(|w| malformed(kind, w))?),
            b'W' => {
                let [a, b, c, d] = exactly::<4>(kind, p)?;
                ToGuest::Winsize {
                    rows: u16::from_le_bytes([a, b]),
                    cols: u16::from_le_bytes([c, d]),
                }
            }
            b'K' => ToGuest::Signal(u32::from_le_bytes(exactly::<4>(kind, p)?)),
            b'P' => match exactly::<1>(kind, p)? {
                [1] => ToGuest::Closed(Stream::Stdout),
                [2] => ToGuest::Closed(Stream::Stderr),
                [n] => return Err(malformed(kind, format!("no stream {n}"))),
            },
            b'A' => {
                empty(kind, p)?;
                ToGuest::Ack
            }
            _ => return Err(malformed(kind, "not a host-to-guest message")),
        })
    }
}

impl ToHost {
    /// The whole frame. A failure message longer than a frame is cut at the limit.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, p) = match self {
            ToHost::Ready => (b'R', Vec::new()),
            ToHost::Waiting { pristine } => (b'W', vec![u8::from(*pristine)]),
            ToHost::Fail(m) => (b'F', m[..m.len().min(MAX_PAYLOAD)].to_vec()),
            ToHost::Exit(x) => {
                let mut p = Vec::with_capacity(21);
                p.push(u8::from(x.signaled));
                p.extend_from_slice(&x.code.to_le_bytes());
                p.extend_from_slice(&x.out.to_le_bytes());
                p.extend_from_slice(&x.err.to_le_bytes());
                (b'X', p)
            }
        };
        let mut v = Vec::with_capacity(HEADER + p.len());
        v.push(kind);
        // At most MAX_PAYLOAD bytes (cut above), which fits a u32.
        v.extend_from_slice(&(p.len() as u32).to_le_bytes());
        v.extend_from_slice(&p);
        v
    }

    pub fn decode(kind: u8, p: &[u8]) -> Result<ToHost, Malformed> {
        Ok(match kind {
            b'R' => {
                empty(kind, p)?;
                ToHost::Ready
            }
            b'W' => ToHost::Waiting {
                pristine: match exactly::<1>(kind, p)? {
                    [0] => false,
                    [1] => true,
                    [n] => return Err(malformed(kind, format!("pristine flag {n}, not 0 or 1"))),
                },
            },
            b'F' => ToHost::Fail(p.to_vec()),
            b'X' => {
                let b = exactly::<21>(kind, p)?;
                let signaled = match b[0] {
                    0 => false,
                    1 => true,
                    n => return Err(malformed(kind, format!("end kind {n}, not 0 or 1"))),
                };
                let u64at = |o: usize| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(&b[o..o + 8]);
                    u64::from_le_bytes(a)
                };
                ToHost::Exit(Exit {
                    signaled,
                    code: u32::from_le_bytes([b[1], b[2], b[3], b[4]]),
                    out: u64at(5),
                    err: u64at(13),
                })
            }
            _ => return Err(malformed(kind, "not a guest-to-host message")),
        })
    }
}

/// Read and decode one message for the guest.
pub fn recv_to_guest(r: &mut impl Read) -> Result<ToGuest, RecvError> {
    let (kind, p) = read_frame(r)?;
    ToGuest::decode(kind, &p).map_err(RecvError::Malformed)
}

/// Read and decode one message for the host.
pub fn recv_to_host(r: &mut impl Read) -> Result<ToHost, RecvError> {
    let (kind, p) = read_frame(r)?;
    ToHost::decode(kind, &p).map_err(RecvError::Malformed)
}

#[cfg(test)]
mod tests;
