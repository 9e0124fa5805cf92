//! RUN: pay one experiment over x402 with an ERC-3009 voucher signed by the remote signer.
//!
//! The steps, in order, and where they live:
//! 1. **price**: [`WorkerClient::quote`] POSTs without payment and reads the 402
//!    ([`x402::parse_payment_required`]: v1 body, v2 header, v2 body);
//! 2. **choose**: [`x402::choose`] keeps the cheapest requirement that passes the caller's
//!    [`Policy`] (scheme `exact`, allowed network, ERC-3009, known USDC or allowed asset, price
//!    ≤ cap) or refuses, naming the rule; nothing is signed after a refusal;
//! 3. **sign**: [`sign_voucher`] builds the `TransferWithAuthorization` typed data
//!    ([`eip712`]), has the [`RemoteSigner`] sign it, and checks the signature (v, low s, signer);
//! 4. **send**: [`WorkerClient::run`] POSTs `/experiment` with the voucher and validates the
//!    answer (200, or 202 and a polled job); [`WorkerClient::recover`] reads a lost answer.
//!
//! [`prepare`] does 1–3 and [`pay_and_run`] 1–4. The controller calls [`prepare`], persists the
//! returned [`Voucher`] (its experiment id and nonce are the caller's), then calls
//! [`WorkerClient::run`]; after a crash it re-sends the stored voucher instead of signing again.

pub mod clients;
pub mod eip712;
pub mod http;
pub mod signer;
pub mod voucher;
pub mod worker;
pub mod x402;

pub use signer::{RemoteSigner, SignerError};
pub use voucher::{Voucher, VoucherTerms, new_nonce, sign_voucher, unix_now};
pub use worker::{
    DEFAULT_RUN_TIMEOUT, ExperimentRequest, ExperimentResult, JobTicket, Quote, RunOutcome,
    WorkerClient, WorkerError, WorkerHealth,
};
pub use x402::{NoAcceptableOffer, Offer, PaymentRequired, Policy, Rule, Settlement, X402Version};

use crate::usdc::Usdc;

/// Cap on one experiment's price when the caller gives none: 0.10 USDC, above a typical
/// per-experiment price (a GPU hour at about 1 USDC gives 5/60 USDC per 5-minute run) and small
/// enough that a mispriced worker cannot do real damage.
pub const DEFAULT_MAX_PRICE: Usdc = Usdc::from_atomic(100_000);

/// Why an experiment was not paid for and run.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// The worker's price or terms break the policy; nothing was signed.
    #[error(transparent)]
    Refused(#[from] NoAcceptableOffer),
    /// The signer failed or returned an unusable signature; nothing was sent.
    #[error(transparent)]
    Signer(#[from] SignerError),
    /// The worker or its gate failed; see the variant for whether money may have moved.
    #[error(transparent)]
    Worker(#[from] WorkerError),
}

/// What [`prepare`] found: either a signed voucher for a priced worker, or nothing to pay.
#[derive(Clone, Debug, PartialEq)]
pub enum Prepared {
    /// A gate asked a price: the chosen requirement and the signed voucher.
    Paid {
        /// The requirement chosen.
        offer: Box<Offer>,
        /// The voucher to persist and send.
        voucher: Box<Voucher>,
    },
    /// The worker answered the probe without asking for payment.
    Free,
}

impl Prepared {
    /// The voucher, if one was signed.
    pub fn voucher(&self) -> Option<&Voucher> {
        match self {
            Prepared::Paid { voucher, .. } => Some(voucher),
            Prepared::Free => None,
        }
    }
}

/// A finished, paid experiment.
#[derive(Clone, Debug, PartialEq)]
pub struct Receipt {
    /// Offer and voucher (or [`Prepared::Free`]).
    pub prepared: Prepared,
    /// The worker's validated result and the settlement report.
    pub outcome: RunOutcome,
}

/// Steps 1–3: reads the worker's price, chooses under `policy`, signs a voucher with `terms`.
pub async fn prepare(
    worker: &WorkerClient,
    signer: &RemoteSigner,
    policy: &Policy,
    terms: &VoucherTerms,
) -> Result<Prepared, PaymentError> {
    let required = match worker.quote().await? {
        Quote::Free => return Ok(Prepared::Free),
        Quote::Priced(required) => required,
    };
    let offer = x402::choose(&required, policy)?;
    let voucher = sign_voucher(signer, &offer, terms, unix_now()).await?;
    Ok(Prepared::Paid {
        offer: Box::new(offer),
        voucher: Box::new(voucher),
    })
}

/// Steps 1–4 for callers that need no persistence between signing and sending (the CLI).
pub async fn pay_and_run(
    worker: &WorkerClient,
    signer: &RemoteSigner,
    policy: &Policy,
    request: &ExperimentRequest,
    terms: &VoucherTerms,
) -> Result<Receipt, PaymentError> {
    let prepared = prepare(worker, signer, policy, terms).await?;
    let outcome = worker.run(prepared.voucher(), request).await?;
    Ok(Receipt { prepared, outcome })
}
