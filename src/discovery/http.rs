//! HTTP helpers of discovery: the crate's shared ones (see [`crate::http`]).

pub use crate::http::{BodyError, USER_AGENT, ensure_crypto_provider, read_capped, snippet};
