//! Errors in files operators write (topology, rules), pointing at the
//! offending text: `file:line:column: reason`, the one-line form editors
//! and CI annotations understand.
//!
//! One type and one position computation for every checker that reads a
//! TOML file with spans (the topology checker, the knowledge base), so
//! columns are counted the same way everywhere.

use std::ops::Range;

/// Why a file (or a value in it) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {reason}")]
pub struct SourceError {
    /// The file name as the caller gave it, for the operator's editor.
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// What is wrong and, where it helps, what was expected instead.
    pub reason: String,
}

/// 1-based line and column (in characters) of byte `offset` of `text`; an
/// offset past the end points just after the last character.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    // A span from a parser always starts on a character boundary; this only
    // keeps a wrong offset from panicking.
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// A file's name and text, to turn byte spans into [`SourceError`]s. Knows
/// where each line starts, so a checker that reports the line of every
/// rule of a large file does not rescan the text each time.
#[derive(Debug, Clone)]
pub struct Source<'a> {
    pub file: &'a str,
    pub text: &'a str,
    /// Byte offset of the start of each line.
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    pub fn new(file: &'a str, text: &'a str) -> Source<'a> {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Source {
            file,
            text,
            line_starts,
        }
    }

    /// 1-based line and column (in characters) of byte `offset`, as
    /// [`line_column`] computes them.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        // The last line starting at or before `offset`.
        let line = self.line_starts.partition_point(|start| *start <= offset);
        let start = self.line_starts[line.saturating_sub(1)];
        (line, self.text[start..offset].chars().count() + 1)
    }

    /// An error at the start of `span`.
    pub fn error(&self, span: Range<usize>, reason: impl Into<String>) -> SourceError {
        let (line, column) = self.position(span.start);
        SourceError {
            file: self.file.to_owned(),
            line,
            column,
            reason: reason.into(),
        }
    }

    /// The line `span` starts on (for "first defined at line N").
    pub fn line(&self, span: &Range<usize>) -> usize {
        self.position(span.start).0
    }

    /// A parser error from the `toml` crate, on one line: multi-line parser
    /// messages would break the `file:line:column` form.
    pub fn toml_error(&self, error: &toml::de::Error) -> SourceError {
        let reason = error.message().trim().replace('\n', "; ");
        self.error(error.span().unwrap_or(0..0), reason)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 4), (1, 5));
        assert_eq!(line_column(text, 6), (2, 1));
        // `é` is two bytes and one column.
        let quote = text.find('"').unwrap();
        assert_eq!(line_column(text, quote), (2, 6));
        assert_eq!(line_column(text, 10_000), (3, 1));
        // Inside a character: the character's own position.
        assert_eq!(line_column(text, 8), (2, 2));
        // The indexed form agrees at every offset.
        let source = Source::new("f", text);
        for offset in 0..=text.len() + 1 {
            assert_eq!(
                source.position(offset),
                line_column(text, offset),
                "{offset}"
            );
        }
        assert_eq!(Source::new("f", "").position(0), (1, 1));
    }

    #[test]
    fn errors_read_file_line_column_reason() {
        let source = Source::new("rules/a.toml", "x = 1\ny = [\n");
        let err = source.error(6..7, "`y` is not allowed");
        assert_eq!(err.to_string(), "rules/a.toml:2:1: `y` is not allowed");
        let parse = toml::from_str::<toml::Table>(source.text).unwrap_err();
        let err = source.toml_error(&parse);
        assert_eq!(err.file, "rules/a.toml");
        assert!(!err.reason.contains('\n'), "{err}");
    }
}
