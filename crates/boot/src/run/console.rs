//! Bounded keeping of what qemu prints: the guest's serial console and qemu's own
//! stderr. A guest can print without end, so only the last [`TAIL`] bytes are kept,
//! plus a kernel panic report whole (from a few lines before "Kernel panic", at most
//! [`PANIC_CAP`] bytes) however much follows it; memory stays bounded whatever the
//! guest does.

use std::collections::VecDeque;

/// Bytes of the end kept.
pub(super) const TAIL: usize = 64 * 1024;
/// Longest panic report kept.
pub(super) const PANIC_CAP: usize = 16 * 1024;
/// Lines before the panic line kept with it.
const BEFORE: usize = 8;
/// A line is looked at (for the panic and the init's first word) up to this long.
const LINE_CAP: usize = 1024;

#[derive(Default)]
pub(super) struct Console {
    tail: VecDeque<u8>,
    /// The current line (up to LINE_CAP bytes) and the last few whole ones.
    line: Vec<u8>,
    recent: VecDeque<Vec<u8>>,
    panic: Option<Vec<u8>>,
    alive: bool,
}

impl Console {
    pub(super) fn push(&mut self, b: &[u8]) {
        // The tail: drop from the front what the new bytes push out.
        let keep = b.len().min(TAIL);
        let over = (self.tail.len() + keep).saturating_sub(TAIL);
        self.tail.drain(..over);
        self.tail.extend(&b[b.len() - keep..]);
        for &c in b {
            if c == b'\n' {
                self.end_line();
            } else if c != b'\r' && self.line.len() < LINE_CAP {
                self.line.push(c);
            }
        }
        if !self.alive && crate::accel::alive(&self.line) {
            self.alive = true;
        }
    }

    fn end_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        if !self.alive && crate::accel::alive(&line) {
            self.alive = true;
        }
        match &mut self.panic {
            Some(p) if p.len() < PANIC_CAP => {
                p.extend_from_slice(&line[..line.len().min(PANIC_CAP - p.len())]);
                p.push(b'\n');
            }
            Some(_) => {}
            None if contains(&line, b"Kernel panic") => {
                let mut p = Vec::new();
                for l in &self.recent {
                    p.extend_from_slice(l);
                    p.push(b'\n');
                }
                p.extend_from_slice(&line);
                p.push(b'\n');
                self.panic = Some(p);
            }
            None => {}
        }
        if self.recent.len() == BEFORE {
            self.recent.pop_front();
        }
        self.recent.push_back(line);
    }

    /// Did kiln's init say its first word (see [`crate::accel::ALIVE`])?
    pub(super) fn alive(&self) -> bool {
        self.alive
    }

    /// The kept end, as text without CRs.
    pub(super) fn text(&self) -> String {
        let (a, b) = self.tail.as_slices();
        let mut v = a.to_vec();
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).replace('\r', "")
    }

    /// The panic report, if the kernel panicked.
    pub(super) fn panic(&self) -> Option<String> {
        self.panic
            .as_ref()
            .map(|p| String::from_utf8_lossy(p).trim_end().to_string())
    }

    /// The last `n` lines of the kept end; empty when the guest printed nothing but
    /// blanks.
    pub(super) fn last_lines(&self, n: usize) -> String {
        let t = self.text();
        if t.trim().is_empty() {
            return String::new();
        }
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_with_the_panic_whole() {
        let mut c = Console::default();
        for i in 0..20_000 {
            c.push(format!("[ {i}.0] line {i} of a chatty guest\r\n").as_bytes());
        }
        assert!(c.text().len() <= TAIL);
        assert!(c.text().ends_with("line 19999 of a chatty guest\n"));
        assert!(!c.text().contains('\r'));
        assert_eq!(c.panic(), None);
        c.push(b"[ 9.0] Kernel panic - not syncing: Attempted to kill init!\n");
        for i in 0..50_000 {
            c.push(format!("after the panic {i}\n").as_bytes());
        }
        let p = c.panic().unwrap_or_default();
        assert!(p.len() <= PANIC_CAP + 8 * LINE_CAP, "{}", p.len());
        assert!(p.contains("line 19999") && p.contains("Attempted to kill init"));
        assert!(!c.text().contains("Kernel panic"), "the tail moved on");
        assert_eq!(c.last_lines(1), "after the panic 49999");
    }

    #[test]
    fn first_word_in_any_chunking() {
        let mut c = Console::default();
        c.push(b"SeaBIOS\r\nkiln-in");
        assert!(!c.alive());
        c.push(b"it: started");
        assert!(c.alive());
        let mut c = Console::default();
        c.push(b"  \r\n");
        assert_eq!(c.last_lines(5), "");
    }
}
