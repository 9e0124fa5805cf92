//! `autoresearch-coordinator probe <endpoint>`: what a worker charges, and whether it is free now.
//! Nothing is signed or paid.

use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};

use crate::crd::Network;
use crate::payment::{self, Policy, Quote, WorkerClient, x402};
use crate::usdc::Usdc;

/// Arguments of `probe`.
#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// Worker service URL, e.g. https://host/services/autoresearch-worker.
    pub endpoint: String,
    /// Networks you would pay on (repeatable): base-sepolia, base, or their CAIP-2 ids.
    #[arg(long = "network", value_parser = parse_network, default_value = "base-sepolia")]
    pub networks: Vec<Network>,
    /// Price cap in USDC used to say whether the offer is acceptable.
    #[arg(long)]
    pub max_price: Option<Usdc>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Parses `base-sepolia`, `base`, `eip155:84532` or `eip155:8453`. A `String` error because clap
/// shows it to the user as the reason the argument was refused.
pub(super) fn parse_network(s: &str) -> Result<Network, String> {
    Network::parse(s).ok_or_else(|| {
        format!("unknown network {s:?}: use base-sepolia, base, eip155:84532 or eip155:8453")
    })
}

pub(super) async fn run(args: ProbeArgs) -> anyhow::Result<()> {
    let worker = WorkerClient::new(&args.endpoint, Duration::from_secs(60))?;
    let policy = Policy {
        networks: args.networks.clone(),
        max_price: args.max_price.unwrap_or(payment::DEFAULT_MAX_PRICE),
        extra_assets: Vec::new(),
    };
    let (quote, health) = tokio::join!(worker.quote(), worker.health());
    let quote = quote.map_err(|e| {
        anyhow::anyhow!("{e}").context(format!("could not read the price of {}", worker.endpoint()))
    })?;
    let report = report(&worker, &quote, &health, &policy);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", human(&report));
    }
    Ok(())
}

/// The probe as JSON: the same facts the text output shows.
fn report(
    worker: &WorkerClient,
    quote: &Quote,
    health: &Result<payment::WorkerHealth, payment::WorkerError>,
    policy: &Policy,
) -> Value {
    let free = health.as_ref().ok().and_then(|h| h.busy).map(|busy| !busy);
    let (health_json, health_error) = match health {
        Ok(h) => (json!(h), Value::Null),
        Err(e) => (Value::Null, json!(e.to_string())),
    };
    let mut out = json!({
        "endpoint": worker.endpoint(),
        "free": free,
        "health": health_json,
        "healthError": health_error,
        "maxPrice": policy.max_price.to_string(),
        "networks": policy.networks.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
    });
    let Quote::Priced(required) = quote else {
        out["payment"] = json!("none");
        return out;
    };
    let chosen = x402::choose(required, policy);
    let rejections = chosen
        .as_ref()
        .err()
        .map(|e| e.rejections.clone())
        .unwrap_or_default();
    let options: Vec<Value> = required
        .accepts
        .iter()
        .enumerate()
        .map(|(i, r)| option(i + 1, r, &rejections))
        .collect();
    out["payment"] = json!("x402");
    out["x402Version"] = json!(required.version);
    out["source"] = json!(required.source);
    out["options"] = json!(options);
    out["chosen"] = match &chosen {
        Ok(offer) => json!({
            "price": offer.amount.to_string(),
            "amount": offer.amount.atomic().to_string(),
            "network": offer.network.to_string(),
            "caip2": offer.network.caip2(),
            "asset": offer.asset.to_checksum(None),
            "payTo": offer.pay_to.to_checksum(None),
            "maxTimeoutSeconds": offer.max_timeout_seconds,
            "eip712Domain": offer.domain,
        }),
        Err(_) => Value::Null,
    };
    if let Err(e) = &chosen {
        out["refusal"] = json!(e.to_string());
    }
    out
}

fn option(n: usize, requirement: &Value, rejections: &[x402::Rejection]) -> Value {
    let field = |k: &str| requirement.get(k).cloned().unwrap_or(Value::Null);
    let amount = requirement
        .get("amount")
        .or_else(|| requirement.get("maxAmountRequired"))
        .and_then(Value::as_str);
    let price = amount
        .and_then(|a| Usdc::parse_atomic(a).ok())
        .map(|u| u.to_string());
    let rejection = rejections.iter().find(|r| r.option == n);
    json!({
        "option": n,
        "scheme": field("scheme"),
        "network": field("network"),
        "amount": amount,
        "price": price,
        "asset": field("asset"),
        "payTo": field("payTo"),
        "acceptable": rejection.is_none(),
        "rule": rejection.map(|r| r.rule),
        "reason": rejection.map(|r| r.detail.clone()),
    })
}

