//! `--json` output through serde_json: one object per run, on one line. Measured figures keep
//! a fixed number of decimals, written as number literals (`1.500000`).

use std::fmt::Display;

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

/// `value` as one line of JSON.
pub(crate) fn line(value: &impl Serialize) -> String {
    let mut s = serde_json::to_string(value).expect("reports serialize to JSON");
    s.push('\n');
    s
}

/// A measured figure with `D` decimals; `null` when not finite.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fixed<const D: usize>(pub f64);

impl<const D: usize> Serialize for Fixed<D> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !self.0.is_finite() {
            return s.serialize_none();
        }
        literal(format!("{:.*}", D, self.0)).serialize(s)
    }
}

/// A finite number written as Rust displays it (`0`, `1.5`); `None` otherwise.
pub(crate) fn shown(v: f32) -> Option<Box<RawValue>> {
    v.is_finite().then(|| literal(v))
}

fn literal(v: impl Display) -> Box<RawValue> {
    RawValue::from_string(v.to_string()).expect("a finite number is a JSON number")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_strings() {
        let s = serde_json::to_string("a\"b\\c\nd\u{1}é").unwrap();
        assert_eq!(s, r#""a\"b\\c\nd\u0001é""#);
    }

    #[test]
    fn writes_objects() {
        #[derive(Serialize)]
        struct O {
            n: &'static str,
            v: u32,
            p: Option<&'static str>,
            b: bool,
            f: Fixed<6>,
            g: Fixed<3>,
            nan: Fixed<6>,
            l: Option<Box<RawValue>>,
            i: Option<Box<RawValue>>,
        }
        let o = O {
            n: "x",
            v: 7,
            p: None,
            b: true,
            f: Fixed(1.5),
            g: Fixed(2.0 / 3.0),
            nan: Fixed(f64::NAN),
            l: shown(0.0),
            i: shown(f32::INFINITY),
        };
        assert_eq!(
            line(&o),
            "{\"n\":\"x\",\"v\":7,\"p\":null,\"b\":true,\"f\":1.500000,\"g\":0.667,\"nan\":null,\
             \"l\":0,\"i\":null}\n"
        );
    }
}
