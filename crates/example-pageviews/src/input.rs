//! The job's input: a directory of append-only text files, one page view per line.
//!
//! A line is `PAGE [MILLIS]`: the page is the first blank-separated field (the key), the view
//! time in milliseconds the second (0 when missing or not a number). Blank lines are skipped.
//! A line counts once its `\n` is written, so a writer may append in any chunks. Files whose
//! name begins with `.` are ignored (write a file under a hidden name, then rename it). Files
//! must only grow: a byte offset into a file is the job's source position.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;

use regroup::error::{Error, Result};

/// Page and view time of one line; `None` for a blank line.
pub fn parse_line(line: &[u8]) -> Option<(&[u8], u64)> {
    let mut fields = line
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty());
    let page = fields.next()?;
    let millis = fields
        .next()
        .and_then(|f| std::str::from_utf8(f).ok())
        .and_then(|f| f.parse().ok())
        .unwrap_or(0);
    Some((page, millis))
}

/// One input file: its name in the input directory and its current length in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputFile {
    /// File name (UTF-8, not hidden).
    pub name: String,
    /// Length in bytes when listed.
    pub len: u64,
}

/// The input files of `dir`, sorted by name: regular files whose name is UTF-8 and does not
/// begin with `.`.
pub fn list(dir: &Path) -> Result<Vec<InputFile>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(Error::io("read directory", dir))? {
        let entry = entry.map_err(Error::io("read directory", dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let meta = entry.metadata().map_err(Error::io("stat", entry.path()))?;
        if meta.is_file() {
            out.push(InputFile {
                name,
                len: meta.len(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Complete lines read from a file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Chunk {
    /// Each line with the byte offset where it begins (the `\n` stripped).
    pub lines: Vec<(u64, Vec<u8>)>,
    /// Offset just after the last complete line read (the start offset if none).
    pub end: u64,
}

/// Up to `max_lines` complete lines of `path` from byte offset `from` (at a line start). A last
/// line without its `\n` yet is left for later.
pub fn read_lines(path: &Path, from: u64, max_lines: usize) -> Result<Chunk> {
    let mut file = File::open(path).map_err(Error::io("open", path))?;
    file.seek(SeekFrom::Start(from))
        .map_err(Error::io("seek", path))?;
    let mut reader = BufReader::new(file);
    let mut chunk = Chunk {
        lines: Vec::new(),
        end: from,
    };
    while chunk.lines.len() < max_lines {
        let mut line = Vec::new();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(Error::io("read", path))?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        line.pop();
        chunk.lines.push((chunk.end, line));
        chunk.end += n as u64;
    }
    Ok(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_to_page_and_millis() {
        assert_eq!(parse_line(b"/home 120"), Some((&b"/home"[..], 120)));
        assert_eq!(parse_line(b"  /a\t7  extra"), Some((&b"/a"[..], 7)));
        assert_eq!(parse_line(b"/b"), Some((&b"/b"[..], 0)));
        assert_eq!(parse_line(b"/b x"), Some((&b"/b"[..], 0)));
        assert_eq!(parse_line(b"/b -3"), Some((&b"/b"[..], 0)));
        assert_eq!(parse_line(b" \t\r"), None);
        assert_eq!(parse_line(b""), None);
    }

    #[test]
    fn read_lines_stops_before_an_unterminated_line_and_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in");
        std::fs::write(&path, b"a 1\nbb 2\nccc 3\npartial").unwrap();
        let all = read_lines(&path, 0, 100).unwrap();
        assert_eq!(
            all.lines,
            vec![
                (0, b"a 1".to_vec()),
                (4, b"bb 2".to_vec()),
                (9, b"ccc 3".to_vec())
            ]
        );
        assert_eq!(all.end, 15);
        let two = read_lines(&path, 0, 2).unwrap();
        assert_eq!(two.lines.len(), 2);
        assert_eq!(two.end, 9);
        let rest = read_lines(&path, 9, 100).unwrap();
        assert_eq!(rest.lines, vec![(9, b"ccc 3".to_vec())]);
        let none = read_lines(&path, 15, 100).unwrap();
        assert_eq!(
            none,
            Chunk {
                lines: vec![],
                end: 15
            }
        );
    }

    #[test]
    fn list_skips_hidden_files_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.log"), b"x\n").unwrap();
        std::fs::write(dir.path().join("a.log"), b"").unwrap();
        std::fs::write(dir.path().join(".c.tmp"), b"y\n").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let files = list(dir.path()).unwrap();
        assert_eq!(
            files,
            vec![
                InputFile {
                    name: "a.log".into(),
                    len: 0
                },
                InputFile {
                    name: "b.log".into(),
                    len: 2
                }
            ]
        );
    }
}
