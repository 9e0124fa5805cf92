//! The `ExperimentCampaign` custom resource: what a user asks for (spec) and what the controller
//! reports back (status).
//!
//! Every field carries a doc comment: kube-derive turns them into schema descriptions, so
//! `kubectl explain experimentcampaign.spec.budget` teaches the user. Validation lives in the
//! schema (patterns, ranges, enums) and in CEL rules where a rule spans fields, so that the API
//! server refuses a wrong manifest with a message naming the field. [`ExperimentCampaignSpec::validate`]
//! repeats the checks in Rust for the CLI and for campaigns stored before a rule existed.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::usdc::Usdc;

/// A USDC amount as a decimal string with at most 6 decimals, e.g. "0.05" or "12".
pub const USDC_PATTERN: &str = r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,6})?$";
/// An EVM address.
pub const ADDRESS_PATTERN: &str = r"^0x[0-9a-fA-F]{40}$";

/// Default noise floor: seed-to-seed noise of `val_bpb` is about 0.002 (docs/protocols.md §7).
pub const DEFAULT_NOISE_FLOOR: f64 = 0.002;
/// Default remote signer inside obol-stack: one per agent namespace.
pub const DEFAULT_REMOTE_SIGNER_URL: &str = "http://remote-signer:9000";
/// Default LLM endpoint: obol-stack's in-cluster LiteLLM (OpenAI-compatible).
pub const DEFAULT_LLM_ENDPOINT: &str = "http://litellm.llm.svc.cluster.local:4000/v1";
/// Default cap on model calls per campaign.
pub const DEFAULT_LLM_MAX_CALLS: u32 = 200;
/// Default 8004scan public API.
pub const DEFAULT_SCAN_API_URL: &str = "https://www.8004scan.io/api/v1/public";
/// Default eRPC endpoint inside obol-stack.
pub const DEFAULT_ERPC_URL: &str = "http://erpc.erpc.svc.cluster.local:4000/rpc";
/// Skill that autoresearch workers register under (OASF 0.8 to 1.0).
pub const DEFAULT_SKILL: &str = "devops_mlops/model_versioning";
/// Size of the leaderboard kept in status; the full history is in results.jsonl.
pub const LEADERBOARD_SIZE: usize = 10;

/// An autoresearch campaign: many short paid training experiments of a `train.py`, searching
/// for the lowest `val_bpb`.
// Each printcolumn(...) says `type_ = "string"`; clippy reads those as one repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "autoresearch.obol.org",
    version = "v1alpha1",
    kind = "ExperimentCampaign",
    plural = "experimentcampaigns",
    singular = "experimentcampaign",
    shortname = "campaign",
    shortname = "campaigns",
    shortname = "ec",
    category = "autoresearch",
    namespaced,
    status = "ExperimentCampaignStatus",
    doc = "An autoresearch campaign: many short paid training experiments of a train.py on remote GPU workers, keeping what lowers val_bpb.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Lifecycle phase"
    ),
    printcolumn(
        name = "Done",
        type_ = "string",
        json_path = ".status.progress",
        description = "Finished experiments / maxExperiments"
    ),
    printcolumn(
        name = "Running",
        type_ = "integer",
        json_path = ".status.running",
        description = "Experiments in flight"
    ),
    printcolumn(
        name = "Best",
        type_ = "number",
        json_path = ".status.best.valBpb",
        description = "Best val_bpb so far (lower is better)"
    ),
    printcolumn(
        name = "Spent",
        type_ = "string",
        json_path = ".status.spent",
        description = "USDC paid so far"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Strategy",
        type_ = "string",
        json_path = ".spec.search.strategy",
        description = "How experiments are proposed",
        priority = "1"
    ),
    printcolumn(
        name = "Workers",
        type_ = "integer",
        json_path = ".status.workers.eligible",
        description = "Workers whose price and network the campaign accepts",
        priority = "1"
    ),
    printcolumn(
        name = "Noise",
        type_ = "number",
        json_path = ".status.noise.effectiveFloor",
        description = "The effective noise floor, max(noiseFloor, noiseMultiplier x measured sigma): smaller improvements are not improvements",
        priority = "1"
    ),
    printcolumn(
        name = "Left",
        type_ = "string",
        json_path = ".status.budgetLeft",
        description = "USDC of the budget neither spent nor reserved",
        priority = "1"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentCampaignSpec {
    /// The train.py that every experiment runs, inline or from a ConfigMap key.
    pub train_script: TrainScript,

    /// Free-form JSON object sent to the worker as `config`; search parameters are layered on top.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub base_config: Option<Value>,

    /// How the next experiments are chosen (THINK).
    pub search: SearchSpec,

    /// What is optimised and when to stop early.
    #[serde(default)]
    pub objective: ObjectiveSpec,

    /// Stop after this many finished experiments (succeeded or failed).
    #[schemars(range(min = 1, max = 100000))]
    pub max_experiments: u32,

    /// How many experiments may run at once, each on its own worker.
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 1, max = 64))]
    pub parallelism: u32,

    /// The campaign fails after this many failed experiments.
    #[serde(default = "default_max_failed")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_failed_experiments: u32,

    /// Seconds an experiment may take on the worker before it is abandoned (a run is about 300 s of
    /// training plus start-up and evaluation). The payment voucher stays valid at least this long.
    #[serde(default = "default_experiment_timeout")]
    #[schemars(range(min = 30, max = 86400))]
    pub experiment_timeout_seconds: u32,

    /// What the campaign may spend, in USDC. Never more than either limit, whatever a worker asks.
    pub budget: BudgetSpec,

    /// How experiments are paid: network and remote signer.
    #[serde(default)]
    pub payment: PaymentSpec,

    /// Where workers come from: 8004scan, the ERC-8004 registry on chain, and static lists.
    #[serde(default)]
    pub discovery: DiscoverySpec,

    /// Stop starting experiments; those in flight finish and are recorded.
    #[serde(default)]
    pub suspend: bool,
}

