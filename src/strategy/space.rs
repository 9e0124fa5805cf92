//! The search space: validated parameters, positions in it, and how a position becomes a config.
//!
//! Every strategy works on [`Coord`]s (one per parameter) and turns them into JSON only at the
//! end, as the `params` that are layered onto `baseConfig` or written into train.py. Ranges are walked in "unit" coordinates (0 at `min`,
//! 1 at `max`, logarithmic for `logScale`), so that a hill-climbing step means the same thing for
//! a learning rate spanning three decades and for a ratio between 0 and 0.5.

use serde_json::{Map, Value};

use super::rng::SplitMix64;
use crate::crd::{Parameter, ParameterKind, SpecError};

/// Integers beyond 2^53 are not exact in JSON numbers read as f64 (and by JavaScript workers).
const MAX_SAFE_INT: f64 = 9_007_199_254_740_992.0;

/// One validated search dimension.
#[derive(Clone, Debug)]
pub struct Dim {
    /// Config key.
    pub name: String,
    /// Range or values.
    pub kind: DimKind,
}

/// The shape of a dimension, with bounds already checked.
#[derive(Clone, Debug)]
pub enum DimKind {
    /// Real numbers in `lo..=hi`.
    Float {
        lo: f64,
        hi: f64,
        log: bool,
        grid: u32,
    },
    /// Whole numbers in `lo..=hi` (min rounded up, max rounded down).
    Int {
        lo: i64,
        hi: i64,
        log: bool,
        grid: u32,
    },
    /// One of `values`, treated as ordered (neighbours are adjacent entries).
    Choice { values: Vec<Value> },
}

/// A value of one dimension.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Coord {
    Float(f64),
    Int(i64),
    /// Index into the choice's values.
    Choice(usize),
}

/// The validated parameters of a search, in spec order.
#[derive(Clone, Debug)]
pub struct Space {
    pub dims: Vec<Dim>,
}

fn err(field: String, message: impl Into<String>) -> SpecError {
    SpecError {
        field,
        message: message.into(),
    }
}

impl Space {
    /// Checks the parameters (the CRD schema checks most of this, but campaigns stored before a
    /// rule existed and CLI input are not checked by the API server).
    pub fn new(params: &[Parameter]) -> Result<Self, SpecError> {
        let mut dims: Vec<Dim> = Vec::with_capacity(params.len());
        for (i, p) in params.iter().enumerate() {
            let field = format!("search.parameters[{i}]");
            if p.name.is_empty() {
                return Err(err(field, "a parameter needs a name"));
            }
            if dims.iter().any(|d| d.name == p.name) {
                return Err(err(field, format!("parameter {} is listed twice", p.name)));
            }
            let kind = dim_kind(p).map_err(|m| err(field, m))?;
            dims.push(Dim {
                name: p.name.clone(),
                kind,
            });
        }
        Ok(Self { dims })
    }

    /// The parameters of a position: each one's value under its name.
    pub fn params(&self, coords: &[Coord]) -> Map<String, Value> {
        self.dims
            .iter()
            .zip(coords)
            .map(|(dim, &c)| (dim.name.clone(), dim.to_json(c)))
            .collect()
    }

    /// The position some parameters stand for: each one read by name, snapped into its range;
    /// parameters that are absent or unusable take the middle of their range.
    pub fn read(&self, params: &Map<String, Value>) -> Vec<Coord> {
        self.dims
            .iter()
            .map(|d| d.snap(params.get(&d.name)))
            .collect()
    }
}

