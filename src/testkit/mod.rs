//! In-process fakes for fast engine and payment unit tests: no cluster, no node, no chain.
//!
//! - [`FakeSigner`]: obol-stack's remote signer (docs/protocols.md §5), signing EIP-712 typed
//!   data for real with a local key;
//! - [`FakeWorker`]: an autoresearch worker (§3) behind an obol-style x402 gate (§4) that checks
//!   payments as a gate and its facilitator do, settles each nonce at most once, and records
//!   every settlement so a test can assert "paid exactly once per experiment".
//!
//! Each listens on `127.0.0.1:<port chosen by the OS>` and stops when dropped. They are
//! stand-ins for unit tests; the integration tests run against the real x402 packages and a chain
//! (`testbed/payments`).
//!
//! ```ignore
//! let signer = FakeSigner::start().await;
//! let worker = FakeWorker::config().price(Usdc::from_atomic(20_000)).start().await;
//! let client = WorkerClient::new(&worker.endpoint(), DEFAULT_RUN_TIMEOUT)?;
//! // ... quote, choose, sign_voucher(&signer.client(), ..), run ...
//! worker.set(|k| k.fail_after_payment = 1);
//! assert_eq!(worker.payments_for("exp-1"), 1);
//! ```

mod gate;
mod server;
mod signer;
mod worker;

#[cfg(test)]
mod tests;

pub use gate::{CHAIN_ID, NETWORK, usdc_domain};
pub use server::Connection;
pub use signer::FakeSigner;
pub use worker::{
    FakeWorker, Knobs, Lie, PaymentHeader, RunFn, Submission, WorkerConfig, completed,
    landscape_run, lying_run, noisy_run, normal, transaction_for,
};

/// The golden vectors' signer key (anvil's well-known key #1; docs/protocols.md §4).
pub const PAYER_KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
/// Its address.
pub const PAYER: alloy::primitives::Address =
    alloy::primitives::address!("0x70997970C51812dc3A010C7d01b50e0d17dc79C8");
/// The bearer token [`FakeSigner::start`] requires.
pub const TOKEN: &str = "testkit-token";
