//! The parts of a command-line parser that do not depend on the program's
//! options: what the command line asks for, and splitting a word into an
//! option name and an inline value.
//!
//! The errors stay with each program, which names its own (`ArgsError`): the
//! helpers here return `None` or the caller's own error value.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// What the command line asks for: the help text, or a run with the
/// program's options `O`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<O> {
    Help,
    /// `--version`: print [`crate::version`].
    Version,
    Run(O),
}

/// One command-line word. A long option with a value after `=`
/// (`--config=PATH`) is split at the first `=`; anything else is a name as a
/// whole (`-h`, `--strict`, `extra`, `-f=1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    raw: OsString,
    /// The whole word with non-UTF-8 bytes replaced: such a word is never a
    /// valid option name, and this form names it in a message.
    text: String,
    /// For a `--name=value` word, the byte offsets of its first `=` in `text`
    /// and in `raw`. They differ when bytes before it were replaced, but it is
    /// the same `=`: an invalid sequence never takes in an ASCII byte.
    eq: Option<(usize, usize)>,
}

impl Arg {
    pub fn new(raw: OsString) -> Self {
        let text = raw.to_string_lossy().into_owned();
        let eq = match (
            text.find('='),
            raw.as_bytes().iter().position(|&b| b == b'='),
        ) {
            (Some(in_text), Some(in_raw)) if text.starts_with("--") => Some((in_text, in_raw)),
            _ => None,
        };
        Self { raw, text, eq }
    }

    /// The option name: `--config` of `--config=PATH`, otherwise the whole
    /// word, non-UTF-8 bytes replaced.
    pub fn name(&self) -> &str {
        match self.eq {
            Some((in_text, _)) => self.text.get(..in_text).unwrap_or(&self.text),
            None => &self.text,
        }
    }

    /// For an option that takes no value: `Ok` unless the word carries one
    /// after `=` (`--strict=1`), then `Err(unexpected)`.
    pub fn flag<E>(&self, unexpected: E) -> Result<(), E> {
        match self.eq {
            Some(_) => Err(unexpected),
            None => Ok(()),
        }
    }

    /// The value of an option that takes one: the bytes after the first `=`,
    /// unchanged (possibly empty), or else the next word of `rest`; `None`
    /// when there is neither.
    pub fn value(&self, rest: &mut impl Iterator<Item = OsString>) -> Option<OsString> {
        match self.eq {
            Some((_, in_raw)) => {
                let value = self.raw.as_bytes().get(in_raw + 1..).unwrap_or_default();
                Some(OsString::from_vec(value.to_vec()))
            }
            None => rest.next(),
        }
    }

    /// The whole word, non-UTF-8 bytes replaced, to name it in an error.
    pub fn into_text(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg(word: &str) -> Arg {
        Arg::new(word.into())
    }

    #[test]
    fn long_option_splits_at_the_first_equals() {
        let a = arg("--config=/tmp/a=b.conf");
        assert_eq!(a.name(), "--config");
        assert_eq!(a.flag("unexpected"), Err("unexpected"));
        let mut rest = std::iter::once(OsString::from("next"));
        assert_eq!(a.value(&mut rest), Some("/tmp/a=b.conf".into()));
        assert_eq!(
            rest.next(),
            Some("next".into()),
            "the next word is untouched"
        );
        assert_eq!(
            arg("--config=").value(&mut std::iter::empty()),
            Some("".into())
        );
    }

    #[test]
    fn other_words_are_names_as_a_whole() {
        for word in ["-h", "--strict", "extra", "-f=1", ""] {
            let a = arg(word);
            assert_eq!(a.name(), word);
            assert_eq!(a.flag("unexpected"), Ok(()));
            assert_eq!(a.into_text(), word);
        }
    }

    #[test]
    fn value_without_equals_is_the_next_word() {
        let mut rest = [OsString::from("2s"), OsString::from("x")].into_iter();
        assert_eq!(arg("--exit-after").value(&mut rest), Some("2s".into()));
        assert_eq!(rest.next(), Some("x".into()));
        assert_eq!(arg("--exit-after").value(&mut std::iter::empty()), None);
    }

    #[test]
    fn non_utf8_is_replaced_in_the_name_and_kept_in_the_value() {
        let a = Arg::new(OsString::from_vec(b"--c\xff=/tmp/\xfe".to_vec()));
        assert_eq!(a.name(), "--c\u{fffd}");
        assert_eq!(
            a.value(&mut std::iter::empty()),
            Some(OsString::from_vec(b"/tmp/\xfe".to_vec()))
        );
        assert_eq!(a.into_text(), "--c\u{fffd}=/tmp/\u{fffd}");
    }
}
