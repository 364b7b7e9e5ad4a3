//! The progress display of long commands on a terminal: one spinner line on stderr
//! showing the current stage (the `info` events the pipeline already emits for `-v`,
//! such as "ext2: writing …" or "6896 files, after munging") and the time so far.
//!
//! It is shown only when stderr is a terminal and the user asked for neither `-v`
//! (which prints the same events as lines) nor `--json`; piped output never contains a
//! control sequence. The line is cleared when the command ends, so what stays on the
//! screen is the command's own output.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

static BAR: OnceLock<ProgressBar> = OnceLock::new();

/// Start the spinner; returns the layer that feeds it.
pub fn layer() -> ProgressLayer {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>3} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    let _ = BAR.set(bar.clone());
    ProgressLayer { bar }
}

/// Remove the spinner line (no-op when there is none).
pub fn finish() {
    if let Some(b) = BAR.get() {
        b.finish_and_clear();
    }
}

pub struct ProgressLayer {
    bar: ProgressBar,
}

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        }
    }
}

impl<S: Subscriber> Layer<S> for ProgressLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::INFO {
            return;
        }
        let mut m = Message(String::new());
        event.record(&mut m);
        if level <= Level::WARN {
            // Warnings are printed by the fmt layer; keep them readable above the bar.
            self.bar.suspend(|| {});
            return;
        }
        self.bar.set_message(m.0);
    }
}
