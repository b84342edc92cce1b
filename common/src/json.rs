//! The one piece of JSON writing the programs need by hand (no serde in
//! the static binaries): a string literal.

/// `text` as a JSON string literal: quotes and backslashes escaped, control
/// characters as `\uXXXX`; everything else as is (JSON text is UTF-8).
pub fn string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_json_requires() {
        assert_eq!(string("plain é"), "\"plain é\"");
        assert_eq!(string("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(string("x\ny\u{1}"), "\"x\\u000ay\\u0001\"");
    }
}
