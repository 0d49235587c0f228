//! The container log: Docker's json-file format, one JSON object per line of output.
//!
//! Takes bytes read by the shim from the container's stdout and stderr pipes, gives lines like
//! `{"log":"hello\n","stream":"stdout","time":"2026-11-25T21:00:00.123456789Z"}` in the log
//! file, rotated by size into `<file>.1` … `<file>.N`. Partial lines are buffered per stream
//! and cut at 16 KiB as Docker does. Used by `shim`; `container` exposes the path and a reader.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Longest line kept whole; longer output is split (Docker's limit too).
const MAX_LINE: usize = 16 * 1024;

/// One log record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// The text, with its trailing newline when it had one.
    pub log: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// RFC 3339 with nanoseconds, UTC.
    pub time: String,
}

/// Which pipe a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Appends JSON lines to a file with size-based rotation.
pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: Option<u64>,
    max_files: u32,
    pending: [Vec<u8>; 2],
}

impl LogWriter {
    pub fn open(path: &Path, max_size: Option<u64>, max_files: u32) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            size,
            max_size,
            max_files: max_files.max(1),
            pending: [Vec::new(), Vec::new()],
        })
    }

    /// Adds output; complete lines are written at once.
    pub fn push(&mut self, stream: Stream, mut data: &[u8]) -> std::io::Result<()> {
        let idx = stream as usize;
        while !data.is_empty() {
            let room = MAX_LINE - self.pending[idx].len();
            let (chunk, rest) = match data.iter().position(|b| *b == b'\n') {
                Some(nl) if nl < room => data.split_at(nl + 1),
                _ if data.len() >= room => data.split_at(room),
                _ => (data, &[][..]),
            };
            self.pending[idx].extend_from_slice(chunk);
            data = rest;
            let full = self.pending[idx].len() >= MAX_LINE || self.pending[idx].ends_with(b"\n");
            if full {
                let line = std::mem::take(&mut self.pending[idx]);
                self.write_record(stream, &line)?;
            }
        }
        Ok(())
    }

    /// Writes out any partial line (at EOF of a stream).
    pub fn flush_stream(&mut self, stream: Stream) -> std::io::Result<()> {
        let idx = stream as usize;
        if !self.pending[idx].is_empty() {
            let line = std::mem::take(&mut self.pending[idx]);
            self.write_record(stream, &line)?;
        }
        Ok(())
    }

    fn write_record(&mut self, stream: Stream, line: &[u8]) -> std::io::Result<()> {
        let rec = LogLine {
            log: String::from_utf8_lossy(line).into_owned(),
            stream: stream.name().to_string(),
            time: OffsetDateTime::now_utc()
                .format(&Rfc3339)
                .unwrap_or_default(),
        };
        let mut bytes = serde_json::to_vec(&rec).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        if let Some(max) = self.max_size {
            if self.size > 0 && self.size + bytes.len() as u64 > max {
                self.rotate()?;
            }
        }
        self.file.write_all(&bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let name = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        for n in (1..self.max_files).rev() {
            let _ = std::fs::rename(name(n), name(n + 1));
        }
        std::fs::rename(&self.path, name(1))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// Reads every record of a log file (current file only).
pub fn read_log(path: &Path) -> std::io::Result<Vec<LogLine>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.log");
        let mut w = LogWriter::open(&p, None, 1).unwrap();
        w.push(Stream::Stdout, b"a\nb").unwrap();
        w.push(Stream::Stderr, b"err\n").unwrap();
        w.push(Stream::Stdout, b"c\n").unwrap();
        w.push(Stream::Stdout, b"tail").unwrap();
        w.flush_stream(Stream::Stdout).unwrap();
        let recs = read_log(&p).unwrap();
        let got: Vec<(&str, &str)> = recs
            .iter()
            .map(|r| (r.stream.as_str(), r.log.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("stdout", "a\n"),
                ("stderr", "err\n"),
                ("stdout", "bc\n"),
                ("stdout", "tail")
            ]
        );
        assert!(
            recs[0].time.ends_with('Z') && recs[0].time.len() >= 28,
            "{}",
            recs[0].time
        );
    }

    #[test]
    fn rotates_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.log");
        let mut w = LogWriter::open(&p, Some(300), 2).unwrap();
        for i in 0..20 {
            w.push(Stream::Stdout, format!("line {i}\n").as_bytes())
                .unwrap();
        }
        assert!(std::fs::metadata(&p).unwrap().len() <= 300);
        assert!(dir.path().join("c.log.1").exists());
        assert!(dir.path().join("c.log.2").exists());
        assert!(!dir.path().join("c.log.3").exists());
        assert_eq!(read_log(&p).unwrap().last().unwrap().log, "line 19\n");
    }

    #[test]
    fn long_lines_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.log");
        let mut w = LogWriter::open(&p, None, 1).unwrap();
        w.push(Stream::Stdout, &vec![b'x'; MAX_LINE + 10]).unwrap();
        w.flush_stream(Stream::Stdout).unwrap();
        let recs = read_log(&p).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].log.len(), MAX_LINE);
    }
}
