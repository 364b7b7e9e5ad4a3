//! The accelerator choice: KVM when it runs guests, TCG when it does not, decided in
//! bounded time and remembered for the rest of the host's boot.
//!
//! `/dev/kvm` opening is no proof that KVM runs guests. Three broken hosts are common
//! (nested virtualisation, some cloud VMs, containers given `/dev/kvm`):
//! - qemu aborts at start (e.g. the `MSR 0x10a` abort);
//! - qemu runs and the guest never prints a thing;
//! - the guest prints a little (firmware, the kernel's decompressor) and then stalls.
//!
//! With [`Accel::Auto`] kiln therefore boots with KVM under a watchdog: the guest must
//! produce what only a working guest produces, a line of kiln's init (`kiln-init:`; the
//! init prints one as it starts, even with `quiet`), within [`start_limit`] (default
//! [`DEFAULT_START_LIMIT`], `KILN_KVM_WAIT=SECONDS` to change it) of qemu's start. If it
//! does not, or qemu exits first, that qemu is killed, the boot is retried with TCG
//! and the verdict is written to a [`Memo`], keyed by the host's boot id and the qemu
//! binary, so that the next call in the same host boot goes straight to TCG.
//!
//! Invariants: the memo is a hint, never a reason to fail; it lives in a directory of
//! the caller's own (0700, not a symlink) and is replaced by one rename; a memo of
//! another host boot or another qemu binary is ignored. `Accel::Kvm` insists: no
//! watchdog, no fallback, no memo.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Accel;

/// What a working guest prints first: the prefix of every line of kiln's init.
pub const ALIVE: &[u8] = b"kiln-init:";

/// Did the guest say its first word in `console` (bytes of it, any chunking that
/// keeps lines whole or a whole buffer)?
pub fn alive(console: &[u8]) -> bool {
    console.windows(ALIVE.len()).any(|w| w == ALIVE)
}

/// How long [`Accel::Auto`] waits for a KVM guest's first word by default. A working
/// KVM guest gets there in about a second; TCG, which needs no KVM, in a few.
pub const DEFAULT_START_LIMIT: Duration = Duration::from_secs(10);

/// The memo file's name in its directory.
const MEMO_NAME: &str = "kvm-verdict";

/// [`DEFAULT_START_LIMIT`], or `KILN_KVM_WAIT` seconds (a positive number, at most an
/// hour) when set.
pub fn start_limit() -> Duration {
    std::env::var("KILN_KVM_WAIT")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 3600.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_START_LIMIT)
}

/// Is `/dev/kvm` there and openable read-write by us?
pub fn kvm_usable() -> bool {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// How to start the first qemu of a boot or run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// KVM; with `watchdog`, kill it and fall back to TCG if the guest is not heard
    /// from within the limit.
    Kvm { watchdog: Option<Duration> },
    /// TCG, and why (for a `-v` line) when KVM was not even tried.
    Tcg { why: Option<String> },
}

impl Plan {
    pub fn accel(&self) -> &'static str {
        match self {
            Plan::Kvm { .. } => "kvm",
            Plan::Tcg { .. } => "tcg",
        }
    }
}

/// The first attempt for `accel` with this `qemu`, given what `memo` remembers.
pub fn plan(accel: Accel, qemu: &Path, memo: Option<&Memo>) -> Plan {
    match accel {
        Accel::Tcg => Plan::Tcg { why: None },
        Accel::Kvm => Plan::Kvm { watchdog: None },
        Accel::Auto if !kvm_usable() => Plan::Tcg {
            why: Some("/dev/kvm cannot be opened".into()),
        },
        Accel::Auto => match memo.and_then(|m| m.recall(qemu)) {
            Some(why) => Plan::Tcg {
                why: Some(format!("KVM failed earlier in this host boot ({why})")),
            },
            None => Plan::Kvm {
                watchdog: Some(start_limit()),
            },
        },
    }
}

/// The one line said when KVM is given up for TCG.
pub fn fallback_line(why: &str) -> String {
    format!("kiln: {why}; using TCG (slower); --accel kvm to insist")
}

