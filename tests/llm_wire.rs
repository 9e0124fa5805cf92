//! The llm proposer against the real LiteLLM proxy (PyPI `litellm[proxy]==1.106.12`, installed by
//! `scripts/install-llm.sh`) in front of the deterministic proposer of `testbed/llm/proposer.py`,
//! all on loopback. LiteLLM takes about 8 s to start, so one instance serves every test of this
//! binary.
//!
//! Where LiteLLM does not pass a case through as an OpenAI endpoint would, the case is also run
//! against the proposer directly:
//! - LiteLLM relays a provider's `Retry-After` as `llm_provider-retry-after`; both are honoured.
//! - LiteLLM without a database answers a request without a key with a plain-text 500 (its
//!   error handler needs the `prisma` module); the "no Authorization header" case is checked on
//!   the proposer's request log instead.

mod llm_support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use autoresearch_coordinator::crd::LlmSpec;
use autoresearch_coordinator::experiment::train_hash;
use autoresearch_coordinator::strategy::llm::{
    LlmError, LlmLimits, LlmProposer, ProposalContext, ProposeOutcome, RefusalKind,
    program_or_default,
};
use autoresearch_coordinator::strategy::train_script::{Template, parses};
use llm_support::{
    MASTER_KEY, UPSTREAM_KEY, install_litellm, repo, run_train_py, start_litellm, start_proposer,
    wait_until_live,
};

/// A train.py shaped like autoresearch's: constants with comments, val_bpb printed last.
const TRAIN: &str = "\
import math

DEPTH = 4  # layers
LEARNING_RATE = 0.05  # step size
WARMUP_STEPS = 10
SEED = 42

def main():
    loss = abs(math.log(LEARNING_RATE / 0.02)) + abs(DEPTH - 6) * 0.1
    print(f\"val_bpb: {1.0 + loss:.6f}\")

main()
";

struct Fixture {
    litellm: String,
    proposer: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
    /// Kept, never waited for: the watchdog ends them when this binary exits.
    _servers: Vec<Child>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(start)
}

fn start() -> Fixture {
    let litellm = install_litellm();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.jsonl");
    let (proposer, proposer_url) = start_proposer(&log);
    let config = dir.path().join("litellm.yaml");
    std::fs::write(&config, litellm_config(&proposer_url)).unwrap();
    let (server, url) = start_litellm(&litellm, &config, dir.path());
    let watchdog = watchdog(&[&proposer, &server]);
    wait_until_live(&url, dir.path());
    Fixture {
        litellm: format!("{url}/v1"),
        proposer: proposer_url,
        log,
        _dir: dir,
        _servers: vec![proposer, server, watchdog],
    }
}

/// Every model name goes to the proposer, which reads its scenario from it; `badkey` is sent
/// with a key the proposer refuses, so LiteLLM relays a real 401.
fn litellm_config(proposer: &str) -> String {
    format!(
        r#"model_list:
  - model_name: "badkey"
    litellm_params: {{model: "openai/edit", api_base: "{proposer}", api_key: "not-the-key", max_retries: 0}}
  - model_name: "*"
    litellm_params: {{model: "openai/*", api_base: "{proposer}", api_key: "{UPSTREAM_KEY}", max_retries: 0}}
litellm_settings:
  num_retries: 0
  drop_params: true
router_settings:
  num_retries: 0
  disable_cooldowns: true
general_settings:
  master_key: {MASTER_KEY}
"#
    )
}

/// Statics are never dropped, so a shell waits for this test binary to exit and then ends the
/// servers' process groups.
fn watchdog(children: &[&Child]) -> Child {
    let groups: Vec<String> = children.iter().map(|c| format!("-{}", c.id())).collect();
    let script = format!(
        "while kill -0 {} 2>/dev/null; do sleep 0.5; done; kill -- {} 2>/dev/null",
        std::process::id(),
        groups.join(" ")
    );
    Command::new("bash")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the watchdog")
}

fn spec(endpoint: &str, model: &str) -> LlmSpec {
    serde_json::from_value(serde_json::json!({
        "endpoint": endpoint, "model": model, "temperature": 0.7, "maxTokens": 2000
    }))
    .unwrap()
}

fn quick() -> LlmLimits {
    LlmLimits {
        request_timeout: Duration::from_secs(20),
        backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(400),
        max_retry_after: Duration::from_secs(5),
        ..LlmLimits::default()
    }
}

fn proposer(endpoint: &str, model: &str, key: Option<&str>, limits: LlmLimits) -> LlmProposer {
    LlmProposer::with_limits(
        &spec(endpoint, model),
        key.map(String::from),
        program_or_default(None),
        limits,
    )
    .unwrap()
}

/// A context on TRAIN with no results yet.
fn context<'a>(tried: &'a (dyn Fn(&str) -> bool + Sync)) -> ProposalContext<'a> {
    ProposalContext {
        base_train_py: TRAIN,
        recent: &[],
        noise_floor: 0.002,
        tried,
    }
}

