//! The payer's USDC balance, read before a voucher is signed and kept for a short time (one
//! read per campaign step, not one per experiment).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use alloy::primitives::Address;

use super::{ChainError, UsdcChain};
use crate::crd::Network;
use crate::usdc::Usdc;

/// How long a balance read is trusted. Short: a top-up is seen within this time.
pub const BALANCE_TTL: Duration = Duration::from_secs(5);

/// Why nothing is signed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "the payer {payer} holds {balance} USDC, less than the {needed} USDC this experiment needs; top up the wallet and the campaign resumes"
)]
pub struct InsufficientBalance {
    /// The paying address.
    pub payer: Address,
    /// Its balance.
    pub balance: Usdc,
    /// What the voucher would authorise.
    pub needed: Usdc,
}

/// Cached balances per (token, payer).
#[derive(Debug, Default)]
pub struct Wallets {
    seen: Mutex<HashMap<(Address, Address), (Instant, Usdc)>>,
}

impl Wallets {
    /// The payer's balance of `asset`, from the cache when it is fresh.
    pub async fn balance(
        &self,
        chain: &UsdcChain,
        network: Network,
        asset: Address,
        payer: Address,
    ) -> Result<Usdc, ChainError> {
        let key = (asset, payer);
        if let Some((at, balance)) = self.seen.lock().expect("not poisoned").get(&key).copied()
            && at.elapsed() < BALANCE_TTL
        {
            return Ok(balance);
        }
        chain.check_network(network).await?;
        let balance = chain.balance(asset, payer).await?;
        self.seen
            .lock()
            .expect("not poisoned")
            .insert(key, (Instant::now(), balance));
        Ok(balance)
    }

    /// Refuses when the balance cannot cover `needed`; the amount is then taken off the cached
    /// balance, so parallel starts within the cache time do not all count the same money.
    pub fn take(
        &self,
        asset: Address,
        payer: Address,
        balance: Usdc,
        needed: Usdc,
    ) -> Result<(), InsufficientBalance> {
        if balance < needed {
            return Err(InsufficientBalance {
                payer,
                balance,
                needed,
            });
        }
        if let Some((_, cached)) = self
            .seen
            .lock()
            .expect("not poisoned")
            .get_mut(&(asset, payer))
        {
            *cached = cached.saturating_sub(needed);
        }
        Ok(())
    }
}
