//! A tiny command-line reader: `--quick`, `--name value`, `--help`.
//!
//! The benchmarks take a handful of flags each; a parser crate would be more
//! code to read than this.

use anyhow::{Context, bail};
use std::str::FromStr;

#[derive(Debug)]
pub struct Args {
    items: Vec<String>,
    used: Vec<bool>,
}

impl Args {
    /// The process's arguments, without the program name.
    pub fn from_env() -> Args {
        Args::new(std::env::args().skip(1).collect())
    }

    pub fn new(items: Vec<String>) -> Args {
        let used = vec![false; items.len()];
        Args { items, used }
    }

    /// True when `--name` was given (as a switch).
    pub fn flag(&mut self, name: &str) -> bool {
        let mut found = false;
        for (i, item) in self.items.iter().enumerate() {
            if item == name {
                self.used[i] = true;
                found = true;
            }
        }
        found
    }

    /// The value after `--name`, parsed; `None` when the flag is absent.
    pub fn value<T: FromStr>(&mut self, name: &str) -> anyhow::Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        let Some(i) = self.items.iter().position(|a| a == name) else {
            return Ok(None);
        };
        self.used[i] = true;
        let Some(text) = self.items.get(i + 1) else {
            bail!("{name} needs a value");
        };
        self.used[i + 1] = true;
        text.parse::<T>()
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("{name} {text}"))
            .map(Some)
    }

    /// Fails on anything no `flag`/`value` call consumed.
    pub fn finish(self) -> anyhow::Result<()> {
        if let Some((item, _)) = self.items.iter().zip(&self.used).find(|(_, used)| !**used) {
            bail!("unknown argument `{item}` (try --help)");
        }
        Ok(())
    }
}
