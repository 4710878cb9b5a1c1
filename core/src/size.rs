//! Byte sizes written by users: one syntax for every configuration layer (engine variables,
//! NIXL parameters, tcpxsock variables, the CLI's size flags).
//!
//! A size is a decimal integer with an optional `K`, `M`, `G` or `T` suffix in either case,
//! meaning binary multiples (`1K` = 1024, `1M` = 2^20, `1G` = 2^30, `1T` = 2^40). Blanks around
//! the value are ignored; nothing else is accepted (no sign, no fraction, no blank between the
//! number and its suffix, no `B` / `iB`). Each layer applies its own range to the result.

use core::fmt;

/// The syntax in words, for error messages and help texts.
pub const SYNTAX: &str = "digits with an optional K, M, G or T suffix (binary: 1K = 1024)";

/// Why a text is not a size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeError {
    /// Nothing but blanks.
    Empty,
    /// Not digits with an optional suffix.
    Invalid,
    /// The value does not fit in 64 bits.
    Overflow,
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeError::Empty => write!(f, "empty; expected {SYNTAX}"),
            SizeError::Invalid => write!(f, "not a size; expected {SYNTAX}"),
            SizeError::Overflow => f.write_str("too large (more than 2^64 - 1 bytes)"),
        }
    }
}

/// The multiplier of suffix `c` (case-insensitive), if it is one.
const fn multiplier(c: u8) -> Option<u64> {
    match c.to_ascii_uppercase() {
        b'K' => Some(1 << 10),
        b'M' => Some(1 << 20),
        b'G' => Some(1 << 30),
        b'T' => Some(1 << 40),
        _ => None,
    }
}

/// Parses a size: `4096`, `512K`, `64m`, `1G`, `2T`.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let s = text.trim().as_bytes();
    let Some(&last) = s.last() else {
        return Err(SizeError::Empty);
    };
    let (digits, mult) = match multiplier(last) {
        Some(m) => (&s[..s.len() - 1], m),
        None => (s, 1),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(SizeError::Invalid);
    }
    let mut n: u64 = 0;
    for &d in digits {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or(SizeError::Overflow)?;
    }
    n.checked_mul(mult).ok_or(SizeError::Overflow)
}

/// Writes a byte count in the shortest form [`parse_size`] reads back exactly: the largest
/// suffix that divides it (`524288` → `512K`, `1000` → `1000`, `0` → `0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n != 0 {
            for (suffix, shift) in [('T', 40), ('G', 30), ('M', 20), ('K', 10)] {
                if n.trailing_zeros() >= shift {
                    return write!(f, "{}{suffix}", n >> shift);
                }
            }
        }
        write!(f, "{n}")
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::format;
    use std::string::ToString;

    #[test]
    fn suffixes_are_binary_and_case_insensitive() {
        for (text, want) in [
            ("0", 0),
            ("4096", 4096),
            ("1k", 1 << 10),
            ("512K", 512 << 10),
            ("64m", 64 << 20),
            ("64M", 64 << 20),
            ("1g", 1 << 30),
            ("4G", 4 << 30),
            ("2t", 2 << 40),
            (" 8K\t", 8 << 10),
            ("007", 7),
            ("18446744073709551615", u64::MAX),
            ("16777215T", 16_777_215 << 40),
        ] {
            assert_eq!(parse_size(text), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn anything_else_is_an_error_saying_what() {
        for text in ["", " ", "\t\n"] {
            assert_eq!(parse_size(text), Err(SizeError::Empty), "{text:?}");
        }
        for text in [
            "K", "-1", "+1", "1.5M", "4KB", "4KiB", "4 K", "x", "0x10", "4P", "1_000", "1e6", "٣",
            "K4",
        ] {
            assert_eq!(parse_size(text), Err(SizeError::Invalid), "{text:?}");
        }
        for text in [
            "18446744073709551616",
            "16777216T",
            "17179869184G",
            "99999999999999999999",
        ] {
            assert_eq!(parse_size(text), Err(SizeError::Overflow), "{text:?}");
        }
        let e = parse_size("4X").unwrap_err().to_string();
        assert!(e.contains("K, M, G or T"), "{e}");
    }

    #[test]
    fn sizes_print_in_their_shortest_exact_form() {
        for (n, want) in [
            (0, "0"),
            (1000, "1000"),
            (1024, "1K"),
            (524_288, "512K"),
            (1536, "1536"),
            (3072, "3K"),
            (3 << 20, "3M"),
            (1 << 30, "1G"),
            (5 << 40, "5T"),
            (u64::MAX, "18446744073709551615"),
        ] {
            assert_eq!(Size(n).to_string(), want, "{n}");
        }
    }

    proptest! {
        #[test]
        fn printed_sizes_parse_back(n in any::<u64>()) {
            prop_assert_eq!(parse_size(&Size(n).to_string()), Ok(n));
            prop_assert_eq!(parse_size(&n.to_string()), Ok(n));
        }

        #[test]
        fn a_suffix_multiplies_or_overflows(n in any::<u64>(), s in 0usize..8) {
            let (suffix, shift) = [("k", 10), ("K", 10), ("m", 20), ("M", 20), ("g", 30), ("G", 30),
                ("t", 40), ("T", 40)][s];
            let want = n.checked_mul(1 << shift).ok_or(SizeError::Overflow);
            prop_assert_eq!(parse_size(&format!("{n}{suffix}")), want);
        }

        #[test]
        fn never_panics(text in "\\PC{0,24}") {
            let _ = parse_size(&text);
        }
    }
}
