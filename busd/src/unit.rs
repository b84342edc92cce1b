//! Unit names as systemd spells them: validation, the cgroup path a slice or
//! scope gets, and the D-Bus object path of a unit. Pure.

use std::fmt;

/// The two unit types busd manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Scope,
    Slice,
}

impl Kind {
    /// The D-Bus interface beside `org.freedesktop.systemd1.Unit`.
    pub fn interface(self) -> &'static str {
        match self {
            Kind::Scope => "org.freedesktop.systemd1.Scope",
            Kind::Slice => "org.freedesktop.systemd1.Slice",
        }
    }
}

/// Why a unit name or a sub-cgroup was refused; the text names the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameError(pub String);

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NameError {}

/// systemd's limit on a unit name (`UNIT_NAME_MAX`).
const UNIT_NAME_MAX: usize = 255;

/// Checks `name` as systemd's `unit_name_is_valid` does for the plain names
/// busd manages (no templates) and returns its type. Only `.scope` and
/// `.slice` units exist here.
pub fn parse(name: &str) -> Result<Kind, NameError> {
    let bad = |why: &str| Err(NameError(format!("invalid unit name {name:?}: {why}")));
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > UNIT_NAME_MAX {
        return bad("longer than 255 bytes");
    }
    let (prefix, kind) = if let Some(p) = name.strip_suffix(".scope") {
        (p, Kind::Scope)
    } else if let Some(p) = name.strip_suffix(".slice") {
        (p, Kind::Slice)
    } else {
        return bad("only .scope and .slice units are managed");
    };
    if prefix.is_empty() {
        return bad("empty prefix");
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\')))
    {
        return bad(&format!("character {c:?} not allowed"));
    }
    if kind == Kind::Slice && prefix != "-" && prefix.split('-').any(str::is_empty) {
        return bad("a slice name has no empty dash-separated part");
    }
    Ok(kind)
}

/// The cgroup directory of a slice relative to the cgroup root, as systemd
/// nests slices: `a-b.slice` → `a.slice/a-b.slice`; the root slice `-.slice`
/// is the root itself (empty path).
pub fn slice_path(slice: &str) -> Result<String, NameError> {
    if parse(slice)? != Kind::Slice {
        return Err(NameError(format!("{slice:?} is not a slice")));
    }
    if slice == "-.slice" {
        return Ok(String::new());
    }
    let stem = slice.trim_end_matches(".slice");
    let mut path = String::new();
    let mut end = 0;
    for part in stem.split('-') {
        end += part.len();
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(&stem[..end]);
        path.push_str(".slice");
        end += 1; // the dash
    }
    Ok(path)
}

/// The parent slice of a slice (`a-b.slice` → `a.slice`, `a.slice` →
/// `-.slice`); `None` for the root slice.
pub fn parent_slice(slice: &str) -> Option<String> {
    if slice == "-.slice" {
        return None;
    }
    let stem = slice.strip_suffix(".slice")?;
    Some(match stem.rfind('-') {
        Some(i) => format!("{}.slice", &stem[..i]),
        None => "-.slice".to_string(),
    })
}

/// The cgroup path of `unit` relative to the cgroup root: a slice by its
/// own name, a scope under its slice.
pub fn cgroup_path(unit: &str, slice: &str) -> Result<String, NameError> {
    match parse(unit)? {
        Kind::Slice => slice_path(unit),
        Kind::Scope => {
            let parent = slice_path(slice)?;
            Ok(if parent.is_empty() {
                unit.to_string()
            } else {
                format!("{parent}/{unit}")
            })
        }
    }
}

/// A sub-cgroup below a unit (`AttachProcessesToUnit`), leading and trailing
/// slashes trimmed; `.`/`..`, empty components and NUL are refused.
pub fn subcgroup(sub: &str) -> Result<String, NameError> {
    let trimmed = sub.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    for part in trimmed.split('/') {
        if part.is_empty() || part == "." || part == ".." || part.contains('\0') {
            return Err(NameError(format!(
                "invalid subcgroup {sub:?}: component {part:?} not allowed"
            )));
        }
    }
    Ok(trimmed.to_string())
}

/// systemd's `bus_label_escape`: every byte but ASCII letters (and digits
/// after the first byte) becomes `_xx`, lowercase hex; the empty string is
/// `_`.
pub fn escape_label(s: &str) -> String {
    if s.is_empty() {
        return "_".to_string();
    }
    let mut out = String::with_capacity(s.len() * 3);
    for (i, b) in s.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()) {
            out.push(char::from(b));
        } else {
            out.push('_');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The reverse of [`escape_label`]; `None` for a malformed label.
pub fn unescape_label(s: &str) -> Option<String> {
    if s == "_" {
        return Some(String::new());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = *bytes.get(i)?;
        if b == b'_' {
            let hi = hex_value(*bytes.get(i + 1)?)?;
            let lo = hex_value(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Where unit objects live.
pub const UNIT_PATH_PREFIX: &str = "/org/freedesktop/systemd1/unit/";

/// The object path of a unit: `/org/freedesktop/systemd1/unit/<escaped>`.
pub fn object_path(unit: &str) -> String {
    format!("{UNIT_PATH_PREFIX}{}", escape_label(unit))
}

/// The unit name of an object path made by [`object_path`].
pub fn unit_of_path(path: &str) -> Option<String> {
    unescape_label(path.strip_prefix(UNIT_PATH_PREFIX)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(parse("kata-test1.scope"), Ok(Kind::Scope));
        assert_eq!(parse("system.slice"), Ok(Kind::Slice));
        assert_eq!(parse("-.slice"), Ok(Kind::Slice));
        assert_eq!(parse("a-b-c.slice"), Ok(Kind::Slice));
        assert_eq!(parse("x:y_z\\x2d.scope"), Ok(Kind::Scope));
        for bad in [
            "",
            ".scope",
            "foo.service",
            "../x.scope",
            "a/b.scope",
            "a b.scope",
            "a--b.slice",
            "-a.slice",
            "a-.slice",
            "ä.scope",
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(err.0.contains(&format!("{bad:?}")), "{err}");
        }
        assert!(parse(&format!("{}.scope", "a".repeat(250))).is_err());
    }

    #[test]
    fn slices_nest_as_systemd_does() {
        assert_eq!(slice_path("-.slice").unwrap(), "");
        assert_eq!(slice_path("system.slice").unwrap(), "system.slice");
        assert_eq!(slice_path("a-b.slice").unwrap(), "a.slice/a-b.slice");
        assert_eq!(
            slice_path("a-b-c.slice").unwrap(),
            "a.slice/a-b.slice/a-b-c.slice"
        );
        assert!(slice_path("a.scope").is_err());
        assert_eq!(parent_slice("a-b.slice").as_deref(), Some("a.slice"));
        assert_eq!(parent_slice("a.slice").as_deref(), Some("-.slice"));
        assert_eq!(parent_slice("-.slice"), None);
    }

    #[test]
    fn cgroup_paths() {
        assert_eq!(
            cgroup_path("kata-test1.scope", "system.slice").unwrap(),
            "system.slice/kata-test1.scope"
        );
        assert_eq!(cgroup_path("x.scope", "-.slice").unwrap(), "x.scope");
        assert_eq!(
            cgroup_path("kata-x.scope", "machine-kata.slice").unwrap(),
            "machine.slice/machine-kata.slice/kata-x.scope"
        );
        assert_eq!(
            cgroup_path("a-b.slice", "ignored.slice").unwrap(),
            "a.slice/a-b.slice"
        );
        assert!(cgroup_path("x.scope", "../etc.slice").is_err());
        assert!(cgroup_path("x.scope", "system").is_err());
    }

    #[test]
    fn subcgroups() {
        assert_eq!(subcgroup("").unwrap(), "");
        assert_eq!(subcgroup("/").unwrap(), "");
        assert_eq!(subcgroup("/init/").unwrap(), "init");
        assert_eq!(subcgroup("a/b").unwrap(), "a/b");
        for bad in ["..", "../x", "a/../b", "a//b", "./a", "a\0b"] {
            assert!(subcgroup(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn object_paths_escape_as_systemd() {
        assert_eq!(
            object_path("kata-test1.scope"),
            "/org/freedesktop/systemd1/unit/kata_2dtest1_2escope"
        );
        assert_eq!(
            object_path("-.slice"),
            "/org/freedesktop/systemd1/unit/_2d_2eslice"
        );
        assert_eq!(escape_label("1a2"), "_31a2");
        assert_eq!(escape_label(""), "_");
        for name in ["kata-test1.scope", "-.slice", "1x\\y.scope", ""] {
            assert_eq!(unit_of_path(&object_path(name)).as_deref(), Some(name));
        }
        assert_eq!(unit_of_path("/org/freedesktop/systemd1/unit/_zz"), None);
        assert_eq!(unit_of_path("/org/freedesktop/systemd1"), None);
    }
}