fn dim_kind(p: &Parameter) -> Result<DimKind, String> {
    let range = || match (p.min, p.max) {
        (Some(lo), Some(hi)) if lo.is_finite() && hi.is_finite() && lo < hi => {
            if p.log_scale && lo <= 0.0 {
                Err(format!("log-scale parameter {} needs min > 0", p.name))
            } else {
                Ok((lo, hi))
            }
        }
        _ => Err(format!("parameter {} needs finite min < max", p.name)),
    };
    let grid = p.grid_points.max(2);
    match p.kind {
        ParameterKind::Choice if p.values.is_empty() => {
            Err(format!("choice parameter {} needs values", p.name))
        }
        ParameterKind::Choice => Ok(DimKind::Choice {
            values: p.values.clone(),
        }),
        ParameterKind::Float => {
            let (lo, hi) = range()?;
            Ok(DimKind::Float {
                lo,
                hi,
                log: p.log_scale,
                grid,
            })
        }
        ParameterKind::Int => {
            let (min, max) = range()?;
            let (lo, hi) = (min.ceil(), max.floor());
            if lo > hi {
                return Err(format!(
                    "int parameter {} has no whole number between min and max",
                    p.name
                ));
            }
            if lo < -MAX_SAFE_INT || hi > MAX_SAFE_INT {
                return Err(format!("int parameter {} must stay within ±2^53", p.name));
            }
            Ok(DimKind::Int {
                lo: lo as i64,
                hi: hi as i64,
                log: p.log_scale,
                grid,
            })
        }
    }
}

/// Maps `x` in `lo..=hi` to 0..=1, linearly or logarithmically.
fn to_unit(x: f64, lo: f64, hi: f64, log: bool) -> f64 {
    let u = if log {
        (x.ln() - lo.ln()) / (hi.ln() - lo.ln())
    } else {
        // Halved so that `hi - lo` cannot overflow for ranges like -1e308..1e308.
        (x * 0.5 - lo * 0.5) / (hi * 0.5 - lo * 0.5)
    };
    if u.is_finite() {
        u.clamp(0.0, 1.0)
    } else {
        0.5
    }
}

/// Maps `u` in 0..=1 back into `lo..=hi`, clamped because rounding can overshoot the bounds.
fn from_unit(u: f64, lo: f64, hi: f64, log: bool) -> f64 {
    let u = u.clamp(0.0, 1.0);
    let x = if log {
        (lo.ln() + u * (hi.ln() - lo.ln())).exp()
    } else {
        lo * (1.0 - u) + hi * u
    };
    if x.is_finite() { x.clamp(lo, hi) } else { lo }
}

/// Six significant digits: configs stay readable (`0.00316228`, not `0.0031622776601683794`)
/// and ids do not hinge on the last bits of a float. Clamped again so the bounds still hold.
fn tidy(x: f64, lo: f64, hi: f64) -> f64 {
    format!("{x:.5e}").parse::<f64>().unwrap_or(x).clamp(lo, hi)
}

impl Dim {
    /// The JSON value of a coordinate: ints are JSON integers, floats JSON numbers.
    pub fn to_json(&self, c: Coord) -> Value {
        match (&self.kind, c) {
            (DimKind::Choice { values }, Coord::Choice(i)) => {
                values.get(i).cloned().unwrap_or(Value::Null)
            }
            (_, Coord::Int(v)) => Value::from(v),
            (_, Coord::Float(v)) => Value::from(v),
            (_, Coord::Choice(i)) => Value::from(i),
        }
    }

    /// The middle of the range (geometric middle on a log scale), or the middle choice.
    pub fn middle(&self) -> Coord {
        match &self.kind {
            DimKind::Choice { values } => Coord::Choice((values.len() - 1) / 2),
            _ => self.at_unit(0.5),
        }
    }

    /// Reads a config value, snapping it into the range; unusable values give the middle.
    pub fn snap(&self, v: Option<&Value>) -> Coord {
        match (&self.kind, v) {
            (DimKind::Choice { values }, Some(v)) => values
                .iter()
                .position(|x| x == v)
                .map_or_else(|| self.middle(), Coord::Choice),
            (DimKind::Float { lo, hi, .. }, Some(v)) => match v.as_f64() {
                Some(x) if x.is_finite() => Coord::Float(x.clamp(*lo, *hi)),
                _ => self.middle(),
            },
            (DimKind::Int { lo, hi, .. }, Some(v)) => match v.as_f64() {
                Some(x) if x.is_finite() => Coord::Int((x.round() as i64).clamp(*lo, *hi)),
                _ => self.middle(),
            },
            (_, None) => self.middle(),
        }
    }

