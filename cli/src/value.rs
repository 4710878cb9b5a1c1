//! Value parsers shared by the subcommands' arguments.

use tcpx_core::size::{parse_size, Size};

/// A size in the one size syntax (`tcpx_core::size`: `4096`, `4K`, `64M`, `1G`; binary
/// multiples), in `1..=max`.
pub(crate) fn size(s: &str, max: u64) -> Result<u64, String> {
    match parse_size(s) {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        Ok(n) => Err(format!("{n} is not in 1..={}", Size(max))),
        Err(e) => Err(e.to_string()),
    }
}

/// An integer in `1..=max`.
pub(crate) fn count(s: &str, max: usize) -> Result<usize, String> {
    s.trim()
        .parse()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| format!("expected 1..={max}"))
}

/// A positive integer.
pub(crate) fn positive(s: &str) -> Result<usize, String> {
    s.trim()
        .parse::<usize>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| "expected a positive integer".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_counts_and_positive_integers() {
        assert_eq!(size("4K", 4 << 30), Ok(4096));
        assert_eq!(size("64m", 4 << 30), Ok(64 << 20));
        assert_eq!(size("4G", 4 << 30), Ok(4 << 30));
        assert_eq!(size("1000", 4 << 30), Ok(1000));
        assert_eq!(
            size("5G", 4 << 30),
            Err("5368709120 is not in 1..=4G".to_string())
        );
        for bad in ["", "0", "K", "-1", "1.5M", "1T", "4G1", "4KB"] {
            assert!(size(bad, 4 << 30).is_err(), "{bad:?}");
        }
        assert_eq!(count("16", 16), Ok(16));
        assert_eq!(count("17", 16), Err("expected 1..=16".to_string()));
        assert!(count("0", 16).is_err() && count("2K", 16).is_err());
        assert_eq!(positive("3"), Ok(3));
        assert!(positive("0").is_err() && positive("x").is_err());
    }
}
