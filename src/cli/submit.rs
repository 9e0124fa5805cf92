//! `autoresearch-coordinator submit <endpoint> <train.py>`: pay one experiment, run it, print the
//! result and append it to `$DATA_DIR/autoresearch/results.jsonl`.

use std::path::PathBuf;
use std::time::Duration;

use alloy::primitives::Address;
use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};

use super::probe::parse_network;
use crate::crd::Network;
use crate::experiment;
use crate::payment::{
    self, ExperimentRequest, PaymentError, Policy, Prepared, RemoteSigner, RunOutcome,
    VoucherTerms, WorkerClient, WorkerError,
};
use crate::results::{self, ResultRecord, ResultsLog};
use crate::usdc::Usdc;

/// Largest train.py accepted: the worker API carries it inline in JSON.
const MAX_TRAIN_PY_BYTES: u64 = 512 * 1024;

/// Arguments of `submit`.
#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// Worker service URL, e.g. https://host/services/autoresearch-worker.
    pub endpoint: String,
    /// Path of the train.py to run.
    pub train_py: PathBuf,
    /// Config object sent with train.py (JSON).
    #[arg(long, default_value = "{}")]
    pub config: String,
    /// Most USDC this experiment may cost; without it a default cap of 0.1 USDC applies.
    #[arg(long)]
    pub max_price: Option<Usdc>,
    /// Networks you agree to pay on (repeatable): base-sepolia, base, or CAIP-2 ids.
    #[arg(long = "network", value_parser = parse_network, default_value = "base-sepolia")]
    pub networks: Vec<Network>,
    /// Token contracts accepted besides USDC (repeatable).
    #[arg(long = "extra-asset")]
    pub extra_assets: Vec<Address>,
    /// Paying address; default: the remote signer's first key.
    #[arg(long, env = "REMOTE_SIGNER_ADDRESS")]
    pub from: Option<Address>,
    /// Remote signer URL.
    #[arg(long, env = "REMOTE_SIGNER_URL", default_value = payment::signer::DEFAULT_SIGNER_URL)]
    pub signer_url: String,
    /// Seconds the experiment may take; the voucher stays valid that long plus a margin.
    #[arg(long, default_value_t = payment::DEFAULT_RUN_TIMEOUT.as_secs())]
    pub timeout: u64,
    /// ERC-8004 agent id of the worker, recorded with the result.
    #[arg(long)]
    pub agent_id: Option<u64>,
    /// Folder holding autoresearch/results.jsonl.
    #[arg(long, env = "DATA_DIR", default_value = "/data")]
    pub data_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub(super) async fn run(args: SubmitArgs) -> anyhow::Result<()> {
    let request = build_request(&args)?;
    let max_price = args.max_price.unwrap_or(payment::DEFAULT_MAX_PRICE);
    eprintln!(
        "max price: {max_price} USDC per experiment{}",
        if args.max_price.is_none() {
            " (default cap; pass --max-price to change it)"
        } else {
            ""
        }
    );
    let policy = Policy {
        networks: args.networks.clone(),
        max_price,
        extra_assets: args.extra_assets.clone(),
    };
    let run_timeout = Duration::from_secs(args.timeout.max(1));
    let worker = WorkerClient::new(&args.endpoint, run_timeout)?;
    let signer = RemoteSigner::new(&args.signer_url, std::env::var("REMOTE_SIGNER_TOKEN").ok())?;
    let terms = VoucherTerms {
        experiment_id: request.experiment_id.clone(),
        nonce: payment::new_nonce(),
        from: args.from,
        run_timeout,
    };

    let prepared = payment::prepare(&worker, &signer, &policy, &terms)
        .await
        .map_err(|e| explain(e, &worker))?;
    let outcome = run_or_recover(&worker, &prepared, &request).await?;

    let record = record(&args, &request, &prepared, &outcome);
    let log = ResultsLog::new(results::default_path(&args.data_dir));
    log.append(&record).await.with_context(|| {
        format!(
            "the experiment ran but its result could not be written to {}; set DATA_DIR to a writable folder (result: {})",
            log.path().display(),
            serde_json::to_string(&record).unwrap_or_default()
        )
    })?;
    print_result(&args, &record, &prepared, &outcome, &log)?;
    if outcome.result.status != "completed" {
        bail!(
            "experiment {} ran but ended as {:?} (paid; result recorded in {})",
            request.experiment_id,
            outcome.result.status,
            log.path().display()
        );
    }
    Ok(())
}

