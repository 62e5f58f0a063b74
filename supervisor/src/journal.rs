//! Log lines for the systemd journal: when stderr is the journal's stream (`JOURNAL_STREAM`
//! names its device and inode), each line opens with its syslog priority (`<3>` error, `<4>`
//! warning, `<6>` info, `<7>` debug), which journald strips and keeps as the priority.

use std::fmt;
use std::os::unix::fs::MetadataExt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Whether stderr is the journal's stream for this process.
pub fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// The syslog priority prefix of a level.
pub fn prefix(level: Level) -> &'static str {
    match level {
        Level::ERROR => "<3>",
        Level::WARN => "<4>",
        Level::INFO => "<6>",
        _ => "<7>",
    }
}

/// A format that writes each event as `F` does, after its priority prefix.
pub struct Prefixed<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for Prefixed<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        writer.write_str(prefix(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// A worker's log line that opens with a syslog prefix (`<0>` to `<7>`, as sd-daemon(3)
/// describes): its level, and the text after the prefix.
pub fn worker_level(line: &str) -> Option<(Level, &str)> {
    let bytes = line.as_bytes();
    if bytes.len() < 3 || bytes[0] != b'<' || bytes[2] != b'>' {
        return None;
    }
    let level = match bytes[1] {
        b'0'..=b'3' => Level::ERROR,
        b'4' => Level::WARN,
        b'5' | b'6' => Level::INFO,
        b'7' => Level::DEBUG,
        _ => return None,
    };
    Some((level, &line[3..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_prefixes_map_to_levels() {
        assert_eq!(
            worker_level("<3>disk gone"),
            Some((Level::ERROR, "disk gone"))
        );
        assert_eq!(worker_level("<4>slow"), Some((Level::WARN, "slow")));
        assert_eq!(worker_level("<6>loaded"), Some((Level::INFO, "loaded")));
        assert_eq!(worker_level("<7>x"), Some((Level::DEBUG, "x")));
        assert_eq!(worker_level("<9>x"), None);
        assert_eq!(worker_level("plain"), None);
        assert_eq!(worker_level("<4"), None);
        assert_eq!(prefix(Level::WARN), "<4>");
    }
}
