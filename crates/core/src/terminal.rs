//! Progress bars for commands run by hand. indicatif draws them only while stderr is a
//! terminal, so logs and pipes keep their line-oriented output.

use std::borrow::Cow;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `total` bytes (0: unknown yet; set it with `set_length`).
pub fn bytes(total: u64, message: impl Into<Cow<'static, str>>) -> ProgressBar {
    bar(
        total,
        "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
        message,
    )
}

/// A bar over `total` items.
pub fn items(total: u64, message: impl Into<Cow<'static, str>>) -> ProgressBar {
    bar(total, "{msg} [{bar:30}] {pos}/{len} eta {eta}", message)
}

/// A spinner for work whose size is unknown: it shows that time passes.
pub fn spinner(message: impl Into<Cow<'static, str>>) -> ProgressBar {
    let s = ProgressBar::new_spinner().with_message(message);
    s.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("a valid template"),
    );
    s.enable_steady_tick(Duration::from_millis(120));
    s
}

fn bar(total: u64, template: &str, message: impl Into<Cow<'static, str>>) -> ProgressBar {
    let b = ProgressBar::new(total).with_message(message);
    b.set_style(
        ProgressStyle::with_template(template)
            .expect("a valid template")
            .progress_chars("=> "),
    );
    b
}