fn build_request(args: &SubmitArgs) -> anyhow::Result<ExperimentRequest> {
    let size = std::fs::metadata(&args.train_py)
        .with_context(|| format!("cannot read {}", args.train_py.display()))?
        .len();
    if size > MAX_TRAIN_PY_BYTES {
        bail!(
            "{} is {size} bytes; the worker API takes train.py inline, at most {MAX_TRAIN_PY_BYTES} bytes",
            args.train_py.display()
        );
    }
    let train_py = std::fs::read_to_string(&args.train_py)
        .with_context(|| format!("cannot read {} as UTF-8 text", args.train_py.display()))?;
    let config: Value = serde_json::from_str(&args.config)
        .with_context(|| format!("--config is not JSON: {}", args.config))?;
    if !config.is_object() {
        bail!("--config must be a JSON object such as '{{\"lr\": 0.01}}'");
    }
    Ok(ExperimentRequest {
        experiment_id: experiment::experiment_id(&train_py, &config),
        train_py,
        config,
    })
}

/// Sends the voucher; when the answer is lost (timeout, cut connection) asks the worker for the
/// stored result rather than paying again.
async fn run_or_recover(
    worker: &WorkerClient,
    prepared: &Prepared,
    request: &ExperimentRequest,
) -> anyhow::Result<RunOutcome> {
    match worker.run(prepared.voucher(), request).await {
        Ok(outcome) => Ok(outcome),
        Err(
            e @ (WorkerError::Timeout { .. }
            | WorkerError::Interrupted { .. }
            | WorkerError::Unreachable { .. }),
        ) => {
            eprintln!("the answer was lost ({e}); asking the worker for the stored result");
            match worker.recover(request).await {
                Ok(Some(result)) => Ok(RunOutcome {
                    result,
                    settlement: None,
                    job: None,
                }),
                Ok(None) => Err(anyhow::anyhow!(
                    "{e}; the worker has no result for {} either, so the voucher was most likely not spent",
                    request.experiment_id
                )),
                Err(recover_error) => Err(anyhow::anyhow!(
                    "{e}; recovering the result failed too: {recover_error}"
                )),
            }
        }
        Err(e) => Err(explain(PaymentError::Worker(e), worker)),
    }
}

fn explain(e: PaymentError, worker: &WorkerClient) -> anyhow::Error {
    let what = match &e {
        PaymentError::Refused(_) => "nothing was signed or paid",
        PaymentError::Signer(_) => "nothing was paid",
        PaymentError::Worker(_) => "the experiment did not run",
    };
    anyhow::anyhow!("{e}").context(format!("{} ({what})", worker.endpoint()))
}

fn record(
    args: &SubmitArgs,
    request: &ExperimentRequest,
    prepared: &Prepared,
    outcome: &RunOutcome,
) -> ResultRecord {
    let voucher = prepared.voucher();
    ResultRecord {
        experiment_id: request.experiment_id.clone(),
        train_hash: experiment::train_hash(&request.train_py),
        val_bpb: outcome.result.val_bpb,
        worker_endpoint: args.endpoint.clone(),
        worker_agent_id: args.agent_id,
        timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        payment_tx: outcome.transaction().map(str::to_string),
        network: voucher.map(|v| v.network.to_string()),
        amount: Some(
            voucher
                .map_or(Usdc::ZERO, |v| v.amount)
                .atomic()
                .to_string(),
        ),
        status: Some(outcome.result.status.clone()),
        config: Some(request.config.clone()),
        ..ResultRecord::default()
    }
}

fn print_result(
    args: &SubmitArgs,
    record: &ResultRecord,
    prepared: &Prepared,
    outcome: &RunOutcome,
    log: &ResultsLog,
) -> anyhow::Result<()> {
    let voucher = prepared.voucher();
    if args.json {
        let out = json!({
            "record": record,
            "result": outcome.result.raw,
            "settlement": outcome.settlement,
            "voucher": voucher.map(|v| json!({
                "payer": v.from, "payTo": v.pay_to, "nonce": v.nonce,
                "amount": v.amount.atomic().to_string(), "price": v.amount.to_string(),
                "network": v.network.to_string(), "validBefore": v.valid_before,
            })),
            "resultsFile": log.path(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let val = record
        .val_bpb
        .map_or_else(|| "-".to_string(), |v| format!("{v:.6}"));
    println!(
        "experiment {}: {}",
        record.experiment_id, outcome.result.status
    );
    println!("val_bpb    {val}");
    match voucher {
        Some(v) => println!(
            "paid       {} USDC ({} atomic) on {} from {} to {}",
            v.amount,
            v.amount.atomic(),
            v.network,
            v.from,
            v.pay_to
        ),
        None => println!("paid       nothing (the worker asked for no payment)"),
    }
    println!(
        "tx         {}",
        record
            .payment_tx
            .as_deref()
            .unwrap_or("(the gate reported none)")
    );
    println!("recorded   {}", log.path().display());
    Ok(())
}