/// The train.py source. Set exactly one of `inline` and `configMapKeyRef`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.inline) != has(self.configMapKeyRef)",
     "message": "set exactly one of trainScript.inline and trainScript.configMapKeyRef"}
]))]
pub struct TrainScript {
    /// The train.py source itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1048576), pattern(r"\S"))]
    pub inline: Option<String>,
    /// A key of a ConfigMap in the campaign's namespace that holds train.py.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<ConfigMapKeyRef>,
}

/// A key in a ConfigMap of the campaign's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    /// ConfigMap name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the ConfigMap.
    #[serde(default = "default_train_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// The search space and the strategy that walks it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.strategy != 'list' || (has(self.experiments) && size(self.experiments) > 0)",
     "message": "strategy list needs at least one entry in search.experiments",
     "fieldPath": ".experiments"},
    {"rule": "self.strategy in ['list', 'llm'] || (has(self.parameters) && size(self.parameters) > 0)",
     "message": "strategies grid, random and hillClimb need at least one entry in search.parameters",
     "fieldPath": ".parameters"},
    {"rule": "self.strategy != 'llm' || has(self.llm)",
     "message": "strategy llm needs search.llm (at least search.llm.model)",
     "fieldPath": ".llm"},
    {"rule": "self.strategy != 'llm' || ((!has(self.parameters) || size(self.parameters) == 0) && (!has(self.experiments) || size(self.experiments) == 0))",
     "message": "strategy llm takes no search.parameters or search.experiments: the model edits train.py itself",
     "fieldPath": ".parameters"}
]))]
pub struct SearchSpec {
    /// `list` runs `experiments` in order; `grid` walks every combination of `parameters`;
    /// `random` samples them (seeded, reproducible); `hillClimb` keeps the best point and tries
    /// shrinking steps around it; `llm` asks a language model to edit train.py and keeps an edit
    /// only if it beats the best by more than the noise floor, as autoresearch itself does.
    pub strategy: Strategy,
    /// Where parameter values go. `config` (default): into the JSON `config` sent with each
    /// experiment. The real worker only stores `config` in a file (its path is in
    /// `AUTORESEARCH_EXPERIMENT_CONFIG`) and autoresearch's own train.py never reads it, so with
    /// that train.py every experiment would run the same code. `trainScript`: each parameter's
    /// name is a top-level assignment in train.py (`MATRIX_LR = 0.04  # comment`), and its value
    /// replaces the right-hand side, keeping comments and layout; every experiment then sends a
    /// different train.py. A name that is not a top-level assignment makes the spec invalid.
    /// Ignored by `llm`, which edits train.py itself.
    #[serde(default, skip_serializing_if = "ApplyTo::is_config")]
    pub apply_to: ApplyTo,
    /// The parameters to vary: with `applyTo: config` keys of `config`, layered onto
    /// `baseConfig`; with `applyTo: trainScript` top-level constants of train.py.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub parameters: Vec<Parameter>,
    /// Explicit points for the `list` strategy, each a JSON object: layered onto `baseConfig`, or
    /// with `applyTo: trainScript` written into train.py's constants of those names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "object_list")]
    pub experiments: Vec<Value>,
    /// Seed for `random` and `hillClimb`: the same seed proposes the same experiments.
    #[serde(default)]
    pub seed: u64,
    /// The language model of strategy `llm`: endpoint, model, key, instructions and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmSpec>,
}

/// Where a search's parameter values go.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ApplyTo {
    /// Into the JSON `config` sent with each experiment (train.py unchanged).
    #[default]
    Config,
    /// Into train.py: each parameter rewrites the top-level assignment of its name.
    TrainScript,
}

impl ApplyTo {
    fn is_config(&self) -> bool {
        *self == ApplyTo::Config
    }
}

/// The language model that proposes edits of train.py (strategy `llm`), spoken to over the
/// OpenAI chat-completions API (`POST {endpoint}/chat/completions`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(has(self.program) && has(self.programConfigMapKeyRef))",
     "message": "set at most one of search.llm.program and search.llm.programConfigMapKeyRef",
     "fieldPath": ".program"}
]))]
pub struct LlmSpec {
    /// OpenAI-compatible base URL (the part before `/chat/completions`). Default: obol-stack's
    /// in-cluster LiteLLM, `http://litellm.llm.svc.cluster.local:4000/v1`.
    #[serde(default = "default_llm_endpoint")]
    #[schemars(pattern(r"^https?://"), length(max = 2048))]
    pub endpoint: String,
    /// Model name as the endpoint knows it, e.g. `qwen3.5:9b` for a local Ollama model behind
    /// LiteLLM, or a cloud model id. Models under `paid/` are paid per call through x402 by
    /// obol-stack's buyer sidecar, so `maxCalls` bounds that spending too.
    #[schemars(length(min = 1, max = 256))]
    pub model: String,
    /// Secret key holding the API key, sent as `Authorization: Bearer <key>` (obol-stack's
    /// LiteLLM: Secret `litellm-secrets`, its master key). The CLI reads the key from
    /// `LLM_API_KEY` instead. Neither set: no Authorization header is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<KeyRef>,
    /// Instructions for the model, in the style of autoresearch's program.md: what to try, what
    /// must not change, how to judge. Sent as the system message. Default: built-in
    /// instructions for an autoresearch train.py.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 262144))]
    pub program: Option<String>,
    /// A ConfigMap key in the campaign's namespace holding the instructions (instead of
    /// `program`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program_config_map_key_ref: Option<KeyRef>,
    /// Sampling temperature; omitted: the model's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 2.0))]
    pub temperature: Option<f64>,
    /// Most tokens per reply (`max_tokens`); omitted: the model's default. A whole-file reply
    /// needs room for all of train.py.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 16, max = 1000000))]
    pub max_tokens: Option<u32>,
    /// Most model calls for the whole campaign, re-asks after a refused proposal and retries
    /// included. Reaching it stops the campaign with reason `ProposerExhausted`.
    #[serde(default = "default_llm_max_calls")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_calls: u32,
}

