//! train.py as source code: where its top-level constants are, how to rewrite them, and whether a
//! proposed source is Python at all.
//!
//! autoresearch's train.py keeps its hyperparameters as top-level assignments with trailing
//! comments (`MATRIX_LR = 0.04  # learning rate of the matrices`). The real worker runs the
//! submitted source and only stores `config`, so searching with `applyTo: trainScript` means
//! rewriting those assignments. Ruff's parser gives the exact byte range of each right-hand
//! side, so a rewrite replaces those bytes and nothing else: comments, blank lines, quoting and
//! layout elsewhere stay as the user wrote them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;

use ruff_python_ast::{Expr, Number, Operator, Stmt, UnaryOp};
use ruff_text_size::Ranged;
use serde_json::Value;

/// A source that is not valid Python.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct SyntaxError {
    /// 1-based line of the first error.
    pub line: usize,
    /// The parser's message.
    pub message: String,
}

/// Why a constant cannot be rewritten.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TemplateError {
    /// The source does not parse.
    #[error("train.py does not parse as Python: {0}")]
    Syntax(#[from] SyntaxError),
    /// No top-level `NAME = value` (or `NAME: type = value`) in the source.
    #[error("{0} is not a top-level assignment in train.py (expected a line like `{0} = ...`)")]
    NotAssigned(String),
    /// Assigned more than once at top level: which one to change would be a guess.
    #[error("{name} is assigned {count} times at the top level of train.py; keep one assignment")]
    AssignedTwice { name: String, count: usize },
}

/// Checks that a source parses as a Python module (syntax only, as `python -m py_compile` does
/// before running anything).
pub fn parses(source: &str) -> Result<(), SyntaxError> {
    ruff_python_parser::parse_module(source)
        .map(|_| ())
        .map_err(|e| syntax_error(source, &e))
}

fn syntax_error(source: &str, e: &ruff_python_parser::ParseError) -> SyntaxError {
    let offset = usize::from(e.location.start()).min(source.len());
    SyntaxError {
        line: source.as_bytes()[..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1,
        message: e.error.to_string(),
    }
}

/// A parsed train.py: the byte range of the right-hand side of each top-level assignment to a
/// single name, so that any number of rewrites costs one parse.
#[derive(Clone, Debug)]
pub struct Template {
    source: String,
    /// Name → right-hand side ranges (more than one when assigned several times).
    values: BTreeMap<String, Vec<Range<usize>>>,
    /// Name → the literal value of its (single) assignment, when it is a constant expression.
    constants: BTreeMap<String, Value>,
}

impl Template {
    /// Parses a source.
    pub fn new(source: &str) -> Result<Self, SyntaxError> {
        let parsed =
            ruff_python_parser::parse_module(source).map_err(|e| syntax_error(source, &e))?;
        let mut values: BTreeMap<String, Vec<Range<usize>>> = BTreeMap::new();
        let mut constants = BTreeMap::new();
        for stmt in &parsed.syntax().body {
            let (name, value) = match stmt {
                Stmt::Assign(a) => match a.targets.as_slice() {
                    [Expr::Name(n)] => (n.id.as_str(), &*a.value),
                    _ => continue,
                },
                Stmt::AnnAssign(a) => match (&*a.target, &a.value) {
                    (Expr::Name(n), Some(v)) => (n.id.as_str(), &**v),
                    _ => continue,
                },
                _ => continue,
            };
            let range = value.range();
            values
                .entry(name.to_string())
                .or_default()
                .push(usize::from(range.start())..usize::from(range.end()));
            match literal(value) {
                Some(v) => constants.insert(name.to_string(), v),
                None => constants.remove(name),
            };
        }
        Ok(Self {
            source: source.to_string(),
            values,
            constants,
        })
    }

    /// Checks that `name` is assigned exactly once at top level.
    pub fn check(&self, name: &str) -> Result<(), TemplateError> {
        match self.values.get(name).map(Vec::len) {
            Some(1) => Ok(()),
            None | Some(0) => Err(TemplateError::NotAssigned(name.to_string())),
            Some(count) => Err(TemplateError::AssignedTwice {
                name: name.to_string(),
                count,
            }),
        }
    }

    /// The value of a constant as the source has it, if its right-hand side is a literal
    /// (numbers, strings, booleans, None, lists and tuples of those, and arithmetic on numbers
    /// such as `2**19`).
    pub fn constant(&self, name: &str) -> Option<&Value> {
        self.constants.get(name)
    }

    /// The source with each named assignment's right-hand side replaced by the value as a
    /// Python literal. Names must pass [`Template::check`].
    pub fn render<'v>(
        &self,
        values: impl IntoIterator<Item = (&'v str, &'v Value)>,
    ) -> Result<String, TemplateError> {
        let mut edits = Vec::new();
        for (name, value) in values {
            self.check(name)?;
            edits.push((self.values[name][0].clone(), python_literal(value)));
        }
        edits.sort_by_key(|(range, _)| range.start);
        let mut out = String::with_capacity(self.source.len() + 16 * edits.len());
        let mut at = 0;
        for (range, text) in edits {
            out.push_str(&self.source[at..range.start]);
            out.push_str(&text);
            at = range.end;
        }
        out.push_str(&self.source[at..]);
        Ok(out)
    }
}

