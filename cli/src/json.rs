//! Minimal JSON output for `--json` modes: a string escaper and an object writer.
//!
//! Output only; nothing in tcpx parses JSON, so no dependency is worth it.

use std::fmt::Write;

/// Appends `s` as a JSON string literal (quotes included).
pub fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Writes the members of one JSON object, inserting commas.
pub struct Object<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> Object<'a> {
    /// Opens an object (`{`).
    pub fn new(out: &'a mut String) -> Self {
        out.push('{');
        Object { out, first: true }
    }

    fn key(&mut self, k: &str) -> &mut String {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        string(self.out, k);
        self.out.push(':');
        self.out
    }

    /// A string member.
    pub fn str(&mut self, k: &str, v: &str) -> &mut Self {
        let out = self.key(k);
        string(out, v);
        self
    }

    /// A string member, or `null`.
    pub fn opt_str(&mut self, k: &str, v: Option<&str>) -> &mut Self {
        match v {
            Some(v) => self.str(k, v),
            None => self.raw(k, "null"),
        }
    }

    /// A number or literal written as is (caller guarantees it is valid JSON).
    pub fn raw(&mut self, k: &str, v: impl std::fmt::Display) -> &mut Self {
        let out = self.key(k);
        let _ = write!(out, "{v}");
        self
    }

    /// A boolean member.
    pub fn bool(&mut self, k: &str, v: bool) -> &mut Self {
        self.raw(k, v)
    }

    /// A member whose value the closure writes into the buffer.
    pub fn with(&mut self, k: &str, f: impl FnOnce(&mut String)) -> &mut Self {
        let out = self.key(k);
        f(out);
        self
    }

    /// Closes the object (`}`).
    pub fn end(&mut self) {
        self.out.push('}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_strings() {
        let mut s = String::new();
        string(&mut s, "a\"b\\c\nd\u{1}é");
        assert_eq!(s, r#""a\"b\\c\nd\u0001é""#);
    }

    #[test]
    fn writes_objects() {
        let mut s = String::new();
        Object::new(&mut s)
            .str("n", "x")
            .raw("v", 7)
            .opt_str("p", None)
            .bool("b", true)
            .end();
        assert_eq!(s, r#"{"n":"x","v":7,"p":null,"b":true}"#);
    }
}