/// A key of a Secret or ConfigMap in the campaign's namespace; both fields are required.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRef {
    /// Secret or ConfigMap name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within it.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A search strategy.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Strategy {
    /// Run `search.experiments` in order.
    List,
    /// Every combination of the parameters' values.
    Grid,
    /// Seeded random samples of the parameters.
    Random,
    /// Greedy keep/discard around the best result with shrinking steps.
    HillClimb,
    /// A language model edits train.py; keep/discard against the best (needs `search.llm`).
    Llm,
}

/// One search dimension.
///
/// "A choice needs values" is checked by the controller, not by a CEL rule: CEL cannot see a list
/// of untyped JSON values, and choices may be numbers, strings or booleans.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.type == 'choice' || (has(self.min) && has(self.max) && self.min < self.max)",
     "message": "a float or int parameter needs min < max", "fieldPath": ".min"},
    {"rule": "!self.logScale || (has(self.min) && self.min > 0.0)",
     "message": "a log-scale parameter needs min > 0", "fieldPath": ".min"}
]))]
pub struct Parameter {
    /// Key in `config` (dots are not special: the key is used as is), or with
    /// `applyTo: trainScript` the name of a top-level assignment in train.py.
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    /// `float`, `int` (a range from min to max) or `choice` (one of `values`).
    #[serde(rename = "type")]
    pub kind: ParameterKind,
    /// Lower bound of a float or int range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Upper bound of a float or int range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Values of a choice parameter, any JSON.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "value_list")]
    pub values: Vec<Value>,
    /// Sample and step a float or int range on a log scale (needs min > 0).
    #[serde(default)]
    pub log_scale: bool,
    /// Points per range for the `grid` strategy.
    #[serde(default = "default_grid_points")]
    #[schemars(range(min = 2, max = 100))]
    pub grid_points: u32,
}

/// Kind of a search parameter.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ParameterKind {
    /// A real number between min and max.
    Float,
    /// A whole number between min and max.
    Int,
    /// One of `values`.
    Choice,
}

/// The metric and when the campaign has reached its goal.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectiveSpec {
    /// The metric; `val_bpb` (validation bits per byte) is minimised.
    #[serde(default)]
    pub metric: Metric,
    /// Stop with success once an experiment reaches a value at or below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub goal: Option<f64>,
    /// An improvement smaller than this is not an improvement (seed noise is about 0.002).
    #[serde(default = "default_noise_floor")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub noise_floor: f64,
    /// Runs of the unmodified train.py before anything is proposed, on distinct workers where
    /// there are several: their spread measures the noise (σ).
    #[serde(default = "default_baseline_runs")]
    #[schemars(range(max = 10))]
    pub baseline_runs: u32,
    /// The effective noise floor is max(`noiseFloor`, `noiseMultiplier` × σ).
    #[serde(default = "default_noise_multiplier")]
    #[schemars(range(min = 0.0, max = 10.0))]
    pub noise_multiplier: f64,
    /// Re-run a would-be new best on another worker before promoting it. Default: on when more
    /// than one worker is available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicate: Option<bool>,
    /// How far a replication may be from the claim and still agree. Default: the effective
    /// noise floor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub replication_tolerance: Option<f64>,
    /// Disputed claims after which a worker is excluded for the rest of the campaign.
    #[serde(default = "default_max_disagreements")]
    #[schemars(range(min = 1))]
    pub max_disagreements: u32,
}

impl Default for ObjectiveSpec {
    fn default() -> Self {
        Self {
            metric: Metric::default(),
            goal: None,
            noise_floor: DEFAULT_NOISE_FLOOR,
            baseline_runs: default_baseline_runs(),
            noise_multiplier: default_noise_multiplier(),
            replicate: None,
            replication_tolerance: None,
            max_disagreements: default_max_disagreements(),
        }
    }
}

/// The metric a campaign optimises.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Metric {
    /// Validation bits per byte; lower is better.
    #[default]
    #[serde(rename = "val_bpb")]
    ValBpb,
}