    /// The point at unit coordinate `u` of a range (choices: the nearest index).
    pub fn at_unit(&self, u: f64) -> Coord {
        match &self.kind {
            DimKind::Float { lo, hi, log, .. } => {
                Coord::Float(tidy(from_unit(u, *lo, *hi, *log), *lo, *hi))
            }
            DimKind::Int { lo, hi, log, .. } => {
                let x = from_unit(u, *lo as f64, *hi as f64, *log).round() as i64;
                Coord::Int(x.clamp(*lo, *hi))
            }
            DimKind::Choice { values } => {
                let last = (values.len() - 1) as f64;
                Coord::Choice((u.clamp(0.0, 1.0) * last).round() as usize)
            }
        }
    }

    /// The unit coordinate of a point (choices: index over the last index).
    pub fn unit_of(&self, c: Coord) -> f64 {
        match (&self.kind, c) {
            (DimKind::Float { lo, hi, log, .. }, Coord::Float(x)) => to_unit(x, *lo, *hi, *log),
            (DimKind::Int { lo, hi, log, .. }, Coord::Int(x)) => {
                if lo == hi {
                    0.0
                } else {
                    to_unit(x as f64, *lo as f64, *hi as f64, *log)
                }
            }
            (DimKind::Choice { values }, Coord::Choice(i)) if values.len() > 1 => {
                i as f64 / (values.len() - 1) as f64
            }
            _ => 0.0,
        }
    }

    /// The distinct points of this dimension on a grid.
    pub fn grid(&self) -> Vec<Coord> {
        let mut points: Vec<Coord> = match &self.kind {
            DimKind::Choice { values } => (0..values.len()).map(Coord::Choice).collect(),
            DimKind::Float { grid, .. } | DimKind::Int { grid, .. } => {
                let last = f64::from(grid - 1);
                (0..*grid)
                    .map(|i| self.at_unit(f64::from(i) / last))
                    .collect()
            }
        };
        // Neighbouring grid points can round to the same int (or float at 6 digits).
        points.dedup();
        points
    }

    /// A uniform sample: uniform in unit coordinates for ranges (log-uniform on a log scale),
    /// uniform over the whole numbers of a linear int range, uniform over choices.
    pub fn sample(&self, rng: &mut SplitMix64) -> Coord {
        match &self.kind {
            DimKind::Int {
                lo, hi, log: false, ..
            } => {
                let span = hi.abs_diff(*lo) + 1;
                Coord::Int(lo.saturating_add_unsigned(rng.below(span)))
            }
            DimKind::Choice { values } => Coord::Choice(rng.below(values.len() as u64) as usize),
            DimKind::Int {
                log: true, lo, hi, ..
            } => {
                // Sample the real range widened by half a unit on each side, so that rounding
                // gives the end points their fair share.
                let (a, b) = ((*lo as f64 - 0.5).max(0.5), *hi as f64 + 0.5);
                let x = from_unit(rng.unit(), a, b, true).round() as i64;
                Coord::Int(x.clamp(*lo, *hi))
            }
            DimKind::Float { .. } => self.at_unit(rng.unit()),
        }
    }

    /// Moves a coordinate by about `step` (in unit coordinates) in direction `up`, at least one
    /// whole number or one choice so that a discrete move is never a no-op; turns back at a
    /// bound. Returns the coordinate unchanged only if the dimension has a single value.
    pub fn nudge(&self, c: Coord, step: f64, up: bool) -> Coord {
        let moved = self.nudge_one_way(c, step, up);
        if moved == c {
            self.nudge_one_way(c, step, !up)
        } else {
            moved
        }
    }

    fn nudge_one_way(&self, c: Coord, step: f64, up: bool) -> Coord {
        let sign = if up { 1.0 } else { -1.0 };
        let target = self.unit_of(c) + sign * step;
        match (&self.kind, c) {
            (DimKind::Float { .. }, _) => self.at_unit(target),
            (DimKind::Int { lo, hi, .. }, Coord::Int(x)) => match self.at_unit(target) {
                Coord::Int(y) if y != x => Coord::Int(y),
                _ if up => Coord::Int(x.saturating_add(1).min(*hi)),
                _ => Coord::Int(x.saturating_sub(1).max(*lo)),
            },
            (DimKind::Choice { values }, Coord::Choice(i)) => {
                let jump = ((step * (values.len() - 1) as f64).round() as usize).max(1);
                if up {
                    Coord::Choice(i.saturating_add(jump).min(values.len() - 1))
                } else {
                    Coord::Choice(i.saturating_sub(jump))
                }
            }
            _ => c,
        }
    }
}