/// The Python literal for a JSON value: `None`, `True`/`False`, ints as ints, floats always
/// with a `.` or an exponent (so `3.0` stays a float), strings double-quoted with every
/// character outside printable ASCII escaped, arrays as lists and objects as dicts.
pub fn python_literal(value: &Value) -> String {
    let mut out = String::new();
    write_literal(&mut out, value);
    out
}

fn write_literal(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) if n.is_i64() || n.is_u64() => out.push_str(&n.to_string()),
        Value::Number(n) => write_float(out, n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_literal(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_string(out, k);
                out.push_str(": ");
                write_literal(out, v);
            }
            out.push('}');
        }
    }
}

fn write_float(out: &mut String, x: f64) {
    if x.is_nan() {
        out.push_str("float('nan')");
    } else if x.is_infinite() {
        out.push_str(if x > 0.0 {
            "float('inf')"
        } else {
            "-float('inf')"
        });
    } else {
        // Rust's `{:?}` is the shortest text that reads back as the same f64, and always has a
        // `.` or an exponent (`3.0`, `1e-5`, `1e16`): exactly Python's float literal syntax.
        let _ = write!(out, "{x:?}");
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            ' '..='~' => out.push(c),
            c if u32::from(c) <= 0xff => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if u32::from(c) <= 0xffff => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\U{:08x}", u32::from(c));
            }
        }
    }
    out.push('"');
}

/// The JSON value of a constant expression, if it is one.
fn literal(expr: &Expr) -> Option<Value> {
    match expr {
        Expr::NoneLiteral(_) => Some(Value::Null),
        Expr::BooleanLiteral(b) => Some(Value::Bool(b.value)),
        Expr::StringLiteral(s) => Some(Value::String(s.value.to_str().to_string())),
        Expr::NumberLiteral(n) => match &n.value {
            Number::Int(i) => i
                .as_i64()
                .map(Value::from)
                .or_else(|| i.as_u64().map(Value::from)),
            Number::Float(x) => serde_json::Number::from_f64(*x).map(Value::Number),
            Number::Complex { .. } => None,
        },
        Expr::List(l) => l
            .elts
            .iter()
            .map(literal)
            .collect::<Option<_>>()
            .map(Value::Array),
        Expr::Tuple(t) => t
            .elts
            .iter()
            .map(literal)
            .collect::<Option<_>>()
            .map(Value::Array),
        Expr::UnaryOp(u) => match (u.op, literal(&u.operand)?) {
            (UnaryOp::USub, Value::Number(n)) => negate(&n),
            (UnaryOp::UAdd, v @ Value::Number(_)) => Some(v),
            _ => None,
        },
        Expr::BinOp(b) => arithmetic(b.op, &literal(&b.left)?, &literal(&b.right)?),
        _ => None,
    }
}

fn negate(n: &serde_json::Number) -> Option<Value> {
    // `-9223372036854775808` is -(2^63): the operand only fits a u64.
    if n.as_u64() == Some(1 << 63) {
        return Some(Value::from(i64::MIN));
    }
    match n.as_i64() {
        Some(i) => i.checked_neg().map(Value::from),
        None if n.is_u64() => None,
        None => serde_json::Number::from_f64(-n.as_f64()?).map(Value::Number),
    }
}