/// Spending limits in USDC.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    // Guarded by the amount pattern so that a malformed amount gets only the pattern's message.
    {"rule": "!self.total.matches('^[0-9]+(\\\\.[0-9]+)?$') || !self.maxPricePerExperiment.matches('^[0-9]+(\\\\.[0-9]+)?$') || double(self.maxPricePerExperiment) <= double(self.total)",
     "message": "budget.maxPricePerExperiment must not exceed budget.total",
     "fieldPath": ".maxPricePerExperiment"}
]))]
pub struct BudgetSpec {
    /// Total USDC the campaign may spend, as a decimal string (e.g. "5" or "0.50"). Payments in
    /// flight count against it.
    #[schemars(pattern(r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,6})?$"))]
    pub total: String,
    /// Most USDC paid for one experiment, as a decimal string; workers asking more are skipped.
    #[schemars(pattern(r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,6})?$"))]
    pub max_price_per_experiment: String,
}

/// How experiments are paid.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentSpec {
    /// Chain the USDC payments are made on; workers asking for another network are skipped.
    #[serde(default)]
    pub network: Network,
    /// Paying address; default: the first key the remote signer lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^0x[0-9a-fA-F]{40}$"))]
    pub signer_address: Option<String>,
    /// Remote signer base URL.
    #[serde(default = "default_signer_url")]
    #[schemars(pattern(r"^https?://"))]
    pub remote_signer_url: String,
    /// Secret key holding the remote signer's bearer token (obol-stack: Secret
    /// `remote-signer-keystore`, key `authToken`). Omit if the signer needs no token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
    /// Token contracts accepted besides the network's USDC (addresses). Empty: USDC only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(pattern(r"^0x[0-9a-fA-F]{40}$")))]
    pub extra_assets: Vec<String>,
}

impl Default for PaymentSpec {
    fn default() -> Self {
        Self {
            network: Network::default(),
            signer_address: None,
            remote_signer_url: default_signer_url(),
            token_secret_ref: None,
            extra_assets: Vec::new(),
        }
    }
}

/// A supported payment network.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Network {
    /// Base mainnet (chain 8453), real money.
    #[serde(rename = "base")]
    Base,
    /// Base Sepolia testnet (chain 84532).
    #[default]
    #[serde(rename = "base-sepolia")]
    BaseSepolia,
}

/// A key in a Secret of the campaign's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[serde(default = "default_token_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Where workers come from.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiscoverySpec {
    /// 8004scan public API base URL; empty disables the index.
    #[serde(default = "default_scan_api_url")]
    pub scan_api_url: String,
    /// OASF skill to look for; the OASF 1.1 and legacy spellings of the default match too.
    #[serde(default = "default_skill")]
    #[schemars(length(min = 1, max = 256))]
    pub skill: String,
    /// Seconds between discovery refreshes (shared by every campaign).
    #[serde(default = "default_refresh")]
    #[schemars(range(min = 10, max = 86400))]
    pub refresh_interval_seconds: u32,
    /// Read the ERC-8004 Identity Registry on chain through eRPC: as a fallback when the index
    /// fails, or to confirm what the index returns.
    #[serde(default)]
    pub on_chain: OnChainDiscovery,
    /// Workers named by hand; used as they are, never filtered by address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub workers: Vec<StaticWorker>,
    /// Endpoints (exact or prefix) tried before any other worker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub prefer: Vec<String>,
    /// Endpoints (exact or prefix) or agent ids never used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub exclude: Vec<String>,
    /// CIDRs or host patterns (`*.autoresearch.svc.cluster.local`) that discovered endpoints may
    /// resolve to although they are private, loopback or cluster-internal. Empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub allow_private: Vec<String>,
}

impl Default for DiscoverySpec {
    fn default() -> Self {
        Self {
            scan_api_url: default_scan_api_url(),
            skill: default_skill(),
            refresh_interval_seconds: default_refresh(),
            on_chain: OnChainDiscovery::default(),
            workers: Vec::new(),
            prefer: Vec::new(),
            exclude: Vec::new(),
            allow_private: Vec::new(),
        }
    }
}

/// On-chain discovery through eRPC.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OnChainDiscovery {
    /// `fallback`: read the chain only when the index fails; `always`: read it every refresh;
    /// `confirm`: keep only index results the chain confirms; `never`: do not read the chain.
    #[serde(default)]
    pub mode: OnChainMode,
    /// eRPC (or any JSON-RPC) URL.
    #[serde(default = "default_erpc_url")]
    pub erpc_url: String,
}

impl Default for OnChainDiscovery {
    fn default() -> Self {
        Self {
            mode: OnChainMode::default(),
            erpc_url: default_erpc_url(),
        }
    }
}

/// When the chain is read.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnChainMode {
    /// Only when the index fails.
    #[default]
    Fallback,
    /// On every refresh, merged with the index.
    Always,
    /// Keep only index results that the chain confirms.
    Confirm,
    /// Never. (Not `off`: YAML 1.1 readers turn a bare `off` into `false`.)
    Never,
}

/// A worker named by hand.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StaticWorker {
    /// Service URL; experiments are POSTed to `<endpoint>/experiment`.
    #[schemars(pattern(r"^https?://"), length(max = 2048))]
    pub endpoint: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// ERC-8004 agent id, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<u64>,
}