/// A JSON value as the text a person reads: strings unquoted, null as "-".
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn human(r: &Value) -> String {
    let s = text;
    let mut out = format!("worker    {}\n", s(&r["endpoint"]));
    let free = match r["free"].as_bool() {
        Some(true) => "free".to_string(),
        Some(false) => "busy (running another experiment)".to_string(),
        None => format!("unknown ({})", s(&r["healthError"])),
    };
    if r["payment"] == "none" {
        out += "payment   none: the worker answered without asking for payment\n";
        out += &format!("status    {free}\n");
        return out;
    }
    out += &format!(
        "x402      v{} (requirements in the {})\n",
        s(&r["x402Version"]),
        s(&r["source"])
    );
    if let Some(c) = r["chosen"].as_object() {
        out += &chosen_lines(c);
    }
    out += &format!("status    {free}\n");
    let options = r["options"].as_array().cloned().unwrap_or_default();
    if options.len() > 1 || r["chosen"].is_null() {
        out.extend(options.iter().map(option_line));
    }
    out += &verdict_line(r);
    out
}

/// The requirement `submit` would pay.
fn chosen_lines(c: &serde_json::Map<String, Value>) -> String {
    let s = text;
    format!(
        "price     {} USDC ({} atomic units)\n\
         network   {} ({})\n\
         asset     {} (EIP-712 domain \"{}\" version {})\n\
         payee     {}\n",
        s(&c["price"]),
        s(&c["amount"]),
        s(&c["network"]),
        s(&c["caip2"]),
        s(&c["asset"]),
        s(&c["eip712Domain"]["name"]),
        s(&c["eip712Domain"]["version"]),
        s(&c["payTo"])
    )
}

/// One of the worker's payment options, and whether the campaign's rules accept it.
fn option_line(o: &Value) -> String {
    let s = text;
    let judged = if o["acceptable"] == true {
        "acceptable".to_string()
    } else {
        format!("refused by rule `{}`: {}", s(&o["rule"]), s(&o["reason"]))
    };
    format!(
        "option {}  {} on {}: {} USDC ({} atomic) of {} to {}: {judged}\n",
        s(&o["option"]),
        s(&o["scheme"]),
        s(&o["network"]),
        s(&o["price"]),
        s(&o["amount"]),
        s(&o["asset"]),
        s(&o["payTo"]),
    )
}

fn verdict_line(r: &Value) -> String {
    if r["chosen"].is_null() {
        let networks = r["networks"]
            .as_array()
            .map(|n| n.iter().map(text).collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        format!(
            "verdict   submit would refuse to pay (cap {} USDC, networks {networks})\n",
            text(&r["maxPrice"])
        )
    } else {
        format!(
            "verdict   acceptable under a cap of {} USDC\n",
            text(&r["maxPrice"])
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_whose_only_option_is_refused_shows_the_rule_and_the_verdict() {
        let report = json!({
            "endpoint": "http://127.0.0.1:9/",
            "free": true,
            "x402Version": 2,
            "source": "body",
            "chosen": null,
            "maxPrice": "0.05",
            "networks": ["base-sepolia", "eip155:31337"],
            "options": [{
                "option": 0, "scheme": "exact", "network": "eip155:1", "price": "0.10",
                "amount": "100000", "asset": "0xa0b8", "payTo": "0xbeef",
                "acceptable": false, "rule": "maxPrice", "reason": "0.10 USDC is above the cap"
            }]
        });
        let text = human(&report);
        assert!(text.contains("status    free\n"), "{text}");
        assert!(
            text.contains("option 0  exact on eip155:1: 0.10 USDC (100000 atomic) of 0xa0b8 to 0xbeef: refused by rule `maxPrice`: 0.10 USDC is above the cap\n"),
            "{text}"
        );
        assert!(
            text.ends_with("verdict   submit would refuse to pay (cap 0.05 USDC, networks base-sepolia, eip155:31337)\n"),
            "{text}"
        );
        assert!(!text.contains("payee"), "nothing was chosen: {text}");
    }

    #[test]
    fn the_chosen_requirement_is_shown_with_its_domain_and_payee() {
        let report = json!({
            "endpoint": "http://127.0.0.1:9/", "free": false, "x402Version": 2, "source": "header",
            "maxPrice": "1", "options": [{}],
            "chosen": {
                "price": "0.01", "amount": "10000", "network": "base-sepolia", "caip2": "eip155:84532",
                "asset": "0xa0b8", "eip712Domain": {"name": "USDC", "version": "2"}, "payTo": "0xbeef"
            }
        });
        let text = human(&report);
        assert!(
            text.contains("price     0.01 USDC (10000 atomic units)\nnetwork   base-sepolia (eip155:84532)\nasset     0xa0b8 (EIP-712 domain \"USDC\" version 2)\npayee     0xbeef\nstatus    busy"),
            "{text}"
        );
        assert!(
            !text.contains("option "),
            "a single option is not listed: {text}"
        );
        assert!(
            text.ends_with("verdict   acceptable under a cap of 1 USDC\n"),
            "{text}"
        );
    }
}
