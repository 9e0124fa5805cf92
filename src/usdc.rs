//! USDC amounts. Users write decimal strings ("0.05"); the chain counts atomic units (6 decimals).
//! Amounts are integers end to end so that a budget check is exact: no floating point near money.

use std::fmt;
use std::str::FromStr;

/// USDC has 6 decimals: 1 USDC = 1_000_000 atomic units.
pub const DECIMALS: u32 = 6;
const UNIT: u128 = 10u128.pow(DECIMALS);

/// An amount of USDC in atomic units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Usdc(u128);

/// Why a string is not a USDC amount.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UsdcError {
    /// Not of the form `123` or `123.456789`.
    #[error("{0:?} is not a USDC amount: write a decimal string such as \"0.05\"")]
    Syntax(String),
    /// More than 6 decimals.
    #[error("{0:?} has more than 6 decimals, USDC's precision")]
    Precision(String),
    /// Too large to be a real amount.
    #[error("{0:?} is too large")]
    Overflow(String),
}

impl Usdc {
    /// Zero USDC.
    pub const ZERO: Usdc = Usdc(0);

    /// From atomic units.
    pub const fn from_atomic(atomic: u128) -> Self {
        Usdc(atomic)
    }

    /// Atomic units.
    pub const fn atomic(self) -> u128 {
        self.0
    }

    /// Parses atomic units as x402 writes them ("10000" = 0.01 USDC).
    pub fn parse_atomic(s: &str) -> Result<Self, UsdcError> {
        if s.is_empty() || s.len() > 30 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(UsdcError::Syntax(s.to_string()));
        }
        s.parse::<u128>()
            .map(Usdc)
            .map_err(|_| UsdcError::Overflow(s.to_string()))
    }

    /// Sum, or `None` on overflow.
    pub fn checked_add(self, other: Usdc) -> Option<Usdc> {
        self.0.checked_add(other.0).map(Usdc)
    }

    /// Difference, or zero if `other` is larger.
    pub fn saturating_sub(self, other: Usdc) -> Usdc {
        Usdc(self.0.saturating_sub(other.0))
    }
}

impl FromStr for Usdc {
    type Err = UsdcError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
        let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty()
            || !digits(whole)
            || !digits(frac)
            || (s.contains('.') && frac.is_empty())
        {
            return Err(UsdcError::Syntax(s.to_string()));
        }
        if frac.len() > DECIMALS as usize {
            return Err(UsdcError::Precision(s.to_string()));
        }
        let overflow = || UsdcError::Overflow(s.to_string());
        let whole: u128 = if whole.len() > 24 {
            return Err(overflow());
        } else {
            whole.parse().map_err(|_| overflow())?
        };
        let frac_atomic: u128 = format!("{frac:0<6}").parse().map_err(|_| overflow())?;
        whole
            .checked_mul(UNIT)
            .and_then(|w| w.checked_add(frac_atomic))
            .map(Usdc)
            .ok_or_else(overflow)
    }
}

impl fmt::Display for Usdc {
    /// Shortest decimal form: 1500000 atomic units print as "1.5".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / UNIT;
        let frac = self.0 % UNIT;
        if frac == 0 {
            write!(f, "{whole}")
        } else {
            let frac = format!("{frac:06}");
            write!(f, "{whole}.{}", frac.trim_end_matches('0'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_decimal_strings() {
        assert_eq!("0.01".parse::<Usdc>().unwrap().atomic(), 10_000);
        assert_eq!("12".parse::<Usdc>().unwrap().atomic(), 12_000_000);
        assert_eq!("0.000001".parse::<Usdc>().unwrap().atomic(), 1);
        assert_eq!("1.5".parse::<Usdc>().unwrap().to_string(), "1.5");
        assert_eq!(Usdc::from_atomic(10_000).to_string(), "0.01");
        assert_eq!(Usdc::ZERO.to_string(), "0");
    }

    #[test]
    fn refuses_what_is_not_an_amount() {
        for bad in ["", ".5", "1.", "-1", "1e3", "0x10", " 1", "1,5", "NaN"] {
            assert!(
                matches!(bad.parse::<Usdc>(), Err(UsdcError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "0.0000001".parse::<Usdc>(),
            Err(UsdcError::Precision(_))
        ));
        assert!(matches!(
            "9".repeat(40).parse::<Usdc>(),
            Err(UsdcError::Overflow(_))
        ));
    }

    #[test]
    fn atomic_strings() {
        assert_eq!(Usdc::parse_atomic("10000").unwrap().to_string(), "0.01");
        assert!(Usdc::parse_atomic("-1").is_err());
        assert!(Usdc::parse_atomic("1.0").is_err());
        assert!(Usdc::parse_atomic("").is_err());
    }
}