/// What the controller has observed and done.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentCampaignStatus {
    /// Pending, Running, Succeeded, Failed, Suspended or BudgetExhausted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// "finished/max", for `kubectl get campaigns`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions, each with a reason and a message: `SpecValid`, `WorkersAvailable`,
    /// `Progressing`, `Complete` (stopped for good, whatever the reason) and `Succeeded` (finished
    /// by the goal, maxExperiments or an exhausted search: what `kubectl wait` should wait for).
    /// `ChainReadable` is False when the payment chain at `ERPC_URL` cannot be read (reason
    /// `Unreachable` or `Unreadable`) or serves another chain than `spec.payment.network`
    /// (`WrongChain`): no voucher is signed meanwhile and Progressing is False (`ChainUnreadable`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Experiments started so far (paid or being paid).
    #[serde(default)]
    pub submitted: u32,
    /// Experiments in flight.
    #[serde(default)]
    pub running: u32,
    /// Experiments that returned a valid val_bpb.
    #[serde(default)]
    pub succeeded: u32,
    /// Experiments that failed (worker error, timeout, invalid answer).
    #[serde(default)]
    pub failed: u32,
    /// Attempts that failed on the worker's side (error, timeout, busy, invalid answer); the
    /// experiment went to another worker when nothing was paid.
    #[serde(default)]
    pub worker_failures: u32,
    /// USDC paid, settled or not, as a decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spent: Option<String>,
    /// USDC reserved by experiments in flight, as a decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<String>,
    /// USDC of finished experiments whose payment the chain could not confirm or refute
    /// (decimal string); the budget counts it as spent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spent_uncertain: Option<String>,
    /// The payer's USDC balance when it was last read before signing (decimal string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wallet_balance: Option<String>,
    /// USDC of `budget.total` neither spent nor reserved, as a decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_left: Option<String>,
    /// The best result so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<ResultSummary>,
    /// Where the best train.py is, when THINK changes the code: `configmap/<campaign>-best`
    /// (key `train.py`) in the controller, a file path in the CLI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_train_script: Option<String>,
    /// The best results, lowest val_bpb first (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leaderboard: Vec<ResultSummary>,
    /// Worker counts from the last discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<WorkerCounts>,
    /// Payments in flight: written before a voucher is sent, so that after a crash the same
    /// voucher is re-sent or the result fetched, never a second one signed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ledger: Vec<LedgerEntry>,
    /// Experiments proposed and waiting for a worker (bounded by parallelism).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<PendingExperiment>,
    /// Strategy state (cursor, current step), opaque to users.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub strategy_state: BTreeMap<String, String>,
    /// Whether `best` was reproduced by another worker, and by which runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// The lowest val_bpb any worker claimed, when it is not the verified best.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_claimed: Option<ResultSummary>,
    /// The noise measured by baseline runs and replications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<NoiseStatus>,
    /// Each worker's record in this campaign (bounded; the busiest workers are kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reputation: Vec<WorkerRecord>,
}

/// Whether the best result was reproduced.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// The experiment `best` describes.
    pub experiment_id: String,
    /// True when another worker reproduced it within the tolerance; `best.valBpb` is then
    /// the mean of the agreeing runs.
    pub verified: bool,
    /// The runs that reproduced it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replications: Vec<String>,
}

/// The noise floor keep/discard decisions use: the measured one in status once there is one,
/// else the spec's `objective.noiseFloor`.
pub fn effective_floor(campaign: &ExperimentCampaign) -> f64 {
    campaign
        .status
        .as_ref()
        .and_then(|s| s.noise.as_ref())
        .map_or(campaign.spec.objective.noise_floor, |n| n.effective_floor)
}

/// Measured noise.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NoiseStatus {
    /// Pooled standard deviation of repeated runs of the same code and config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigma: Option<f64>,
    /// Degrees of freedom behind `sigma` (repeated runs minus groups).
    pub samples: u32,
    /// max(noiseFloor, noiseMultiplier × σ): what every keep/discard decision uses.
    pub effective_floor: f64,
    /// How close a replication must be to agree.
    pub tolerance: f64,
}

/// One worker's record in a campaign.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerRecord {
    /// Service URL.
    pub endpoint: String,
    /// ERC-8004 agent id, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<u64>,
    /// Paid runs recorded.
    pub runs: u32,
    /// Runs without a result.
    pub failures: u32,
    /// Replications in which this worker's value was confirmed.
    pub agreements: u32,
    /// Replications in which this worker's value was out of line (disputed claims).
    pub disagreements: u32,
    /// Mean absolute deviation of its values from the agreed value, over replications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_deviation: Option<f64>,
    /// Last price paid, USDC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<String>,
    /// Excluded for the rest of the campaign (`objective.maxDisagreements` disputed claims).
    #[serde(default)]
    pub excluded: bool,
}

/// Lifecycle phase.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Accepted, nothing started yet.
    Pending,
    /// Experiments are being proposed and run.
    Running,
    /// Goal or maxExperiments reached.
    Succeeded,
    /// Too many failed experiments, or an error that needs the user.
    Failed,
    /// `spec.suspend` is set.
    Suspended,
    /// The budget cannot pay another experiment.
    BudgetExhausted,
}

impl Phase {
    /// Whether the campaign has ended: nothing new starts.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Phase::Succeeded | Phase::Failed | Phase::BudgetExhausted
        )
    }
}

/// One finished experiment, as shown in status.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResultSummary {
    /// Experiment id (derived from the hash of train.py and config).
    pub experiment_id: String,
    /// Validation bits per byte.
    pub val_bpb: f64,
    /// The config that was run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub config: Option<Value>,
    /// Endpoint of the worker that ran it.
    pub worker: String,
    /// `sha256:<hex>` of train.py as the worker reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_hash: Option<String>,
    /// The searched parameters and their values (what varies; small). The whole config is in
    /// results.jsonl; status keeps this and [`ResultSummary::config_hash`] so that its size does
    /// not grow with `baseConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub params: Option<Value>,
    /// `sha256:<hex>` of the canonical JSON of the config that was run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// On `status.best`: whether another worker reproduced it (`valBpb` is then the mean of the
    /// agreeing runs). Absent on leaderboard rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    /// On `status.best`: the runs that reproduced it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replications: Vec<String>,
}

