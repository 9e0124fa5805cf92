//! `audit`: results.jsonl and the ledger against the chain. Every recorded voucher is looked up
//! with `authorizationState`; the payer's `AuthorizationUsed` logs give the transactions and
//! show authorizations no record names.

use std::collections::{HashMap, HashSet};

use alloy::primitives::{Address, B256};

use super::{ChainError, UsdcChain};
use crate::crd::LedgerEntry;
use crate::payment::Voucher;
use crate::results::ResultRecord;
use crate::usdc::Usdc;

/// The voucher fields a result line carries, for the audit (the rest default).
pub fn voucher_fields(entry: &LedgerEntry) -> ResultRecord {
    let voucher = serde_json::from_str::<Voucher>(&entry.payment).ok();
    ResultRecord {
        nonce: Some(entry.nonce.clone()),
        payer: voucher.as_ref().map(|v| v.from.to_string()),
        asset: voucher.as_ref().map(|v| v.asset.to_string()),
        valid_before: Some(entry.valid_before),
        ..ResultRecord::default()
    }
}

/// What the chain says of one recorded or in-flight voucher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// Recorded as paid, and the nonce is used.
    Paid,
    /// Recorded as unpaid, and the nonce is unused.
    Unpaid,
    /// Not decided yet: unused and still live (or in flight).
    Uncertain,
    /// The books and the chain disagree.
    Mismatch(String),
    /// The line names no voucher (written before lines carried one).
    Unchecked,
}

/// Judges a record: what it says was paid, whether the nonce is used, and whether it can still
/// be (its `validBefore` is ahead of the chain's clock).
pub fn judge(recorded: Usdc, used: bool, live: bool) -> Finding {
    match (recorded > Usdc::ZERO, used) {
        (true, true) => Finding::Paid,
        (false, false) if live => Finding::Uncertain,
        (false, false) => Finding::Unpaid,
        (false, true) => Finding::Mismatch("paid on chain, recorded as unpaid".into()),
        (true, false) if live => Finding::Uncertain,
        (true, false) => {
            Finding::Mismatch("recorded as paid, but the voucher expired unused on chain".into())
        }
    }
}

/// One line of the audit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// The campaign's experiment id.
    pub experiment_id: String,
    /// `results.jsonl` or `ledger`.
    pub source: &'static str,
    /// The voucher's nonce, if known.
    pub nonce: Option<B256>,
    /// What the books say was paid.
    pub recorded: Usdc,
    /// The verdict.
    pub finding: Finding,
    /// The transaction that used the nonce, from the logs.
    pub tx: Option<B256>,
}

/// The whole audit.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// One per record and ledger entry.
    pub lines: Vec<Line>,
    /// Authorizations the payer used on chain that no record or entry names (other campaigns,
    /// or payments whose record was lost).
    pub unrecorded: Vec<B256>,
}

impl Report {
    /// Whether anything disagrees.
    pub fn has_mismatch(&self) -> bool {
        self.lines
            .iter()
            .any(|l| matches!(l.finding, Finding::Mismatch(_)))
    }
}

/// A voucher as the books know it.
struct Booked {
    experiment_id: String,
    source: &'static str,
    voucher: Option<(Address, Address, B256, u64)>,
    recorded: Usdc,
}

fn booked_record(r: &ResultRecord) -> Booked {
    let parse = || -> Option<(Address, Address, B256, u64)> {
        Some((
            r.asset.as_deref()?.parse().ok()?,
            r.payer.as_deref()?.parse().ok()?,
            r.nonce.as_deref()?.parse().ok()?,
            r.valid_before?,
        ))
    };
    Booked {
        experiment_id: r.experiment_id.clone(),
        source: "results.jsonl",
        voucher: parse(),
        recorded: r
            .amount
            .as_deref()
            .and_then(|a| Usdc::parse_atomic(a).ok())
            .unwrap_or_default(),
    }
}

