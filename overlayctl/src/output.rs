//! Rendering answers: aligned tables for people, JSON for scripts. What every noun's output
//! shares lives here; each noun renders its own answers in its module under [`crate::cmd`].
//!
//! The JSON shape is overlayctl's own (modes and states as words, addresses as strings), not
//! the protobuf encoding, so scripts do not depend on enum numbers.
//!
//! Everything goes through [`Out`], never `print!`: a write that fails comes back as an
//! `io::Error` for `main` to report in one line, instead of the panic `println!` makes of it.

use std::io::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::cli::Format;

/// Where answers go, and in which format.
pub struct Out {
    format: Format,
    w: Box<dyn Write>,
}

impl Out {
    /// Standard output, buffered; a reader that goes away early ends the output quietly
    /// (see [`ReaderGone`]).
    pub fn stdout(format: Format) -> Self {
        Self::new(format, io::BufWriter::new(ReaderGone::new(io::stdout())))
    }

    pub fn new(format: Format, w: impl Write + 'static) -> Self {
        Self {
            format,
            w: Box::new(w),
        }
    }

    pub(crate) fn json(&self) -> bool {
        self.format == Format::Json
    }

    pub(crate) fn print_json(&mut self, v: &Value) -> io::Result<()> {
        let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
        writeln!(self.w, "{text}")
    }

    /// Writes out what is still buffered: a full disk shows up here at the latest.
    pub fn finish(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.w.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

/// A writer for which a reader that closed its end (`overlayctl network ls | head -1`) is
/// not an error: like any Unix filter, overlayctl stops writing and says nothing, and the
/// command still exits with its own outcome (a failing `doctor | head -1` still exits 1).
/// Every other error (a full disk, an I/O error) is returned as it is.
pub struct ReaderGone<W> {
    inner: W,
    gone: bool,
}

impl<W> ReaderGone<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, gone: false }
    }
}

impl<W: Write> Write for ReaderGone<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.gone {
            return Ok(buf.len());
        }
        match self.inner.write(buf) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.gone = true;
                Ok(buf.len())
            }
            other => other,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.gone {
            return Ok(());
        }
        match self.inner.flush() {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.gone = true;
                Ok(())
            }
            other => other,
        }
    }
}

/// Writes rows under a header with columns padded to the widest cell.
pub(crate) fn table(out: &mut Out, header: &[&str], rows: Vec<Vec<String>>) -> io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut Out, cells: Vec<String>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}   "));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(out, header.iter().map(|h| h.to_string()).collect())?;
    for row in rows {
        line(out, row)?;
    }
    Ok(())
}

/// An empty cell as `-`.
pub(crate) fn or_dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.to_string() }
}

/// How long ago a unix time in milliseconds was: `12s ago`, `5m ago`, `never`.
pub(crate) fn ago(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "never".into();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let s = ((now - unix_ms) / 1000).max(0);
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::host;
    use overlay_proto::v1 as pb;

    /// Fails every write with `kind`.
    struct Failing(io::ErrorKind);

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(self.0.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(self.0.into())
        }
    }

    #[test]
    fn a_closed_pipe_is_quiet_and_other_errors_come_back() {
        let mut gone = Out::new(Format::Table, ReaderGone::new(Failing(io::ErrorKind::BrokenPipe)));
        host::print_list(&mut gone, &[pb::Host::default()]).expect("a closed pipe is no error");
        gone.finish().expect("nor at the end");

        let mut full = Out::new(Format::Json, ReaderGone::new(Failing(io::ErrorKind::StorageFull)));
        let err = host::print_list(&mut full, &[]).expect_err("a full disk is an error");
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
    }
}
