//! A worker's service URL, normalised once: `https://host/services/w/` and `https://host/services/w`
//! are the same worker, so every comparison (busy, prefer, exclude, named workers) uses this type
//! instead of trimming slashes at each call site.

use std::fmt;

/// A worker endpoint without a trailing slash.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint(String);

impl Endpoint {
    /// Normalises `url`: surrounding space and trailing slashes are dropped.
    pub fn new(url: &str) -> Self {
        Self(url.trim().trim_end_matches('/').to_string())
    }

    /// The URL as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `pattern` (an endpoint or a prefix of one, as users write in `prefer` and
    /// `exclude`) names this endpoint.
    pub fn matches_prefix(&self, pattern: &str) -> bool {
        let pattern = pattern.trim().trim_end_matches('/');
        !pattern.is_empty() && self.0.starts_with(pattern)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Endpoint {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Endpoint {
    fn from(url: &str) -> Self {
        Self::new(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_slashes_and_space_do_not_make_another_worker() {
        assert_eq!(
            Endpoint::new(" http://w.invalid/s/ "),
            Endpoint::new("http://w.invalid/s")
        );
        assert_eq!(
            Endpoint::new("http://w.invalid/s//").as_str(),
            "http://w.invalid/s"
        );
    }

    #[test]
    fn a_prefix_names_the_workers_under_it_and_an_empty_one_names_none() {
        let e = Endpoint::new("http://w.invalid/services/a");
        assert!(e.matches_prefix("http://w.invalid/"));
        assert!(e.matches_prefix("http://w.invalid/services/a/"));
        assert!(!e.matches_prefix("http://other.invalid"));
        assert!(!e.matches_prefix(" / "));
    }
}
