//! Check expectations: `OP VALUE` where OP is one of `= != < <= > >=` and VALUE is a number or a
//! quoted string. The observed value is the first column of the first row, as text.
//!
//! Numbers compare as numbers (integers exactly, anything else as f64); strings compare as text.
//! An expectation on a number fails, with a reason, when the observed value is not a number.

use std::cmp::Ordering;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }

    fn holds(self, ord: Ordering) -> bool {
        match self {
            Op::Eq => ord == Ordering::Equal,
            Op::Ne => ord != Ordering::Equal,
            Op::Lt => ord == Ordering::Less,
            Op::Le => ord != Ordering::Greater,
            Op::Gt => ord == Ordering::Greater,
            Op::Ge => ord != Ordering::Less,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(Number),
    Text(String),
}

/// A number as written; integers keep full precision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    Int(i128),
    Float(f64),
}

impl Number {
    pub fn parse(s: &str) -> Option<Number> {
        let s = s.trim();
        if let Ok(i) = s.parse::<i128>() {
            return Some(Number::Int(i));
        }
        // Rust's float parser accepts "inf"/"nan"; a check value never means those.
        let looks_numeric =
            !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c));
        if looks_numeric {
            s.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(Number::Float)
        } else {
            None
        }
    }

    fn cmp(self, other: Number) -> Option<Ordering> {
        match (self, other) {
            (Number::Int(a), Number::Int(b)) => Some(a.cmp(&b)),
            (a, b) => a.as_f64().partial_cmp(&b.as_f64()),
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Number::Int(i) => write!(f, "{i}"),
            Number::Float(x) => write!(f, "{x}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    pub op: Op,
    pub value: Value,
}

impl Expectation {
    /// Parses `">= 1000"`, `"= 'ok'"`, `"!= \"x\""`. The error says what was wrong.
    pub fn parse(s: &str) -> Result<Expectation, String> {
        let s = s.trim();
        // Longest operators first, so ">=" is not read as ">" followed by "=1000".
        let ops = [
            ("==", Op::Eq),
            (">=", Op::Ge),
            ("<=", Op::Le),
            ("!=", Op::Ne),
            ("<>", Op::Ne),
            ("=", Op::Eq),
            ("<", Op::Lt),
            (">", Op::Gt),
        ];
        let (op, rest) = ops
            .iter()
            .find_map(|(text, op)| s.strip_prefix(text).map(|rest| (*op, rest.trim())))
            .ok_or_else(|| format!("{s:?} must start with one of = != < <= > >="))?;
        if rest.is_empty() {
            return Err(format!("{s:?} has no value after {}", op.as_str()));
        }
        let value = if let Some(text) = quoted(rest) {
            Value::Text(text)
        } else if let Some(n) = Number::parse(rest) {
            Value::Number(n)
        } else {
            return Err(format!(
                "{rest:?} is neither a number nor a quoted string ('text' or \"text\")"
            ));
        };
        Ok(Expectation { op, value })
    }

    /// Evaluates against the observed value (`None`: the query returned no row, or NULL).
    /// `Err` carries the reason the check failed.
    pub fn evaluate(&self, observed: Option<&str>) -> Result<(), String> {
        let Some(observed) = observed else {
            return Err(format!("no value (no row or NULL), expected {self}"));
        };
        let ord = match &self.value {
            Value::Number(want) => {
                let got = Number::parse(observed).ok_or_else(|| {
                    format!("observed {observed:?} is not a number, expected {self}")
                })?;
                got.cmp(*want)
                    .ok_or_else(|| format!("observed {observed} cannot be compared with {want}"))?
            }
            Value::Text(want) => observed.cmp(want.as_str()),
        };
        if self.op.holds(ord) {
            Ok(())
        } else {
            Err(format!("observed {observed}, expected {self}"))
        }
    }
}

fn quoted(s: &str) -> Option<String> {
    for q in ['\'', '"'] {
        if let Some(inner) = s.strip_prefix(q).and_then(|r| r.strip_suffix(q))
            && s.len() >= 2
        {
            return Some(inner.to_owned());
        }
    }
    None
}

impl fmt::Display for Expectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Value::Number(n) => write!(f, "{} {n}", self.op.as_str()),
            Value::Text(t) => write!(f, "{} '{t}'", self.op.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn eval(expect: &str, observed: Option<&str>) -> Result<(), String> {
        Expectation::parse(expect)
            .expect("valid expectation")
            .evaluate(observed)
    }

    #[test]
    fn numeric_comparisons() {
        assert!(eval(">= 1000", Some("1000")).is_ok());
        assert!(eval(">= 1000", Some("999")).is_err());
        assert!(eval("> 1000", Some("1000")).is_err());
        assert!(eval("< 5", Some("4.5")).is_ok());
        assert!(eval("<= 5", Some("5.0")).is_ok());
        assert!(eval("= 0", Some("0")).is_ok());
        assert!(eval("!= 0", Some("0")).is_err());
        assert!(eval("<> 0", Some("1")).is_ok());
        assert!(eval("== 3", Some("3")).is_ok());
        assert!(eval(">= -1", Some("-1")).is_ok());
        // beyond f64 precision integers still compare exactly
        assert!(eval("> 9007199254740992", Some("9007199254740993")).is_ok());
    }

    #[test]
    fn text_comparisons() {
        assert!(eval("= 'ok'", Some("ok")).is_ok());
        assert!(eval("= \"ok\"", Some("ok")).is_ok());
        assert!(eval("!= 'ok'", Some("bad")).is_ok());
        assert!(eval("= 'ok'", Some("OK")).is_err());
        assert!(eval("= '1000'", Some("1000")).is_ok());
    }

    #[test]
    fn failures_say_why() {
        let e = eval(">= 1000", Some("998")).expect_err("fails");
        assert_eq!(e, "observed 998, expected >= 1000");
        let e = eval(">= 1000", Some("lots")).expect_err("fails");
        assert!(e.contains("not a number"), "{e}");
        let e = eval("= 1", None).expect_err("fails");
        assert!(e.contains("no value"), "{e}");
    }

    #[test]
    fn bad_expectations_are_refused() {
        for bad in [
            "",
            "1000",
            "~ 3",
            ">=",
            "= abc",
            "= 'unterminated",
            ">= inf",
            "= nan",
        ] {
            assert!(Expectation::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    proptest! {
        #[test]
        fn integer_ops_agree_with_rust(a in any::<i64>(), b in any::<i64>()) {
            let cases = [("=", a == b), ("!=", a != b), ("<", a < b), ("<=", a <= b), (">", a > b), (">=", a >= b)];
            for (op, want) in cases {
                let got = eval(&format!("{op} {b}"), Some(&a.to_string())).is_ok();
                prop_assert_eq!(got, want, "{} {} {}", a, op, b);
            }
        }

        #[test]
        fn display_round_trips(n in any::<i64>(), op in prop::sample::select(vec!["=", "!=", "<", "<=", ">", ">="])) {
            let e = Expectation::parse(&format!("{op} {n}")).expect("valid");
            prop_assert_eq!(Expectation::parse(&e.to_string()).expect("reparse"), e);
        }
    }
}
