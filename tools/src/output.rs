//! Output, progress and exit codes shared by every command.
//!
//! Exit codes: 0 when all is well, 1 when the data is bad (a damaged ledger, a seed that does
//! not verify), 2 for usage and I/O errors. A closed stdout (`spore dump | head`) ends the
//! command quietly with 0.

use std::io::{IsTerminal, Write};
use std::path::Path;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mycnet_spores::LedgerError;

/// Why a command failed, and so its exit code.
#[derive(Debug)]
pub(crate) enum CliError {
    /// The data is bad; the command already printed what and where (exit 1).
    Reported,
    /// The data is bad (exit 1).
    BadData(String),
    /// Wrong arguments (exit 2).
    Usage(String),
    /// Could not read, write or reach something (exit 2).
    Io(String),
    /// Stdout was closed by the reader; stop quietly (exit 0).
    BrokenPipe,
}

impl CliError {
    /// A usage error.
    pub(crate) fn usage(msg: impl Into<String>) -> Self {
        CliError::Usage(msg.into())
    }

    /// An I/O error on `path`.
    pub(crate) fn io(path: &Path, e: std::io::Error) -> Self {
        CliError::Io(format!("{}: {e}", path.display()))
    }

    /// Classifies a ledger error: damage is bad data, the rest is I/O.
    pub(crate) fn ledger(e: LedgerError) -> Self {
        match e {
            LedgerError::Corrupt { .. } | LedgerError::WrongNetwork { .. } | LedgerError::Damaged { .. } => {
                CliError::BadData(e.to_string())
            }
            e => CliError::Io(e.to_string()),
        }
    }

    /// The process exit code.
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            CliError::BrokenPipe => 0,
            CliError::Reported | CliError::BadData(_) => 1,
            CliError::Usage(_) | CliError::Io(_) => 2,
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            CliError::BrokenPipe
        } else {
            CliError::Io(e.to_string())
        }
    }
}

/// The result of a command.
pub(crate) type CliResult = Result<(), CliError>;

/// Buffered stdout, human or JSON.
pub(crate) struct Out {
    /// Print JSON instead of text.
    pub json: bool,
    w: std::io::BufWriter<std::io::Stdout>,
}

impl Out {
    /// Stdout, in text or JSON.
    pub(crate) fn new(json: bool) -> Self {
        Out { json, w: std::io::BufWriter::new(std::io::stdout()) }
    }

    /// One line of text.
    pub(crate) fn line(&mut self, s: impl AsRef<str>) -> CliResult {
        writeln!(self.w, "{}", s.as_ref())?;
        Ok(())
    }

    /// One JSON document on one line.
    pub(crate) fn json_line<T: serde::Serialize + ?Sized>(&mut self, v: &T) -> CliResult {
        serde_json::to_writer(&mut self.w, v).map_err(|e| match e.io_error_kind() {
            Some(std::io::ErrorKind::BrokenPipe) => CliError::BrokenPipe,
            _ => CliError::Io(e.to_string()),
        })?;
        writeln!(self.w)?;
        Ok(())
    }

    /// Flushes what was written.
    pub(crate) fn flush(&mut self) -> CliResult {
        self.w.flush()?;
        Ok(())
    }

    /// The writer, for code that prints through `Write`.
    pub(crate) fn writer(&mut self) -> &mut dyn Write {
        &mut self.w
    }
}

/// A progress bar on stderr when it is a terminal and the output is for humans; hidden
/// otherwise.
pub(crate) fn progress_bar(o: &Out, total: u64, what: &str) -> ProgressBar {
    if o.json || !std::io::stderr().is_terminal() || total < 10_000 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, {eta})")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}