async fn ask(endpoint: &str, model: &str, key: Option<&str>, limits: LlmLimits) -> ProposeOutcome {
    let never = |_: &str| false;
    let ctx = context(&never);
    proposer(endpoint, model, key, limits)
        .propose(&ctx, 10)
        .await
}

async fn via_litellm(model: &str) -> ProposeOutcome {
    ask(&fixture().litellm, model, Some(MASTER_KEY), quick()).await
}

fn kinds(outcome: &ProposeOutcome) -> Vec<RefusalKind> {
    outcome.refusals.iter().map(|r| r.kind).collect()
}

/// The requests the proposer received for a model, in order.
fn requests(model: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(&fixture().log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["model"] == model)
        .collect()
}

/// A usable proposal changes exactly one constant of TRAIN and is valid Python.
fn assert_one_constant_changed(train_py: &str) {
    parses(train_py).unwrap();
    let (before, after) = (
        Template::new(TRAIN).unwrap(),
        Template::new(train_py).unwrap(),
    );
    let changed: Vec<_> = ["DEPTH", "LEARNING_RATE", "WARMUP_STEPS", "SEED"]
        .into_iter()
        .filter(|n| before.constant(n) != after.constant(n))
        .collect();
    assert_eq!(changed.len(), 1, "{train_py}");
}