/// Worker counts from the last discovery.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerCounts {
    /// Workers found by every source, after exclusions.
    pub discovered: u32,
    /// Workers whose price and network this campaign accepts.
    pub eligible: u32,
    /// Workers running one of this campaign's experiments.
    pub busy: u32,
    /// Workers cooling down after a failure.
    pub cooling_down: u32,
}

/// A payment in flight, persisted before the voucher leaves the controller.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEntry {
    /// Experiment id; also sent to the worker.
    pub experiment_id: String,
    /// Worker endpoint.
    pub worker: String,
    /// ERC-8004 agent id of the worker, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<u64>,
    /// Price in atomic USDC units (6 decimals).
    pub amount: String,
    /// ERC-3009 nonce (0x + 32 bytes): the chain settles it at most once.
    pub nonce: String,
    /// The signed x402 payment header (base64): re-sent as is after a crash, never signed anew.
    pub payment: String,
    /// Unix time after which the voucher can no longer settle.
    pub valid_before: u64,
    /// The config being run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub config: Option<Value>,
    /// The searched parameters and their values (what varies; small).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub params: Option<Value>,
    /// `sha256:<hex>` of the config's canonical JSON when the config is too large to keep in
    /// status: it is on the data volume (`config` is then absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// `sha256:<hex>` of the train.py being run, when THINK changed the code (the source is in
    /// the data volume's script store); absent means the campaign's train.py.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_hash: Option<String>,
    /// What this experiment changed, in one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Attempts so far, this one included (failed attempts that paid nothing are retried).
    #[serde(default = "one")]
    pub attempt: u32,
    /// When the experiment was started (RFC 3339).
    pub started_at: String,
    /// Where the chain's judgement of the voucher stands; absent: sent, answer awaited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_state: Option<PaymentState>,
}

/// A ledger entry's payment, as the chain judges it (docs/money.md).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PaymentState {
    /// The answer did not prove a refusal: waiting until the chain shows the nonce used, or
    /// `validBefore` passed unused.
    Uncertain,
    /// The chain could not be read long enough to decide: counted in `spentUncertain`, never
    /// retried.
    Undecided,
    /// Signed and reserved ahead, to be sent when its worker answers the experiment it runs.
    /// Counts against the budget and `maxExperiments`, not against `parallelism`; after a
    /// restart it is finished like a sent entry, with the same voucher.
    SignedAhead,
}

/// An experiment proposed (THINK) and not yet started on a worker (CLAIM). Persisted so that a
/// strategy's cursor and its proposals never disagree after a restart, and so that an attempt
/// that failed without paying can go to another worker.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingExperiment {
    /// Experiment id.
    pub experiment_id: String,
    /// The config to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub config: Option<Value>,
    /// The searched parameters and their values (what varies; small).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub params: Option<Value>,
    /// `sha256:<hex>` of the config's canonical JSON when the config is too large to keep in
    /// status: it is on the data volume (`config` is then absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// `sha256:<hex>` of the train.py to run, when THINK changed the code; absent means the
    /// campaign's train.py.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_hash: Option<String>,
    /// What this experiment changes, in one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Attempts already made (0 for a fresh proposal).
    #[serde(default)]
    pub attempts: u32,
    /// Workers that failed this experiment; it goes elsewhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub avoid: Vec<String>,
}

fn one() -> u32 {
    1
}

/// The CRD as installed: the derived one, with descriptions unwrapped. Doc comments are wrapped at
/// 100 columns and schemars keeps those line breaks, which `kubectl explain` would print as is.
pub fn definition() -> CustomResourceDefinition {
    let mut value = serde_json::to_value(ExperimentCampaign::crd()).expect("a CRD serialises");
    unwrap_descriptions(&mut value);
    serde_json::from_value(value).expect("unwrapping descriptions keeps a valid CRD")
}

fn unwrap_descriptions(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    Value::String(text) if key == "description" => {
                        // A blank line is a paragraph break and stays; a single break is wrapping.
                        *text = text
                            .split("\n\n")
                            .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    other => unwrap_descriptions(other),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

fn object_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": 10000,
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

fn value_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "minItems": 1,
        "maxItems": 1000,
        "items": {"x-kubernetes-preserve-unknown-fields": true}
    })
}

fn default_parallelism() -> u32 {
    1
}
fn default_max_failed() -> u32 {
    10
}
fn default_experiment_timeout() -> u32 {
    900
}
fn default_grid_points() -> u32 {
    3
}
fn default_noise_floor() -> f64 {
    DEFAULT_NOISE_FLOOR
}
fn default_baseline_runs() -> u32 {
    2
}
fn default_noise_multiplier() -> f64 {
    2.0
}
fn default_max_disagreements() -> u32 {
    2
}
fn default_llm_endpoint() -> String {
    DEFAULT_LLM_ENDPOINT.into()
}
fn default_llm_max_calls() -> u32 {
    DEFAULT_LLM_MAX_CALLS
}
fn default_train_key() -> String {
    "train.py".into()
}
fn default_token_key() -> String {
    "authToken".into()
}
fn default_signer_url() -> String {
    DEFAULT_REMOTE_SIGNER_URL.into()
}
fn default_scan_api_url() -> String {
    DEFAULT_SCAN_API_URL.into()
}
fn default_erpc_url() -> String {
    DEFAULT_ERPC_URL.into()
}
fn default_skill() -> String {
    DEFAULT_SKILL.into()
}
fn default_refresh() -> u32 {
    300
}

