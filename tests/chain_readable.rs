//! A controller whose `ERPC_URL` cannot be read says so and pays nothing: the payment chain is
//! the judge of every uncertain voucher, so a voucher signed while it cannot be read could not be
//! judged. Against the real API server and the payment testbed (anvil with Circle's USDC, the
//! reference gates, the testbed's signer and workers).

mod support;

use std::time::Duration;

use autoresearch_coordinator::crd::{ExperimentCampaign, Phase};
use kube::api::PostParams;
use serde_json::json;
use support::controller::{
    Controller, campaign, campaign_events, free_port, setup, three_workers, wait_done, wait_for,
};
use support::onchain::{assert_books_match_chain, baseline};

/// (status, reason) of condition `kind`.
fn condition(c: &ExperimentCampaign, kind: &str) -> Option<(String, String)> {
    let found = c
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|k| k.type_ == kind)?;
    Some((found.status.clone(), found.reason.clone()))
}

fn is(status: &str, reason: &str) -> Option<(String, String)> {
    Some((status.into(), reason.into()))
}

#[tokio::test]
async fn an_unreadable_chain_is_chain_readable_false_and_nothing_is_signed_until_it_answers() {
    let s = setup("chainread", three_workers(200)).await;
    let before = baseline(&s).await;
    let payer_before = s.tb.balance(s.tb.payer()).await;
    let settlements_before = s.tb.facilitator_transactions().await;
    // A loopback port nothing listens on: every chain read is refused.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let mut blind = Controller::start_with(&s.ns, s.data.path(), "blind", &[("ERPC_URL", &closed)]);
    let spec = json!({"maxExperiments": 3, "parallelism": 2});
    s.api
        .create(&PostParams::default(), &campaign("chain", &s.tb, spec))
        .await
        .unwrap();

    wait_for(&s.api, "chain", 60, "ChainReadable=False", &[&blind], |c| {
        condition(c, "ChainReadable") == is("False", "Unreachable")
            && condition(c, "Progressing") == is("False", "ChainUnreadable")
    })
    .await;
    let events = campaign_events(&s.client, &s.ns, "chain").await;
    assert!(
        events.iter().any(|e| e.reason == "Unreachable"),
        "no Unreachable Event: {events:#?}"
    );
    // Long enough for several start attempts (each one is refused before signing).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = s.api.get("chain").await.unwrap().status.unwrap();
    assert!(later.ledger.is_empty(), "a voucher was reserved: {later:?}");
    assert_eq!(later.submitted, 0);
    assert!(!later.pending.is_empty(), "the experiments wait");
    assert_eq!(s.tb.balance(s.tb.payer()).await, payer_before, "paid");
    assert_eq!(s.tb.facilitator_transactions().await, settlements_before);
    assert!(
        blind.log_text().contains("cannot be read"),
        "start-up says so: {}",
        blind.log_text()
    );
    blind.terminate();

    // The right URL: the campaign finishes, ChainReadable is set back, the books match the chain.
    let rpc = s.tb.m["rpcUrl"].as_str().unwrap().to_string();
    let seeing = Controller::start_with(&s.ns, s.data.path(), "seeing", &[("ERPC_URL", &rpc)]);
    let status = wait_done(&s.api, "chain", 120, &[&seeing]).await;
    assert_eq!(
        (status.phase, status.succeeded),
        (Some(Phase::Succeeded), 3),
        "{status:?}"
    );
    let done = s.api.get("chain").await.unwrap();
    assert_eq!(condition(&done, "ChainReadable"), is("True", "Read"));
    assert_books_match_chain(&s, "chain", &status, &before).await;
}
