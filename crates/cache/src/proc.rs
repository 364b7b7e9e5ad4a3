//! Process identity: a PID plus its start time, so a reused PID is not mistaken for the
//! process that made a pin.

/// A live process as named in pin names: PID and start time (clock ticks after boot,
/// field 22 of `/proc/PID/stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessId {
    pub pid: u32,
    pub start: u64,
}

impl ProcessId {
    /// The identity of a running process, or `None` if it does not exist or has already
    /// exited (a zombie counts as gone: it will never use its files again).
    pub fn of(pid: u32) -> Option<ProcessId> {
        process_start_time(pid).map(|start| ProcessId { pid, start })
    }

    /// This process.
    pub fn current() -> Option<ProcessId> {
        ProcessId::of(std::process::id())
    }

    /// True while the very process this identity names is running.
    pub fn is_alive(&self) -> bool {
        process_start_time(self.pid) == Some(self.start)
    }
}

/// Field 22 (`starttime`) of `/proc/PID/stat`; `None` if the process is gone or a zombie.
pub fn process_start_time(pid: u32) -> Option<u64> {
    if pid == 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// The command name (field 2) is in parentheses and may itself contain spaces and
/// parentheses, so fields are counted from the last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // `state` is field 3; field 22 is 19 further on.
    fields.nth(18)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_odd_command_names() {
        let line = "123 (a) b (c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 4242 20 21";
        assert_eq!(parse_stat(line), Some(4242));
        let zombie = "123 (x) Z 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 4242 20";
        assert_eq!(parse_stat(zombie), None);
    }

    #[test]
    fn current_process_is_alive_and_pid_zero_is_not() {
        let me = ProcessId::current().unwrap();
        assert!(me.is_alive());
        assert!(
            !ProcessId {
                pid: me.pid,
                start: me.start + 1
            }
            .is_alive()
        );
        assert!(ProcessId::of(0).is_none());
    }
}
