//! Flag parsing shared by the subcommands: `--flag value` and `--flag=value`.

/// One flag as given on the command line.
#[derive(Debug, Clone, Copy)]
pub struct Flag<'a> {
    /// The argument as typed (for error messages).
    pub raw: &'a str,
    /// The flag's name (`--size` of `--size=4K`).
    pub name: &'a str,
    inline: Option<&'a str>,
}

/// The arguments of a subcommand, read flag by flag.
pub struct Flags<'a> {
    it: std::slice::Iter<'a, String>,
}

impl<'a> Flags<'a> {
    pub fn new(args: &'a [String]) -> Self {
        Flags { it: args.iter() }
    }

    /// The next flag, or `None` after the last argument.
    #[allow(clippy::should_implement_trait)] // `value` needs the iterator between flags
    pub fn next(&mut self) -> Option<Flag<'a>> {
        let raw = self.it.next()?.as_str();
        Some(match raw.split_once('=') {
            Some((name, v)) if name.starts_with("--") => Flag {
                raw,
                name,
                inline: Some(v),
            },
            _ => Flag {
                raw,
                name: raw,
                inline: None,
            },
        })
    }

    /// The value of `flag`: the part after `=`, else the next argument.
    pub fn value(&mut self, flag: &Flag<'a>) -> Result<String, String> {
        flag.inline
            .or_else(|| self.it.next().map(String::as_str))
            .map(str::to_owned)
            .ok_or_else(|| format!("{} needs a value", flag.name))
    }
}

/// Owned arguments from literals, for the subcommands' parser tests.
#[cfg(test)]
pub(super) fn argv(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_and_separate_values() {
        let args: Vec<String> = ["--a=1", "--b", "2", "-c", "--d"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut f = Flags::new(&args);
        let a = f.next().unwrap();
        assert_eq!((a.name, f.value(&a).as_deref()), ("--a", Ok("1")));
        let b = f.next().unwrap();
        assert_eq!((b.name, f.value(&b).as_deref()), ("--b", Ok("2")));
        let c = f.next().unwrap();
        assert_eq!((c.name, c.raw), ("-c", "-c"));
        let d = f.next().unwrap();
        assert_eq!(f.value(&d), Err("--d needs a value".to_string()));
        assert!(f.next().is_none());
    }
}