/// `+ - * / // **` on numeric constants, with Python's int/float rules where they matter for a
/// hyperparameter (`2**19` is an int, `1/2` a float).
fn arithmetic(op: Operator, a: &Value, b: &Value) -> Option<Value> {
    let ints = a.as_i64().zip(b.as_i64());
    if let Some((x, y)) = ints {
        let r = match op {
            Operator::Add => x.checked_add(y),
            Operator::Sub => x.checked_sub(y),
            Operator::Mult => x.checked_mul(y),
            Operator::Pow if y >= 0 => x.checked_pow(u32::try_from(y).ok()?),
            Operator::FloorDiv if y != 0 => Some(x.div_euclid(y)),
            _ => None,
        };
        if let Some(r) = r {
            return Some(Value::from(r));
        }
    }
    let (x, y) = (a.as_f64()?, b.as_f64()?);
    let r = match op {
        Operator::Add => x + y,
        Operator::Sub => x - y,
        Operator::Mult => x * y,
        Operator::Div => x / y,
        Operator::Pow => x.powf(y),
        _ => return None,
    };
    serde_json::Number::from_f64(r).map(Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const TRAIN: &str = "\
\"\"\"A tiny train.py.\"\"\"
import os

# Model
DEPTH = 8  # number of layers
MATRIX_LR = 0.04    # learning rate of the matrices
TOTAL_BATCH_SIZE = 2**19
WINDOW_PATTERN = \"SSSL\"
ADAM_BETAS = (0.8, 0.95)
USE_BIAS: bool = False

def main():
    DEPTH = 3  # a local, not a constant
    print(f\"val_bpb: {DEPTH}\")

if __name__ == \"__main__\":
    main()
";

    #[test]
    fn rewrites_keep_comments_and_layout() {
        let t = Template::new(TRAIN).unwrap();
        let out = t
            .render([
                ("MATRIX_LR", &json!(0.03)),
                ("DEPTH", &json!(6)),
                ("USE_BIAS", &json!(true)),
                ("WINDOW_PATTERN", &json!("SL\"x")),
            ])
            .unwrap();
        assert!(out.contains("DEPTH = 6  # number of layers\n"), "{out}");
        assert!(out.contains("MATRIX_LR = 0.03    # learning rate of the matrices\n"));
        assert!(out.contains("USE_BIAS: bool = True\n"));
        assert!(out.contains("WINDOW_PATTERN = \"SL\\\"x\"\n"));
        // Everything else, including the local DEPTH inside main(), is unchanged.
        assert!(out.contains("    DEPTH = 3  # a local, not a constant\n"));
        assert_eq!(
            out.replace("DEPTH = 6 ", "DEPTH = 8 ")
                .replace("0.03 ", "0.04 ")
                .replace("= True", "= False")
                .replace("\"SL\\\"x\"", "\"SSSL\""),
            TRAIN
        );
        parses(&out).unwrap();
    }

    #[test]
    fn reads_constants_including_arithmetic() {
        let t = Template::new(TRAIN).unwrap();
        assert_eq!(t.constant("DEPTH"), Some(&json!(8)));
        assert_eq!(t.constant("TOTAL_BATCH_SIZE"), Some(&json!(524288)));
        assert_eq!(t.constant("ADAM_BETAS"), Some(&json!([0.8, 0.95])));
        assert_eq!(t.constant("USE_BIAS"), Some(&json!(false)));
        assert_eq!(t.constant("os"), None);
    }

    #[test]
    fn names_that_are_not_top_level_assignments_are_refused() {
        let t =
            Template::new("A = 1\nA = 2\nfor i in range(3):\n    B = i\nC, D = 1, 2\n").unwrap();
        assert_eq!(
            t.check("B"),
            Err(TemplateError::NotAssigned("B".into())),
            "an assignment inside a block is not a constant"
        );
        assert_eq!(t.check("C"), Err(TemplateError::NotAssigned("C".into())));
        assert!(matches!(
            t.check("A"),
            Err(TemplateError::AssignedTwice { count: 2, .. })
        ));
        let message = t.render([("MISSING", &json!(1))]).unwrap_err().to_string();
        assert!(
            message.contains("MISSING is not a top-level assignment"),
            "{message}"
        );
    }

    #[test]
    fn literals_are_python() {
        assert_eq!(python_literal(&json!(3.0)), "3.0");
        assert_eq!(python_literal(&json!(1e-5)), "1e-5");
        assert_eq!(python_literal(&json!(-2)), "-2");
        assert_eq!(python_literal(&json!(null)), "None");
        assert_eq!(
            python_literal(&json!("a\\b\n\u{e9}\u{1f600}")),
            r#""a\\b\n\xe9\U0001f600""#
        );
        assert_eq!(
            python_literal(&json!([1, "x", false])),
            r#"[1, "x", False]"#
        );
    }

    #[test]
    fn syntax_errors_say_where() {
        let e = parses("A = 1\ndef f(:\n    pass\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(parses("print('ok')\n").is_ok());
        assert!(parses("x = (1,\n").is_err());
        assert!(Template::new("if True\n").is_err());
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |x| x.is_finite())
                .prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
            any::<String>().prop_map(Value::from),
            Just(Value::Null),
        ]
    }

    proptest! {
        #[test]
        fn a_rewritten_value_reads_back_the_same(value in arb_value(), comment in "[ -~]{0,20}") {
            let source = format!("import math\nX = 1  #{comment}\nY = 'kept'\n");
            let out = Template::new(&source).unwrap().render([("X", &value)]).unwrap();
            let again = Template::new(&out).unwrap();
            // Python has no negative literals: -5 is -(5), which `constant` folds back.
            prop_assert_eq!(again.constant("X"), Some(&value));
            prop_assert_eq!(again.constant("Y"), Some(&json!("kept")));
            let tail = format!("  #{comment}\nY = 'kept'\n");
            prop_assert!(out.ends_with(&tail), "{}", out);
        }
    }
}