#[tokio::test]
async fn a_valid_edit_is_proposed_in_one_call() {
    let outcome = via_litellm("edit").await;
    let proposal = outcome.proposal.expect("a proposal");
    assert_eq!((outcome.calls, outcome.refusals.len()), (1, 0));
    assert_one_constant_changed(&proposal.train_py);
    assert!(
        proposal.description.contains("->"),
        "{}",
        proposal.description
    );
    // What the model saw: the program as the system message, the full train.py, the noise floor
    // and the reply format in the last user message, and our sampling settings.
    let sent = &requests("edit")[0]["request"];
    assert_eq!(sent["messages"][0]["role"], "system");
    assert!(
        sent["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("val_bpb")
    );
    let user = sent["messages"][1]["content"].as_str().unwrap();
    assert!(
        user.contains(TRAIN) && user.contains("Noise floor: 0.002") && user.contains("\"changes\"")
    );
    assert_eq!(sent["temperature"], 0.7);
    assert_eq!(sent["max_tokens"], 2000);
}

#[tokio::test]
async fn prose_around_json_is_accepted() {
    let outcome = via_litellm("prose").await;
    assert_eq!(outcome.calls, 1, "{outcome:?}");
    assert_one_constant_changed(&outcome.proposal.unwrap().train_py);
}

#[tokio::test]
async fn a_whole_file_reply_is_accepted() {
    let outcome = via_litellm("whole").await;
    assert_eq!(outcome.calls, 1, "{outcome:?}");
    assert_one_constant_changed(&outcome.proposal.unwrap().train_py);
}

/// The model's first reply is unusable; it is told why and its second reply is used.
async fn refused_then_fixed(model: &str, kind: RefusalKind, reason: &str) {
    let outcome = via_litellm(model).await;
    assert_eq!(kinds(&outcome), [kind], "{outcome:?}");
    assert_eq!(outcome.calls, 2);
    assert_one_constant_changed(&outcome.proposal.expect("the re-asked proposal").train_py);
    let second = &requests(model)[1]["request"]["messages"];
    let last = second.as_array().unwrap().last().unwrap();
    assert_eq!(last["role"], "user");
    assert!(last["content"].as_str().unwrap().contains(reason), "{last}");
}

#[tokio::test]
async fn an_edit_that_does_not_apply_is_re_asked() {
    refused_then_fixed(
        "noapply",
        RefusalKind::NoMatch,
        "does not occur in train.py",
    )
    .await;
}

#[tokio::test]
async fn broken_python_is_re_asked() {
    refused_then_fixed("broken", RefusalKind::SyntaxError, "not valid Python").await;
}

#[tokio::test]
async fn garbage_is_re_asked() {
    refused_then_fixed("garbage", RefusalKind::Unparseable, "found neither").await;
}

#[tokio::test]
async fn a_wrong_key_is_reported_as_such() {
    // LiteLLM without a database answers a key other than its master key with
    // 400 no_db_connection; a provider refusing LiteLLM's key comes back as 401.
    let outcome = ask(&fixture().litellm, "edit", Some("sk-wrong"), quick()).await;
    assert!(
        matches!(outcome.error, Some(LlmError::WrongKey { status: 400, .. })),
        "{outcome:?}"
    );
    let outcome = via_litellm("badkey").await;
    assert!(
        matches!(outcome.error, Some(LlmError::WrongKey { status: 401, .. })),
        "{outcome:?}"
    );
    assert_eq!(outcome.calls, 1, "a wrong key is not retried");
    // Directly: no key, no Authorization header, and the provider's 401.
    let outcome = ask(&fixture().proposer, "nokey-probe", None, quick()).await;
    assert!(matches!(
        outcome.error,
        Some(LlmError::WrongKey { status: 401, .. })
    ));
    let sent = requests("nokey-probe");
    assert_eq!(sent.len(), 1);
    assert!(sent[0]["authorization"].is_null(), "{}", sent[0]);
    // With a key, it is sent as a bearer token.
    let outcome = ask(
        &fixture().proposer,
        "edit-direct",
        Some(UPSTREAM_KEY),
        quick(),
    )
    .await;
    assert!(outcome.proposal.is_some(), "{outcome:?}");
    assert_eq!(
        requests("edit-direct")[0]["authorization"],
        format!("Bearer {UPSTREAM_KEY}")
    );
}

#[tokio::test]
async fn rate_limits_honour_retry_after() {
    fixture();
    let started = Instant::now();
    let outcome = via_litellm("limit429-2").await;
    assert_eq!(kinds(&outcome), [RefusalKind::ModelError], "{outcome:?}");
    assert!(outcome.proposal.is_some());
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited {:?}",
        started.elapsed()
    );
    // Directly, as a plain OpenAI endpoint sends it (`Retry-After`); longer than the bound:
    // this round gives up at once, without waiting an hour.
    let started = Instant::now();
    let outcome = ask(
        &fixture().proposer,
        "limit429-3600",
        Some(UPSTREAM_KEY),
        quick(),
    )
    .await;
    assert!(
        matches!(
            outcome.error,
            Some(LlmError::RateLimited { retry_after: Some(d), .. }) if d == Duration::from_secs(3600)
        ),
        "{outcome:?}"
    );
    assert_eq!(outcome.calls, 1);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_and_bounded() {
    let outcome = via_litellm("fail500-1").await;
    assert_eq!(kinds(&outcome), [RefusalKind::ModelError], "{outcome:?}");
    assert!(outcome.proposal.is_some());
    // Always failing: stops after the per-proposal call limit with the server's error.
    let limits = LlmLimits {
        max_calls_per_proposal: 3,
        ..quick()
    };
    let outcome = ask(&fixture().litellm, "fail500-99", Some(MASTER_KEY), limits).await;
    assert_eq!(outcome.calls, 3);
    assert!(outcome.proposal.is_none());
    assert!(
        matches!(outcome.error, Some(LlmError::Server { status: 500, .. })),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_slow_reply_times_out_and_a_patient_one_waits() {
    let impatient = LlmLimits {
        request_timeout: Duration::from_secs(1),
        max_calls_per_proposal: 2,
        ..quick()
    };
    let litellm = &fixture().litellm;
    let started = Instant::now();
    let outcome = ask(litellm, "slow-3", Some(MASTER_KEY), impatient).await;
    assert_eq!(
        kinds(&outcome),
        [RefusalKind::ModelError, RefusalKind::ModelError]
    );
    assert!(
        matches!(outcome.error, Some(LlmError::Timeout(_))),
        "{outcome:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let outcome = ask(&fixture().litellm, "slow-2", Some(MASTER_KEY), quick()).await;
    assert_eq!(outcome.calls, 1, "{outcome:?}");
    assert!(outcome.proposal.is_some());
}

#[tokio::test]
async fn tried_train_py_are_refused_and_re_asked() {
    // Everything the model proposes first is "already tried": it is re-asked, and the second
    // answer (one more assistant turn) differs.
    let litellm = &fixture().litellm;
    let proposer = proposer(litellm, "edit-tried", Some(MASTER_KEY), quick());
    let first = ask(litellm, "edit-tried", Some(MASTER_KEY), quick())
        .await
        .proposal
        .unwrap();
    let taken = train_hash(&first.train_py);
    let tried = |h: &str| h == taken;
    let outcome = proposer.propose(&context(&tried), 10).await;
    assert_eq!(kinds(&outcome), [RefusalKind::AlreadyTried], "{outcome:?}");
    assert_ne!(outcome.proposal.unwrap().train_py, first.train_py);
}

#[tokio::test]
async fn an_llm_lineage_improves_val_bpb_and_runs_only_usable_proposals() {
    use autoresearch_coordinator::strategy::llm::RecentResult;
    use autoresearch_coordinator::strategy::{Decision, decide};
    use std::collections::HashSet;

    let proposer = proposer(
        &fixture().litellm,
        "edit-lineage",
        Some(MASTER_KEY),
        quick(),
    );
    // examples/train_tiny.py trains a real character-level model in about a second.
    let tiny = std::fs::read_to_string(repo().join("examples/train_tiny.py")).unwrap();
    let start = run_train_py(&tiny).expect("the starting train.py runs");
    let (mut base, mut best) = (tiny.clone(), start);
    let mut tried: HashSet<String> = HashSet::from([train_hash(&tiny)]);
    let mut recent: Vec<RecentResult> = Vec::new();
    let (mut calls, mut refusals, mut kept) = (0, 0, 0);
    for _ in 0..12 {
        let seen = tried.clone();
        let is_tried = move |h: &str| seen.contains(h);
        let ctx = ProposalContext {
            base_train_py: &base,
            recent: &recent,
            noise_floor: 0.002,
            tried: &is_tried,
        };
        let outcome = proposer.propose(&ctx, 50 - calls).await;
        calls += outcome.calls;
        refusals += outcome.refusals.len() as u32;
        let proposal = outcome.proposal.expect("a proposal");
        // Only a usable proposal is run ("paid"): it parses and is new.
        parses(&proposal.train_py).unwrap();
        assert!(
            tried.insert(train_hash(&proposal.train_py)),
            "never run twice"
        );
        let val_bpb = run_train_py(&proposal.train_py);
        let decision = decide(Some(best), val_bpb, 0.002);
        if let (Decision::Keep, Some(v)) = (decision, val_bpb) {
            (base, best, kept) = (proposal.train_py, v, kept + 1);
        }
        recent.push(RecentResult {
            description: proposal.description,
            val_bpb,
            decision,
        });
    }
    eprintln!(
        "llm lineage: start {start:.6}, best {best:.6}, 12 experiments, {kept} kept, {calls} model calls, {refusals} refusals"
    );
    assert!(best < start - 0.002, "start {start}, best {best}");
}