/// Say that KVM was given up (`why`), as an info event of this module (target
/// `kiln_boot::accel`): kiln's command line shows it on a terminal and with `-v`, and
/// keeps it out of a redirected stderr that belongs to `kiln run`'s command.
pub fn announce_fallback(why: &str) {
    tracing::info!("{}", fallback_line(why));
}

/// Why a watched KVM boot was given up, for [`fallback_line`].
pub fn stalled(limit: Duration) -> String {
    format!(
        "KVM did not start the guest within {} s",
        fmt_secs(limit.as_secs_f64())
    )
}

fn fmt_secs(s: f64) -> String {
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s:.1}")
    }
}

/// The remembered verdict "KVM does not run guests on this host, with this qemu, until
/// the host reboots", kept as one small file in a private directory.
#[derive(Debug, Clone)]
pub struct Memo {
    dir: PathBuf,
}

impl Memo {
    /// A memo kept in `dir` (created 0700 when first written).
    pub fn new(dir: impl Into<PathBuf>) -> Memo {
        Memo { dir: dir.into() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(MEMO_NAME)
    }

    /// Why KVM failed earlier in this host boot with this qemu, if it did.
    pub fn recall(&self, qemu: &Path) -> Option<String> {
        let key = key(qemu)?;
        let text = read_private(&self.path()).ok()?;
        text.lines().find_map(|l| {
            let (k, why) = l.split_once(' ')?;
            (k == key).then(|| why.to_string())
        })
    }

    /// Remember that KVM failed (`why`) with this qemu. Best effort: a memo that cannot
    /// be written only costs the next call the same wait.
    pub fn remember(&self, qemu: &Path, why: &str) {
        if let Err(e) = self.try_remember(qemu, why) {
            tracing::debug!(
                "not remembering the KVM verdict in {}: {e}",
                self.dir.display()
            );
        }
    }

    fn try_remember(&self, qemu: &Path, why: &str) -> io::Result<()> {
        let Some(key) = key(qemu) else {
            return Ok(());
        };
        crate::vmlinux::private_dir(&self.dir)?;
        let boot = boot_id().unwrap_or_default();
        // Keep other qemu binaries' verdicts of this host boot; drop older boots'.
        let mut text = String::new();
        if let Ok(old) = read_private(&self.path()) {
            for l in old.lines() {
                if l.starts_with(&boot) && !l.starts_with(&key) {
                    text.push_str(l);
                    text.push('\n');
                }
            }
        }
        let why = why.replace(['\n', '\r'], " ");
        text.push_str(&format!("{key} {why}\n"));
        let mut tmp = tempfile::Builder::new()
            .prefix(".kvm-verdict.")
            .tempfile_in(&self.dir)?;
        tmp.write_all(text.as_bytes())?;
        tmp.persist(self.path()).map_err(|e| e.error)?;
        Ok(())
    }
}

/// `BOOT_ID:QEMU_ID`: this host boot and this qemu binary (where `PATH` finds it, its
/// inode, size and mtime, so an upgraded qemu is tried again).
fn key(qemu: &Path) -> Option<String> {
    let boot = boot_id()?;
    let exe = find_in_path(qemu)?;
    let m = fs::metadata(&exe).ok()?;
    let mut h = blake3::Hasher::new();
    h.update(exe.as_os_str().as_encoded_bytes());
    for n in [
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime() as u64,
        m.mtime_nsec() as u64,
    ] {
        h.update(&n.to_le_bytes());
    }
    Some(format!("{boot}:{}", &h.finalize().to_hex()[..16]))
}

fn boot_id() -> Option<String> {
    let s = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let s = s.trim();
    (!s.is_empty() && !s.contains(char::is_whitespace)).then(|| s.to_string())
}

/// Where `execvp` would find `prog`.
pub fn find_in_path(prog: &Path) -> Option<PathBuf> {
    if prog.as_os_str().as_encoded_bytes().contains(&b'/') {
        return fs::canonicalize(prog).ok();
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
        .and_then(|p| fs::canonicalize(p).ok())
}

/// A small file read only if it is a regular file of ours (not through a symlink).
fn read_private(path: &Path) -> io::Result<String> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    let m = f.metadata()?;
    if !m.is_file() || m.uid() != rustix::process::geteuid().as_raw() || m.len() > 64 * 1024 {
        return Err(io::Error::other("not a small private file"));
    }
    io::read_to_string(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memo_is_per_qemu_and_survives_others() {
        let d = tempfile::tempdir().unwrap();
        let memo = Memo::new(d.path().join("state"));
        let a = d.path().join("qemu-a");
        let b = d.path().join("qemu-b");
        for p in [&a, &b] {
            fs::write(p, "#!/bin/sh\n").unwrap();
        }
        assert_eq!(memo.recall(&a), None);
        memo.remember(&a, "KVM did not start the guest within 10 s");
        assert_eq!(
            memo.recall(&a).as_deref(),
            Some("KVM did not start the guest within 10 s")
        );
        assert_eq!(memo.recall(&b), None);
        memo.remember(&b, "qemu said: boom\nsecond line");
        assert_eq!(
            memo.recall(&b).as_deref(),
            Some("qemu said: boom second line")
        );
        assert!(memo.recall(&a).is_some(), "b's verdict replaced a's");
        let mode = fs::metadata(d.path().join("state")).unwrap().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Another binary at the same path (an upgrade) is tried again.
        fs::write(&a, "#!/bin/sh\n# upgraded\n").unwrap();
        assert_eq!(memo.recall(&a), None);
    }

    #[test]
    fn a_memo_through_a_symlink_or_of_another_boot_is_ignored() {
        let d = tempfile::tempdir().unwrap();
        let q = d.path().join("qemu");
        fs::write(&q, "x").unwrap();
        let state = d.path().join("state");
        fs::create_dir(&state).unwrap();
        let key = key(&q).unwrap();
        let elsewhere = d.path().join("elsewhere");
        fs::write(&elsewhere, format!("{key} planted\n")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, state.join(MEMO_NAME)).unwrap();
        let memo = Memo::new(&state);
        assert_eq!(memo.recall(&q), None, "followed a symlink");
        fs::remove_file(state.join(MEMO_NAME)).unwrap();
        fs::write(
            state.join(MEMO_NAME),
            format!(
                "00000000-another-boot:{} old\n",
                key.split_once(':').unwrap().1
            ),
        )
        .unwrap();
        assert_eq!(memo.recall(&q), None, "took another boot's verdict");
        memo.remember(&q, "now");
        let text = fs::read_to_string(state.join(MEMO_NAME)).unwrap();
        assert!(!text.contains("another-boot"), "{text}");
    }

    #[test]
    fn a_memo_dir_writable_by_others_is_not_used() {
        let d = tempfile::tempdir().unwrap();
        let q = d.path().join("qemu");
        fs::write(&q, "x").unwrap();
        let state = d.path().join("state");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let memo = Memo::new(&state);
        memo.remember(&q, "x");
        assert!(!state.join(MEMO_NAME).exists());
    }

    #[test]
    fn the_plan_follows_the_choice_and_the_memo() {
        let d = tempfile::tempdir().unwrap();
        let q = d.path().join("qemu");
        fs::write(&q, "x").unwrap();
        assert_eq!(plan(Accel::Tcg, &q, None), Plan::Tcg { why: None });
        assert_eq!(plan(Accel::Kvm, &q, None), Plan::Kvm { watchdog: None });
        let memo = Memo::new(d.path().join("s"));
        memo.remember(&q, "KVM did not start the guest within 10 s");
        // Insisting ignores the memo.
        assert_eq!(
            plan(Accel::Kvm, &q, Some(&memo)),
            Plan::Kvm { watchdog: None }
        );
        match plan(Accel::Auto, &q, Some(&memo)) {
            Plan::Tcg { why: Some(w) } => assert!(w.contains("within 10 s"), "{w}"),
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn stall_lines_read_well() {
        assert_eq!(
            fallback_line(&stalled(Duration::from_secs(10))),
            "kiln: KVM did not start the guest within 10 s; using TCG (slower); --accel kvm to insist"
        );
        assert_eq!(
            stalled(Duration::from_millis(2500)),
            "KVM did not start the guest within 2.5 s"
        );
    }
}