/// A spec that the schema admitted but that cannot run (also catches what older API servers
/// without CEL support let through).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("spec.{field}: {message}")]
pub struct SpecError {
    /// Dotted path below `spec`.
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

fn spec_error(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        message: message.into(),
    }
}

impl ExperimentCampaignSpec {
    /// Checks what the schema checks, in Rust, and returns the parsed budget.
    pub fn validate(&self) -> Result<(Usdc, Usdc), SpecError> {
        match (
            &self.train_script.inline,
            &self.train_script.config_map_key_ref,
        ) {
            (Some(s), None) if s.trim().is_empty() => {
                return Err(spec_error(
                    "trainScript.inline",
                    "train.py must not be empty",
                ));
            }
            (Some(_), None) | (None, Some(_)) => {}
            _ => {
                return Err(spec_error(
                    "trainScript",
                    "set exactly one of trainScript.inline and trainScript.configMapKeyRef",
                ));
            }
        }
        if self.max_experiments == 0 {
            return Err(spec_error("maxExperiments", "must be at least 1"));
        }
        if self.parallelism == 0 {
            return Err(spec_error("parallelism", "must be at least 1"));
        }
        let total: Usdc = self
            .budget
            .total
            .parse()
            .map_err(|e| spec_error("budget.total", format!("{e}")))?;
        let max_price: Usdc = self
            .budget
            .max_price_per_experiment
            .parse()
            .map_err(|e| spec_error("budget.maxPricePerExperiment", format!("{e}")))?;
        if max_price > total {
            return Err(spec_error(
                "budget.maxPricePerExperiment",
                "must not exceed budget.total",
            ));
        }
        self.search.validate()?;
        if let Some(base) = &self.base_config
            && !base.is_object()
        {
            return Err(spec_error("baseConfig", "must be a JSON object"));
        }
        Ok((total, max_price))
    }
}

impl SearchSpec {
    fn validate(&self) -> Result<(), SpecError> {
        self.check_strategy_inputs()?;
        for (i, p) in self.parameters.iter().enumerate() {
            p.validate()
                .map_err(|m| spec_error(format!("search.parameters[{i}]"), m))?;
        }
        if let Some(i) = self.experiments.iter().position(|e| !e.is_object()) {
            return Err(spec_error(
                format!("search.experiments[{i}]"),
                "must be a JSON object",
            ));
        }
        Ok(())
    }

