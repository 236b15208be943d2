//! Tables on the terminal: every column as wide as its widest cell, so
//! long node or metric names never push the rest out of line. Every
//! command that prints rows prints them through here.

use std::io::Write;

/// How a column's cells line up.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    /// Numbers: their last digits line up.
    Right,
}

pub struct Table {
    headers: Vec<&'static str>,
    align: Vec<Align>,
    rows: Vec<Row>,
}

enum Row {
    Cells(Vec<String>),
    /// A line of its own under the row before (an alarm's case), outside
    /// the columns.
    Note(String),
}

impl Table {
    /// Columns by header; a header ending in `>` is right-aligned (the `>`
    /// is not printed).
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers
                .iter()
                .map(|h| h.strip_suffix('>').unwrap_or(h))
                .collect(),
            align: headers
                .iter()
                .map(|h| {
                    if h.ends_with('>') {
                        Align::Right
                    } else {
                        Align::Left
                    }
                })
                .collect(),
            rows: Vec::new(),
        }
    }

    /// A row with a cell per column (missing cells are empty).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(Row::Cells(cells));
    }

    /// A line under the last row, printed as it is.
    pub fn note(&mut self, line: String) {
        self.rows.push(Row::Note(line));
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as lines, two spaces between columns, no trailing blanks.
    pub fn lines(&self) -> Vec<String> {
        let width = |i: usize| {
            self.rows
                .iter()
                .filter_map(|r| match r {
                    Row::Cells(cells) => cells.get(i),
                    Row::Note(_) => None,
                })
                .map(|c| c.chars().count())
                .chain([self.headers[i].chars().count()])
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.headers.len()).map(width).collect();
        let header = Row::Cells(self.headers.iter().map(|h| h.to_string()).collect());
        std::iter::once(&header)
            .chain(&self.rows)
            .map(|row| {
                let cells = match row {
                    Row::Cells(cells) => cells,
                    Row::Note(line) => return line.clone(),
                };
                let mut line = String::new();
                for (i, w) in widths.iter().enumerate() {
                    let cell = cells.get(i).map(String::as_str).unwrap_or("");
                    if i > 0 {
                        line.push_str("  ");
                    }
                    match self.align[i] {
                        Align::Left => line.push_str(&format!("{cell:<w$}")),
                        Align::Right => line.push_str(&format!("{cell:>w$}")),
                    }
                }
                line.trim_end().to_owned()
            })
            .collect()
    }

    /// Writes the table to stdout (an error when the reader went away, which
    /// `main` treats as success).
    pub fn print(&self) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        for line in self.lines() {
            writeln!(out, "{line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_widen_to_their_longest_cell() {
        let mut t = Table::new(&["NAME", "VALUE>", "NOTE"]);
        t.row(vec![
            "a-very-long-node-name".into(),
            "1.00".into(),
            "x".into(),
        ]);
        t.row(vec!["n1".into(), "123.45".into(), String::new()]);
        t.note("  └ a note as long as it likes, outside the columns".into());
        assert_eq!(
            t.lines(),
            [
                "NAME                    VALUE  NOTE",
                "a-very-long-node-name    1.00  x",
                "n1                     123.45",
                "  └ a note as long as it likes, outside the columns",
            ]
        );
    }
}
