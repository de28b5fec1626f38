//! A small `--name value` parser: the load generator needs no more, and builds fast.

use std::collections::HashMap;
use std::str::FromStr;

use anyhow::{Context, bail};

/// The scenario and its `--name value` options (`--flag` alone means `true`).
#[derive(Debug)]
pub(crate) struct Args {
    pub(crate) scenario: String,
    values: HashMap<String, String>,
}

impl Args {
    pub(crate) fn parse(mut argv: impl Iterator<Item = String>) -> anyhow::Result<Self> {
        let scenario = argv.next().unwrap_or_default();
        let mut values = HashMap::new();
        let mut argv = argv.peekable();
        while let Some(arg) = argv.next() {
            let Some(name) = arg.strip_prefix("--") else {
                bail!("unexpected argument {arg:?} (options are --name value)");
            };
            let value = match argv.peek() {
                Some(next) if !next.starts_with("--") => argv.next().unwrap_or_default(),
                _ => "true".to_owned(),
            };
            values.insert(name.to_owned(), value);
        }
        Ok(Self { scenario, values })
    }

    /// The option's value, or `default`.
    pub(crate) fn get<T: FromStr>(&self, name: &str, default: T) -> anyhow::Result<T>
    where
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        match self.values.get(name) {
            Some(v) => v.parse().with_context(|| format!("--{name} {v:?}")),
            None => Ok(default),
        }
    }

    /// The option's value, if given.
    pub(crate) fn opt<T: FromStr>(&self, name: &str) -> anyhow::Result<Option<T>>
    where
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        self.values
            .get(name)
            .map(|v| v.parse().with_context(|| format!("--{name} {v:?}")))
            .transpose()
    }

    pub(crate) fn flag(&self, name: &str) -> bool {
        self.values.get(name).is_some_and(|v| v != "false")
    }

    /// Names given but never read: typos are refused rather than ignored.
    pub(crate) fn check_known(&self, known: &[&str]) -> anyhow::Result<()> {
        for name in self.values.keys() {
            if !known.contains(&name.as_str()) {
                bail!("unknown option --{name} for scenario {:?}", self.scenario);
            }
        }
        Ok(())
    }
}