    /// `list` needs experiments; `llm` needs `llm` and no parameters; the other strategies need
    /// parameters.
    pub(crate) fn check_strategy_inputs(&self) -> Result<(), SpecError> {
        match self.strategy {
            Strategy::Llm => return self.check_llm(),
            Strategy::List if self.experiments.is_empty() => {
                return Err(spec_error(
                    "search.experiments",
                    "strategy list needs at least one entry in search.experiments",
                ));
            }
            Strategy::Grid | Strategy::Random | Strategy::HillClimb
                if self.parameters.is_empty() =>
            {
                return Err(spec_error(
                    "search.parameters",
                    "strategies grid, random and hillClimb need at least one entry in search.parameters",
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

impl SearchSpec {
    fn check_llm(&self) -> Result<(), SpecError> {
        let Some(llm) = &self.llm else {
            return Err(spec_error(
                "search.llm",
                "strategy llm needs search.llm (at least search.llm.model)",
            ));
        };
        if !self.parameters.is_empty() || !self.experiments.is_empty() {
            return Err(spec_error(
                "search.parameters",
                "strategy llm takes no search.parameters or search.experiments: the model edits train.py itself",
            ));
        }
        if llm.model.trim().is_empty() {
            return Err(spec_error("search.llm.model", "must not be empty"));
        }
        if !(llm.endpoint.starts_with("http://") || llm.endpoint.starts_with("https://")) {
            return Err(spec_error(
                "search.llm.endpoint",
                "must be an http:// or https:// URL",
            ));
        }
        if llm.program.is_some() && llm.program_config_map_key_ref.is_some() {
            return Err(spec_error(
                "search.llm.program",
                "set at most one of search.llm.program and search.llm.programConfigMapKeyRef",
            ));
        }
        if llm.max_calls == 0 {
            return Err(spec_error("search.llm.maxCalls", "must be at least 1"));
        }
        Ok(())
    }
}

impl Parameter {
    fn validate(&self) -> Result<(), String> {
        match self.kind {
            ParameterKind::Choice if self.values.is_empty() => {
                Err(format!("choice parameter {} needs values", self.name))
            }
            ParameterKind::Choice => Ok(()),
            ParameterKind::Float | ParameterKind::Int => match (self.min, self.max) {
                (Some(min), Some(max)) if min.is_finite() && max.is_finite() && min < max => {
                    if self.log_scale && min <= 0.0 {
                        Err(format!("log-scale parameter {} needs min > 0", self.name))
                    } else {
                        Ok(())
                    }
                }
                _ => Err(format!("parameter {} needs min < max", self.name)),
            },
        }
    }
}

impl Network {
    /// EVM chain id.
    pub fn chain_id(self) -> u64 {
        match self {
            Network::Base => 8453,
            Network::BaseSepolia => 84532,
        }
    }

    /// x402 v1 network name.
    pub fn v1_name(self) -> &'static str {
        match self {
            Network::Base => "base",
            Network::BaseSepolia => "base-sepolia",
        }
    }

    /// x402 v2 CAIP-2 id.
    pub fn caip2(self) -> String {
        format!("eip155:{}", self.chain_id())
    }

    /// Accepts either spelling (`base-sepolia` or `eip155:84532`).
    pub fn parse(name: &str) -> Option<Network> {
        [Network::Base, Network::BaseSepolia]
            .into_iter()
            .find(|n| n.v1_name() == name || n.caip2() == name)
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.v1_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> ExperimentCampaignSpec {
        serde_json::from_value(serde_json::json!({
            "trainScript": {"inline": "print('val_bpb: 1.0')"},
            "search": {"strategy": "list", "experiments": [{"lr": 0.01}]},
            "maxExperiments": 3,
            "budget": {"total": "1", "maxPricePerExperiment": "0.1"}
        }))
        .unwrap()
    }

    #[test]
    fn defaults_fill_a_minimal_spec() {
        let spec = minimal();
        assert_eq!(spec.parallelism, 1);
        assert_eq!(spec.objective.noise_floor, DEFAULT_NOISE_FLOOR);
        assert_eq!(spec.payment.network, Network::BaseSepolia);
        assert_eq!(spec.payment.remote_signer_url, DEFAULT_REMOTE_SIGNER_URL);
        assert_eq!(spec.discovery.skill, DEFAULT_SKILL);
        let (total, max) = spec.validate().unwrap();
        assert_eq!(total.atomic(), 1_000_000);
        assert_eq!(max.atomic(), 100_000);
    }

    #[test]
    fn validate_names_the_field() {
        let mut spec = minimal();
        spec.budget.max_price_per_experiment = "2".into();
        assert_eq!(
            spec.validate().unwrap_err().field,
            "budget.maxPricePerExperiment"
        );

        let mut spec = minimal();
        spec.train_script.inline = Some("  \n".into());
        assert_eq!(spec.validate().unwrap_err().field, "trainScript.inline");

        let mut spec = minimal();
        spec.search.strategy = Strategy::Grid;
        assert_eq!(spec.validate().unwrap_err().field, "search.parameters");

        let mut spec = minimal();
        spec.search.strategy = Strategy::Random;
        spec.search.parameters = vec![Parameter {
            name: "lr".into(),
            kind: ParameterKind::Float,
            min: Some(1.0),
            max: Some(1.0),
            values: vec![],
            log_scale: false,
            grid_points: 3,
        }];
        assert_eq!(spec.validate().unwrap_err().field, "search.parameters[0]");
    }

    #[test]
    fn llm_specs_are_checked_in_rust_too() {
        let llm = |v: serde_json::Value| {
            let mut spec = minimal();
            spec.search = serde_json::from_value(v).unwrap();
            spec.validate().map(|_| ()).map_err(|e| e.field)
        };
        let ok = llm(serde_json::json!({"strategy": "llm", "llm": {"model": "m"}}));
        assert_eq!(ok, Ok(()));
        let cases = [
            (serde_json::json!({"strategy": "llm"}), "search.llm"),
            (
                serde_json::json!({"strategy": "llm", "llm": {"model": " "}}),
                "search.llm.model",
            ),
            (
                serde_json::json!({"strategy": "llm", "llm": {"model": "m"}, "experiments": [{}]}),
                "search.parameters",
            ),
            (
                serde_json::json!({"strategy": "llm", "llm": {"model": "m", "endpoint": "litellm:4000"}}),
                "search.llm.endpoint",
            ),
            (
                serde_json::json!({"strategy": "llm", "llm": {"model": "m", "program": "p",
                    "programConfigMapKeyRef": {"name": "cm", "key": "program.md"}}}),
                "search.llm.program",
            ),
            (
                serde_json::json!({"strategy": "llm", "llm": {"model": "m", "maxCalls": 0}}),
                "search.llm.maxCalls",
            ),
        ];
        for (search, field) in cases {
            assert_eq!(llm(search.clone()), Err(field.to_string()), "{search}");
        }
        let spec: SearchSpec =
            serde_json::from_value(serde_json::json!({"strategy": "llm", "llm": {"model": "m"}}))
                .unwrap();
        let llm = spec.llm.unwrap();
        assert_eq!(
            (llm.endpoint.as_str(), llm.max_calls),
            (DEFAULT_LLM_ENDPOINT, DEFAULT_LLM_MAX_CALLS)
        );
        assert_eq!(spec.apply_to, ApplyTo::Config);
    }

    #[test]
    fn crd_has_names_columns_and_status() {
        let crd = definition();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("experimentcampaigns.autoresearch.obol.org")
        );
        let names = &crd.spec.names;
        assert!(
            names
                .short_names
                .as_ref()
                .unwrap()
                .contains(&"campaigns".to_string())
        );
        let version = &crd.spec.versions[0];
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let columns: Vec<_> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            [
                "Phase", "Done", "Running", "Best", "Spent", "Age", "Strategy", "Workers", "Noise",
                "Left"
            ]
        );
        let wide: Vec<_> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .filter(|c| c.priority == Some(1))
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            wide,
            ["Strategy", "Workers", "Noise", "Left"],
            "only in -o wide"
        );
    }

    #[test]
    fn network_spellings() {
        assert_eq!(Network::parse("eip155:84532"), Some(Network::BaseSepolia));
        assert_eq!(Network::parse("base"), Some(Network::Base));
        assert_eq!(Network::parse("ethereum"), None);
    }
}
