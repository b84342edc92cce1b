//! The kernel command line, split once, as the kernel splits it (`next_arg`
//! in lib/cmdline.c), with one boolean grammar: what init, agent-shim and
//! timesync read from `/proc/cmdline`. Pure and borrowing: no allocation
//! per word (init runs this in its first milliseconds).

/// One `key[=value]` parameter of the kernel command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param<'a> {
    /// The word as written, quotes included, for messages.
    pub word: &'a str,
    pub key: &'a str,
    /// `None` without `=`; quotes around the value removed.
    pub value: Option<&'a str>,
}

/// The kernel's `isspace` (lib/ctype.c) for ASCII.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// Splits a kernel command line into parameters as the kernel's `next_arg`
/// (lib/cmdline.c) does: words end at whitespace outside double quotes;
/// a word that starts with a quote (`"key=a b"`) or a value that does
/// (`key="a b"`) loses that quote and a closing quote at the end of the
/// word. Other quotes stay in the text.
pub fn params(text: &str) -> Vec<Param<'_>> {
    let mut params = Vec::new();
    let mut rest = text.trim_start_matches(is_space);
    while !rest.is_empty() {
        let (quoted, body) = match rest.strip_prefix('"') {
            Some(body) => (true, body),
            None => (false, rest),
        };
        let mut in_quote = quoted;
        let mut equals = None;
        let mut end = body.len();
        for (i, c) in body.char_indices() {
            if is_space(c) && !in_quote {
                end = i;
                break;
            }
            if c == '=' && equals.is_none() {
                equals = Some(i);
            }
            if c == '"' {
                in_quote = !in_quote;
            }
        }
        let (raw, after) = body.split_at(end);
        let word = &rest[..rest.len() - after.len()];
        rest = after.trim_start_matches(is_space);

        let value_quoted = equals.is_some_and(|i| raw[i + 1..].starts_with('"'));
        let raw = if quoted || value_quoted {
            raw.strip_suffix('"').unwrap_or(raw)
        } else {
            raw
        };
        // The closing quote may have been the only character after `=`
        // (`key="`), so `equals` can now be past the end.
        let (key, value) = match equals {
            Some(i) => {
                let value = raw.get(i + 1..).unwrap_or("");
                let value = if value_quoted {
                    value.strip_prefix('"').unwrap_or(value)
                } else {
                    value
                };
                (&raw[..i], Some(value))
            }
            None => (raw, None),
        };
        params.push(Param { word, key, value });
    }
    params
}

/// The kernel treats `-` and `_` in parameter names as the same (`parameq`).
#[inline]
pub fn key_is(key: &str, name: &str) -> bool {
    key.len() == name.len()
        && key
            .chars()
            .zip(name.chars())
            .all(|(a, b)| a == b || (matches!(a, '-' | '_') && matches!(b, '-' | '_')))
}

/// A boolean: systemd's (and kata-agent's) words `1`, `yes`, `y`, `true`,
/// `t`, `on` and `0`, `no`, `n`, `false`, `f`, `off`, in any case.
#[inline]
pub fn parse_bool(value: &str) -> Option<bool> {
    let value = value.trim_matches(|c: char| c.is_ascii_whitespace());
    let is = |words: [&str; 6]| words.iter().any(|w| value.eq_ignore_ascii_case(w));
    if is(["1", "yes", "y", "true", "t", "on"]) {
        Some(true)
    } else if is(["0", "no", "n", "false", "f", "off"]) {
        Some(false)
    } else {
        None
    }
}

/// A boolean key's value on the kernel command line: the key alone is
/// true (as kata-agent's flags and systemd's `systemd.*` booleans take it).
#[inline]
pub fn flag(value: Option<&str>) -> Option<bool> {
    value.map_or(Some(true), parse_bool)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn kv<'a>(params: &[Param<'a>]) -> Vec<(&'a str, Option<&'a str>)> {
        params.iter().map(|p| (p.key, p.value)).collect()
    }

    #[test]
    fn splits_on_whitespace() {
        let params = params(" a=1\tb  c=\n\nd=x=y \n");
        assert_eq!(
            kv(&params),
            [
                ("a", Some("1")),
                ("b", None),
                ("c", Some("")),
                ("d", Some("x=y"))
            ]
        );
        assert_eq!(params[3].word, "d=x=y");
        assert!(super::params("").is_empty());
        assert!(super::params(" \n").is_empty());
    }

    #[test]
    fn quotes_group_like_the_kernel() {
        let params = params(r#"a="x y" "b=u v" c=p"q r"s "d" e=""#);
        assert_eq!(
            kv(&params),
            [
                ("a", Some("x y")),
                ("b", Some("u v")),
                // A quote inside a value groups but stays in the text.
                ("c", Some(r#"p"q r"s"#)),
                ("d", None),
                ("e", Some("")),
            ]
        );
        assert_eq!(params[0].word, r#"a="x y""#);
        assert_eq!(params[1].word, r#""b=u v""#);
        // An unterminated quote runs to the end of the line.
        assert_eq!(
            kv(&super::params("a=\"x y\nb=1")),
            [("a", Some("x y\nb=1"))]
        );
    }

    #[test]
    fn one_boolean_grammar() {
        for yes in ["1", "yes", "Y", "TRUE", "t", "on", " on "] {
            assert_eq!(parse_bool(yes), Some(true), "{yes}");
        }
        for no in ["0", "No", "n", "false", "F", "OFF"] {
            assert_eq!(parse_bool(no), Some(false), "{no}");
        }
        for bad in ["", "2", "yess", "enabled"] {
            assert_eq!(parse_bool(bad), None, "{bad}");
        }
        assert_eq!(flag(None), Some(true));
        assert_eq!(flag(Some("off")), Some(false));
        assert_eq!(flag(Some("maybe")), None);
    }

    #[test]
    fn dashes_and_underscores_are_the_same_in_keys() {
        assert!(key_is("agent.exit-after", "agent.exit_after"));
        assert!(key_is("init.kill_timeout", "init.kill-timeout"));
        assert!(!key_is("agent.exit", "agent.exit_after"));
    }
}
