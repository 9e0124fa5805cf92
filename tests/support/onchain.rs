//! What the chain says about the payer's vouchers: the USDC contract's `AuthorizationUsed` logs
//! and `authorizationState(authorizer, nonce)`, read from the testbed's anvil. Tests judge money by
//! these, never by what the controller reports about itself.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::{BTreeMap, HashSet};

use autoresearch_coordinator::crd::ExperimentCampaignStatus;

use alloy::primitives::{Address, B256, U256, hex};
use alloy::sol_types::{SolCall, SolEvent};
use serde_json::{Value, json};

use super::controller::{Setup, paid_to_workers, results, unique_ids};
use super::testbed::Testbed;

alloy::sol! {
    event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
    event Transfer(address indexed from, address indexed to, uint256 value);
    function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);
}

/// One voucher the chain settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settled {
    /// The ERC-3009 nonce.
    pub nonce: B256,
    /// The settlement transaction.
    pub tx: String,
    /// USDC moved by that transaction (atomic units).
    pub amount: U256,
}

/// Every voucher of the payer the chain has settled, by nonce.
pub async fn settled(tb: &Testbed) -> BTreeMap<B256, Settled> {
    let payer = tb.payer();
    let used = logs(
        tb,
        AuthorizationUsed::SIGNATURE_HASH,
        Some(B256::left_padding_from(payer.as_slice())),
    )
    .await;
    let transfers = logs(
        tb,
        Transfer::SIGNATURE_HASH,
        Some(B256::left_padding_from(payer.as_slice())),
    )
    .await;
    let mut out = BTreeMap::new();
    for log in used {
        let nonce: B256 = log["topics"][2].as_str().unwrap().parse().unwrap();
        let tx = log["transactionHash"].as_str().unwrap().to_string();
        let amount = transfers
            .iter()
            .filter(|t| t["transactionHash"] == tx.as_str())
            .map(|t| U256::from_be_slice(&hex::decode(t["data"].as_str().unwrap()).unwrap()))
            .sum();
        let previous = out.insert(nonce, Settled { nonce, tx, amount });
        assert!(previous.is_none(), "the chain settled nonce {nonce} twice");
    }
    out
}

async fn logs(tb: &Testbed, topic0: B256, topic1: Option<B256>) -> Vec<Value> {
    let filter = json!({
        "address": tb.m["usdc"],
        "fromBlock": "0x0",
        "toBlock": "latest",
        "topics": [topic0, topic1],
    });
    let found = tb.rpc("eth_getLogs", json!([filter])).await;
    found
        .as_array()
        .unwrap_or_else(|| panic!("eth_getLogs: {found}"))
        .clone()
}

/// `authorizationState(authorizer, nonce)`: whether the voucher was used.
pub async fn is_used(tb: &Testbed, authorizer: Address, nonce: B256) -> bool {
    let data = authorizationStateCall { authorizer, nonce }.abi_encode();
    let call = json!({"to": tb.m["usdc"], "data": hex::encode_prefixed(data)});
    let result = tb.rpc("eth_call", json!([call, "latest"])).await;
    let bytes = hex::decode(result.as_str().unwrap()).unwrap();
    authorizationStateCall::abi_decode_returns(&bytes).unwrap()
}

/// What the chain had settled before the test's campaign started.
pub struct Baseline {
    settled: HashSet<B256>,
    paid_to_workers: U256,
}

pub async fn baseline(s: &Setup) -> Baseline {
    Baseline {
        settled: settled(&s.tb).await.into_keys().collect(),
        paid_to_workers: paid_to_workers(&s.tb).await,
    }
}

/// The campaign's vouchers the chain settled since `before`.
async fn settled_since(s: &Setup, before: &Baseline) -> BTreeMap<B256, Settled> {
    let mut now = settled(&s.tb).await;
    now.retain(|nonce, _| !before.settled.contains(nonce));
    now
}

fn amount(line: &Value) -> U256 {
    line["amount"].as_str().unwrap().parse().unwrap()
}

/// The money invariants of campaign `name`, judged on chain (see [`assert_campaigns_match_chain`]).
pub async fn assert_books_match_chain(
    s: &Setup,
    name: &str,
    status: &ExperimentCampaignStatus,
    before: &Baseline,
) {
    assert_campaigns_match_chain(s, &[(name, status)], before).await;
}

/// The money invariants of every campaign paid from the testbed since `before`, judged on chain:
/// every settled voucher is one recorded experiment's (paid once, never lost), every experiment
/// is one line and one count in its campaign's status, and what the books say was paid is what
/// the chain moved.
pub async fn assert_campaigns_match_chain(
    s: &Setup,
    campaigns: &[(&str, &ExperimentCampaignStatus)],
    before: &Baseline,
) {
    let names: Vec<&str> = campaigns.iter().map(|(n, _)| *n).collect();
    let lines = assert_lines_match_chain(s, &names, before).await;
    for (name, status) in campaigns {
        let mine: Vec<&Value> = lines
            .iter()
            .filter(|l| l["campaign_name"] == *name)
            .collect();
        assert_eq!(
            mine.len() as u32,
            status.succeeded + status.failed,
            "{name}: results.jsonl and status disagree: {mine:#?}\n{status:?}"
        );
        assert!(
            status.ledger.is_empty(),
            "{name}: left in the ledger: {status:?}"
        );
        let recorded: U256 = mine.iter().map(|l| amount(l)).sum();
        let spent = autoresearch_coordinator::usdc::Usdc::from_atomic(recorded.to::<u128>());
        assert_eq!(
            status.spent.as_deref(),
            Some(spent.to_string().as_str()),
            "{name}"
        );
    }
}

/// results.jsonl of campaigns `names` against the chain, whatever their status says (or after
/// they are deleted): each experiment recorded once, every settled voucher since `before`
/// recorded with its amount, every line's claim of payment true on chain, and the payees
/// received exactly that. Returns the lines.
pub async fn assert_lines_match_chain(s: &Setup, names: &[&str], before: &Baseline) -> Vec<Value> {
    let lines: Vec<Value> = results(s.data.path())
        .into_iter()
        .filter(|l| names.iter().any(|n| l["campaign_name"] == *n))
        .collect();
    for name in names {
        let mine: Vec<Value> = lines
            .iter()
            .filter(|l| l["campaign_name"] == *name)
            .cloned()
            .collect();
        assert_eq!(
            unique_ids(&mine),
            mine.len(),
            "{name}: recorded twice: {mine:#?}"
        );
    }
    let by_nonce: BTreeMap<B256, &Value> = lines
        .iter()
        .map(|l| (l["nonce"].as_str().unwrap().parse().unwrap(), l))
        .collect();
    let settled = settled_since(s, before).await;
    for (nonce, paid) in &settled {
        let line = by_nonce.get(nonce).unwrap_or_else(|| {
            panic!("voucher {nonce} was settled ({paid:?}) but no experiment records it: paid twice or lost\n{lines:#?}")
        });
        assert_eq!(amount(line), paid.amount, "{line}");
    }
    for (nonce, line) in &by_nonce {
        let on_chain = is_used(&s.tb, s.tb.payer(), *nonce).await;
        assert_eq!(
            amount(line) > U256::ZERO,
            on_chain,
            "the line says paid {} but authorizationState is {on_chain}: {line}",
            amount(line)
        );
    }
    let moved: U256 = settled.values().map(|p| p.amount).sum();
    assert_eq!(paid_to_workers(&s.tb).await - before.paid_to_workers, moved);
    let recorded: U256 = lines.iter().map(amount).sum();
    assert_eq!(recorded, moved, "results.jsonl's amounts against the chain");
    lines
}