fn booked_entry(e: &LedgerEntry) -> Booked {
    let voucher = serde_json::from_str::<Voucher>(&e.payment).ok();
    Booked {
        experiment_id: e.experiment_id.clone(),
        source: "ledger",
        voucher: voucher.map(|v| (v.asset, v.from, v.nonce, v.valid_before)),
        recorded: Usdc::parse_atomic(&e.amount).unwrap_or_default(),
    }
}

/// Audits `records` and the in-flight `ledger` against `chain`.
pub async fn audit(
    chain: &UsdcChain,
    records: &[ResultRecord],
    ledger: &[LedgerEntry],
) -> Result<Report, ChainError> {
    let (_, now) = chain.head().await?;
    let booked: Vec<Booked> = records
        .iter()
        .map(booked_record)
        .chain(ledger.iter().map(booked_entry))
        .collect();
    let used = used_by_payers(chain, &booked).await?;
    let mut report = Report::default();
    let mut paid_once = HashSet::new();
    for b in &booked {
        let line = judge_booked(chain, b, now, &used).await?;
        if line.finding == Finding::Paid && !paid_once.insert(b.experiment_id.clone()) {
            report.lines.push(Line {
                finding: Finding::Mismatch("a second paid record of this experiment".into()),
                ..line
            });
            continue;
        }
        report.lines.push(line);
    }
    let known: HashSet<B256> = booked.iter().filter_map(|b| Some(b.voucher?.2)).collect();
    report.unrecorded = used
        .keys()
        .filter(|n| !known.contains(*n))
        .copied()
        .collect();
    report.unrecorded.sort();
    Ok(report)
}

async fn judge_booked(
    chain: &UsdcChain,
    b: &Booked,
    now: u64,
    used: &HashMap<B256, B256>,
) -> Result<Line, ChainError> {
    let Some((asset, payer, nonce, valid_before)) = b.voucher else {
        return Ok(Line {
            experiment_id: b.experiment_id.clone(),
            source: b.source,
            nonce: None,
            recorded: b.recorded,
            finding: Finding::Unchecked,
            tx: None,
        });
    };
    let is_used = chain.authorization_used(asset, payer, nonce).await?;
    let finding = if b.source == "ledger" {
        // In flight: nothing is final yet, whatever the chain says.
        Finding::Uncertain
    } else {
        judge(b.recorded, is_used, now < valid_before)
    };
    Ok(Line {
        experiment_id: b.experiment_id.clone(),
        source: b.source,
        nonce: Some(nonce),
        recorded: b.recorded,
        finding,
        tx: used.get(&nonce).copied(),
    })
}

/// nonce → transaction of every authorization the books' payers used, from the logs.
async fn used_by_payers(
    chain: &UsdcChain,
    booked: &[Booked],
) -> Result<HashMap<B256, B256>, ChainError> {
    let payers: HashSet<(Address, Address)> = booked
        .iter()
        .filter_map(|b| b.voucher.map(|(asset, payer, ..)| (asset, payer)))
        .collect();
    let (latest, _) = chain.head().await?;
    let mut used = HashMap::new();
    for (asset, payer) in payers {
        let from = latest.saturating_sub(super::MAX_LOG_RANGE);
        for log in chain.used_authorizations(asset, payer, None, from).await? {
            used.insert(log.nonce, log.tx);
        }
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_books_and_the_chain_must_agree_once_the_voucher_is_dead() {
        let paid = Usdc::from_atomic(10_000);
        assert_eq!(judge(paid, true, false), Finding::Paid);
        assert_eq!(judge(Usdc::ZERO, false, false), Finding::Unpaid);
        assert_eq!(judge(paid, false, true), Finding::Uncertain);
        assert!(matches!(judge(paid, false, false), Finding::Mismatch(_)));
        assert!(matches!(
            judge(Usdc::ZERO, true, true),
            Finding::Mismatch(_)
        ));
    }
}
