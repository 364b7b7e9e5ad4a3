//! The ranges kiln accepts for a VM's memory, CPUs and timeout, checked before qemu
//! starts, with errors that say the range.
//!
//! Why these bounds: a distribution kernel and kiln's initrd do not come up in less
//! than about 96 MiB (at 64 MiB the guest hangs unpacking them, below it qemu exits
//! without a word), so the floor is 128 MiB; 1 TiB and 255 CPUs are what qemu's `pc`
//! machine takes; a timeout is a positive number of seconds up to a year (a float that
//! large cannot become a `Duration`, and no run is meant to wait longer).

use std::ops::RangeInclusive;
use std::time::Duration;

/// Guest memory, MiB.
pub const MEMORY_MIB: RangeInclusive<u32> = 128..=1 << 20;
/// Guest CPUs.
pub const CPUS: RangeInclusive<u32> = 1..=255;
/// The longest timeout, seconds (a year).
pub const MAX_TIMEOUT_SECS: f64 = 365.0 * 24.0 * 3600.0;

/// A value out of its range; the message names the option and the range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LimitError {
    #[error(
        "--memory {0}: give {lo} to {hi} MiB (the kernel and initrd need about 100 MiB)",
        lo = MEMORY_MIB.start(),
        hi = MEMORY_MIB.end()
    )]
    Memory(u32),
    #[error("--cpus {0}: give {lo} to {hi}", lo = CPUS.start(), hi = CPUS.end())]
    Cpus(u32),
    #[error(
        "--timeout {0}: give a number of seconds above 0 and at most {MAX_TIMEOUT_SECS} (a year)"
    )]
    Timeout(f64),
}

pub fn memory(mib: u32) -> Result<u32, LimitError> {
    if MEMORY_MIB.contains(&mib) {
        Ok(mib)
    } else {
        Err(LimitError::Memory(mib))
    }
}

pub fn cpus(n: u32) -> Result<u32, LimitError> {
    if CPUS.contains(&n) {
        Ok(n)
    } else {
        Err(LimitError::Cpus(n))
    }
}

/// Seconds as a `Duration` (never panics: NaN, infinities, negatives, values that round
/// to zero and values above a year are refused).
pub fn timeout(secs: f64) -> Result<Duration, LimitError> {
    if secs > 0.0 && secs <= MAX_TIMEOUT_SECS {
        Duration::try_from_secs_f64(secs)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or(LimitError::Timeout(secs))
    } else {
        Err(LimitError::Timeout(secs))
    }
}

/// A `Duration` timeout in range.
pub fn timeout_duration(t: Duration) -> Result<Duration, LimitError> {
    if t.is_zero() || t.as_secs_f64() > MAX_TIMEOUT_SECS {
        Err(LimitError::Timeout(t.as_secs_f64()))
    } else {
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ranges_and_messages() {
        assert_eq!(
            memory(32).unwrap_err().to_string(),
            "--memory 32: give 128 to 1048576 MiB (the kernel and initrd need about 100 MiB)"
        );
        assert!(memory(0).is_err() && memory(128).is_ok() && memory((1 << 20) + 1).is_err());
        assert_eq!(cpus(0).unwrap_err().to_string(), "--cpus 0: give 1 to 255");
        assert!(cpus(1).is_ok() && cpus(256).is_err());
        for bad in [1e300, -1.0, 0.0, f64::NAN, f64::INFINITY, 4e7] {
            let e = timeout(bad).unwrap_err().to_string();
            assert!(e.contains("at most 31536000 (a year)"), "{e}");
        }
        assert_eq!(timeout(1.5).unwrap(), Duration::from_millis(1500));
        assert!(timeout(1e-12).is_err());
        assert!(timeout_duration(Duration::ZERO).is_err());
        assert!(timeout_duration(Duration::MAX).is_err());
    }
}
