//! The payment chain from the controller's side. At start-up the endpoint (`ERPC_URL`) is asked
//! which chain it serves, so a wrong or dead URL is in the log before any campaign runs; each
//! reconcile then checks it against the campaign's payment network (`ChainReadable`, see
//! `engine::settle::check_chain`), and a campaign whose chain cannot be read is looked at again
//! soon rather than at the idle requeue.

use std::time::Duration;

use crate::chain::ChainError;
use crate::crd::Network;
use crate::engine::Engine;

/// How soon a campaign whose chain cannot be read is looked at again.
pub const CHAIN_RETRY: Duration = Duration::from_secs(15);

/// Logs which chain `ERPC_URL` serves, or why it cannot be read.
pub async fn check_at_start(engine: &Engine) {
    let Some(chain) = engine.chain() else {
        tracing::info!("ERPC_URL is not set: payments are judged by the gates' answers alone");
        return;
    };
    match chain.chain_id().await {
        Ok(id) => match network_of(id) {
            Some(network) => {
                tracing::info!(url = chain.url(), chain_id = id, ?network, "payment chain")
            }
            None => tracing::error!(
                url = chain.url(),
                chain_id = id,
                "ERPC_URL serves no payment network this controller knows: campaigns will show ChainReadable=False (WrongChain)"
            ),
        },
        Err(e) => tracing::error!(
            error = %e,
            "the payment chain cannot be read: no voucher is signed until it can (condition ChainReadable)"
        ),
    }
}

/// The payment network whose chain id is `id`.
fn network_of(id: u64) -> Option<Network> {
    [Network::Base, Network::BaseSepolia]
        .into_iter()
        .find(|n| n.chain_id() == id)
}

/// The requeue of a step whose chain check returned `chain`.
pub fn requeue(step: Duration, chain: &Result<(), ChainError>) -> Duration {
    match chain {
        Ok(()) => step,
        Err(_) => step.min(CHAIN_RETRY),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_chain_is_looked_at_again_within_the_retry() {
        let failed = Err(ChainError::Config("x".into()));
        assert_eq!(requeue(Duration::from_secs(300), &failed), CHAIN_RETRY);
        assert_eq!(
            requeue(Duration::from_secs(2), &failed),
            Duration::from_secs(2)
        );
        assert_eq!(
            requeue(Duration::from_secs(300), &Ok(())),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn chain_ids_name_the_payment_networks() {
        assert_eq!(network_of(84532), Some(Network::BaseSepolia));
        assert_eq!(network_of(8453), Some(Network::Base));
        assert_eq!(network_of(1), None);
    }
}
