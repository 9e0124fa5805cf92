//! The ERC-8004 registration document, read tolerantly (docs/protocols.md §2).
//!
//! Documents are written by many hands and by several SDK versions, so every field has more than
//! one spelling and most have more than one type. The parser never fails on a surprising field:
//! it takes what it understands and leaves the rest. Only a document that is not a JSON object is
//! an error.

use serde_json::{Map, Value};
use url::Url;

/// The skill that autoresearch workers register, and its other spellings.
pub const SKILL_ALIASES: [&str; 3] = [
    "devops_mlops/model_versioning",
    "ai_ml_engineering/ml_lifecycle/model_versioning",
    "machine_learning/model_optimization",
];

/// OASF 0.8–1.0 numeric id of `devops_mlops/model_versioning`.
pub const SKILL_ID: u64 = 1204;

/// Which skills count as "the" skill.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SkillFilter {
    names: Vec<String>,
    id: Option<u64>,
}

impl SkillFilter {
    /// The configured skill; any of the three autoresearch spellings brings in the other two
    /// and the numeric id.
    pub fn new(skill: &str) -> Self {
        let skill = skill.trim().to_ascii_lowercase();
        if SKILL_ALIASES.contains(&skill.as_str()) {
            Self {
                names: SKILL_ALIASES.iter().map(|s| s.to_string()).collect(),
                id: Some(SKILL_ID),
            }
        } else {
            Self {
                names: vec![skill],
                id: None,
            }
        }
    }

    /// The spellings to search the index for.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    fn matches(&self, skill: &Skill) -> bool {
        skill
            .name
            .as_deref()
            .is_some_and(|n| self.names.iter().any(|s| s.eq_ignore_ascii_case(n.trim())))
            || (self.id.is_some() && skill.id == self.id)
    }
}

/// One advertised skill.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Skill {
    /// Slash-separated OASF name.
    pub name: Option<String>,
    /// Numeric OASF id.
    pub id: Option<u64>,
}

/// One entry of `services` (or `endpoints`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Service {
    /// `web`, `OASF`, `A2A`, `MCP`, `ens`...
    pub name: String,
    /// Usually a URL; an ENS name for `ens`.
    pub endpoint: Option<String>,
    /// Version, normalised (`v0.8.0` and `0.8` both become `0.8`...; see [`normalise_version`]).
    pub version: Option<String>,
    /// Skills listed on this service (OASF).
    pub skills: Vec<Skill>,
}

/// What a worker publishes about itself in `metadata`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerMetadata {
    /// GPU model.
    pub gpu: Option<String>,
    /// Best validation bits per byte the worker reports.
    pub best_val_bpb: Option<f64>,
    /// Experiments the worker has run.
    pub total_experiments: Option<u64>,
    /// When the worker last updated its document.
    pub updated: Option<String>,
}

/// A parsed registration document.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Registration {
    /// Display name.
    pub name: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// Services in document order.
    pub services: Vec<Service>,
    /// Skills listed outside any service.
    pub skills: Vec<Skill>,
    /// Whether the worker takes x402 payments.
    pub x402: bool,
    /// `active: false` means: not a worker.
    pub active: bool,
    /// `(agentId, agentRegistry)` pairs the document claims.
    pub registrations: Vec<(Option<u64>, Option<String>)>,
    /// Trust models (`supportedTrust`, `supportedTrusts`, `trustModels`).
    pub trust: Vec<String>,
    /// Worker metadata.
    pub metadata: WorkerMetadata,
}

/// The document is not a JSON object.
#[derive(Debug, thiserror::Error)]
#[error("registration document is not a JSON object (found {0})")]
pub struct NotADocument(pub &'static str);

/// Parses a registration document (or an 8004scan detail record, which has the same fields
/// with services flattened into an object).
pub fn parse_registration(doc: &Value) -> Result<Registration, NotADocument> {
    let obj = doc.as_object().ok_or(NotADocument(kind(doc)))?;
    let services = first(obj, &["services", "endpoints"])
        .map(parse_services)
        .unwrap_or_default();
    let metadata = obj
        .get("metadata")
        .and_then(Value::as_object)
        .map(parse_metadata)
        .unwrap_or_default();
    // Some documents put the worker metadata at the top level instead.
    let metadata = merge_metadata(metadata, parse_metadata(obj));
    Ok(Registration {
        name: first(obj, &["name"]).and_then(text),
        description: first(obj, &["description"]).and_then(text),
        services,
        skills: first(obj, &["skills"])
            .map(parse_skills)
            .unwrap_or_default(),
        x402: first(
            obj,
            &[
                "x402Support",
                "x402support",
                "x402_support",
                "x402Supported",
                "x402_supported",
            ],
        )
        .is_some_and(flag),
        // Absent means active: only an explicit false retires an agent.
        active: first(obj, &["active", "isActive", "is_active"])
            .map(flag)
            .unwrap_or(true),
        registrations: first(obj, &["registrations"])
            .and_then(Value::as_array)
            .map(|regs| regs.iter().filter_map(parse_registration_ref).collect())
            .unwrap_or_default(),
        trust: first(obj, &["supportedTrust", "supportedTrusts", "trustModels"])
            .map(strings)
            .unwrap_or_default(),
        metadata,
    })
}

impl Registration {
    /// Whether any service (or the top level) lists the skill.
    pub fn has_skill(&self, filter: &SkillFilter) -> bool {
        self.skills
            .iter()
            .chain(self.services.iter().flat_map(|s| s.skills.iter()))
            .any(|s| filter.matches(s))
    }

    /// The worker's service URL: the service whose endpoint contains `/services/` or ends in
    /// `/experiment` (that suffix removed, since the coordinator appends it), else `web`.
    pub fn worker_endpoint(&self) -> Option<Url> {
        let urls = || {
            self.services.iter().filter_map(|s| {
                let url = Url::parse(s.endpoint.as_deref()?.trim()).ok()?;
                matches!(url.scheme(), "http" | "https").then_some((s, url))
            })
        };
        let service = urls().find_map(|(_, url)| {
            let path = url.path().trim_end_matches('/');
            if let Some(base) = path.strip_suffix("/experiment") {
                let mut url = url.clone();
                url.set_path(base);
                Some(url)
            } else {
                path.contains("/services/").then_some(url)
            }
        });
        service.or_else(|| {
            urls().find_map(|(s, url)| s.name.eq_ignore_ascii_case("web").then_some(url))
        })
    }

    /// The agent id the document claims for `chain_id`, or its only claim.
    pub fn agent_id_for(&self, chain_id: Option<u64>) -> Option<u64> {
        let on_chain = chain_id.and_then(|c| {
            self.registrations.iter().find_map(|(id, reg)| {
                let reg_chain = reg.as_deref()?.split(':').nth(1)?.parse::<u64>().ok()?;
                (reg_chain == c).then_some(*id).flatten()
            })
        });
        let only = match self.registrations.as_slice() {
            [(id, _)] => *id,
            _ => None,
        };
        on_chain.or(only)
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn first<'a>(obj: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
    keys.iter()
        .find_map(|k| obj.get(*k).filter(|v| !v.is_null()))
}

/// A non-empty string, trimmed; numbers are accepted as their text.
fn text(v: &Value) -> Option<String> {
    let s = match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    (!s.is_empty()).then_some(s)
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().filter_map(text).collect(),
        other => text(other).into_iter().collect(),
    }
}

/// `true`, `"true"`, `1`, `{"enabled": true}`.
fn flag(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::String(s) => matches!(s.trim().to_ascii_lowercase().as_str(), "true" | "yes" | "1"),
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Value::Object(o) => o
            .get("enabled")
            .or_else(|| o.get("supported"))
            .is_some_and(flag),
        _ => false,
    }
}

/// A non-negative integer id: a number, a decimal or 0x-hex string, or the last part of a
/// `<chainId>:<registry>:<tokenId>` string.
pub fn parse_id(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            let f = n.as_f64()?;
            (f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64).then_some(f as u64)
        }),
        Value::String(s) => {
            let s = s.trim();
            let s = s.rsplit(':').next().unwrap_or(s);
            match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => s.parse().ok(),
            }
        }
        _ => None,
    }
}

/// A finite number from a number or a numeric string.
fn number(v: &Value) -> Option<f64> {
    let n = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    n.is_finite().then_some(n)
}

fn parse_services(v: &Value) -> Vec<Service> {
    match v {
        Value::Array(items) => items
            .iter()
            .filter_map(|item| parse_service(None, item))
            .collect(),
        // 8004scan's detail record: `{"web": {...}, "oasf": {...}, "ens": "x.eth"}`.
        Value::Object(map) => map
            .iter()
            .filter_map(|(name, item)| parse_service(Some(name), item))
            .collect(),
        _ => Vec::new(),
    }
}

fn parse_service(key: Option<&str>, v: &Value) -> Option<Service> {
    match v {
        Value::Object(o) => Some(Service {
            name: first(o, &["name", "type"])
                .and_then(text)
                .or_else(|| key.map(str::to_string))
                .unwrap_or_default(),
            endpoint: first(o, &["endpoint", "url", "uri"]).and_then(text),
            version: first(o, &["version"])
                .and_then(text)
                .map(|v| normalise_version(&v)),
            skills: first(o, &["skills"]).map(parse_skills).unwrap_or_default(),
        }),
        Value::String(s) => Some(Service {
            name: key?.to_string(),
            endpoint: Some(s.trim().to_string()),
            ..Service::default()
        }),
        _ => None,
    }
}

/// `v0.8.0`, `0.8.0` and `0.8` are the same OASF version: drop the `v` and trailing `.0`s.
pub fn normalise_version(v: &str) -> String {
    let v = v.trim();
    let v = v.strip_prefix(['v', 'V']).unwrap_or(v);
    let mut parts: Vec<&str> = v.split('.').collect();
    while parts.len() > 2 && parts.last() == Some(&"0") {
        parts.pop();
    }
    parts.join(".")
}

fn parse_skills(v: &Value) -> Vec<Skill> {
    let one = |item: &Value| match item {
        Value::String(s) => Some(Skill {
            name: Some(s.trim().to_string()),
            id: None,
        }),
        Value::Number(_) => Some(Skill {
            name: None,
            id: parse_id(item),
        }),
        Value::Object(o) => Some(Skill {
            name: first(o, &["name", "skill", "path"]).and_then(text),
            id: first(o, &["id"]).and_then(parse_id),
        }),
        _ => None,
    };
    match v {
        Value::Array(items) => items.iter().filter_map(one).collect(),
        other => one(other).into_iter().collect(),
    }
}

fn parse_registration_ref(v: &Value) -> Option<(Option<u64>, Option<String>)> {
    let o = v.as_object()?;
    Some((
        first(o, &["agentId", "agent_id", "tokenId"]).and_then(parse_id),
        first(o, &["agentRegistry", "agent_registry", "registry"]).and_then(text),
    ))
}

fn parse_metadata(o: &Map<String, Value>) -> WorkerMetadata {
    WorkerMetadata {
        gpu: first(o, &["gpu", "gpu_model", "gpuModel"]).and_then(text),
        best_val_bpb: first(o, &["best_val_bpb", "bestValBpb", "best_bpb"])
            .and_then(number)
            .filter(|n| *n > 0.0),
        total_experiments: first(o, &["total_experiments", "totalExperiments", "experiments"])
            .and_then(|v| number(v).filter(|n| *n >= 0.0 && *n <= u64::MAX as f64))
            .map(|n| n as u64),
        updated: first(o, &["updated", "updated_at", "updatedAt"]).and_then(text),
    }
}

fn merge_metadata(primary: WorkerMetadata, fallback: WorkerMetadata) -> WorkerMetadata {
    WorkerMetadata {
        gpu: primary.gpu.or(fallback.gpu),
        best_val_bpb: primary.best_val_bpb.or(fallback.best_val_bpb),
        total_experiments: primary.total_experiments.or(fallback.total_experiments),
        updated: primary.updated.or(fallback.updated),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn current() -> Value {
        json!({"type": "https://eips.ethereum.org/EIPS/eip-8004#registration-v1",
         "name": "GPU Worker Alpha", "description": "...", "image": "https://example.com/i.png",
         "services": [
           {"name": "web", "endpoint": "https://worker.example.com/services/autoresearch-worker", "version": "1.0.0"},
           {"name": "OASF", "endpoint": "https://github.com/agntcy/oasf/", "version": "v0.8.0",
            "skills": ["devops_mlops/model_versioning"], "domains": ["research_and_development/scientific_research"]}],
         "x402Support": true, "active": true,
         "registrations": [{"agentId": 42, "agentRegistry": "eip155:84532:0x8004A818BFB912233c491871b3d84c89A494BD9e"}],
         "supportedTrust": ["reputation"],
         "metadata": {"gpu": "A100-80GB", "best_val_bpb": "0.9712", "total_experiments": "42", "updated": "2026-03-12T10:30:00Z"}})
    }

    #[test]
    fn reads_the_current_document() {
        let r = parse_registration(&current()).unwrap();
        let filter = SkillFilter::new("devops_mlops/model_versioning");
        assert_eq!(r.name.as_deref(), Some("GPU Worker Alpha"));
        assert!(r.has_skill(&filter));
        assert!(r.x402 && r.active);
        assert_eq!(
            r.worker_endpoint().unwrap().as_str(),
            "https://worker.example.com/services/autoresearch-worker"
        );
        assert_eq!(r.agent_id_for(Some(84532)), Some(42));
        assert_eq!(r.services[1].version.as_deref(), Some("0.8"));
        assert_eq!(r.metadata.best_val_bpb, Some(0.9712));
        assert_eq!(r.metadata.total_experiments, Some(42));
        assert_eq!(r.metadata.gpu.as_deref(), Some("A100-80GB"));
        assert_eq!(r.trust, vec!["reputation"]);
    }

    #[test]
    fn reads_every_variant() {
        let doc = json!({
            "name": "Beta",
            "endpoints": [
                {"name": "A2A", "endpoint": "https://beta.example.com/.well-known/agent.json"},
                {"name": "worker", "endpoint": "https://beta.example.com/run/experiment/"},
                {"name": "oasf", "version": "0.8", "skills": [{"name": "ai_ml_engineering/ml_lifecycle/model_versioning", "id": 99}]}],
            "x402support": {"enabled": true},
            "supportedTrusts": ["crypto-economic"],
            "registrations": [{"agentId": "7", "agentRegistry": "eip155:8453:0x8004A169FB4a3325136EB29fA0ceB6D2e539a432"}],
            "metadata": {"best_val_bpb": 0.98, "total_experiments": 3}
        });
        let r = parse_registration(&doc).unwrap();
        assert!(r.has_skill(&SkillFilter::new("devops_mlops/model_versioning")));
        assert!(r.x402);
        assert_eq!(r.trust, vec!["crypto-economic"]);
        assert_eq!(r.agent_id_for(Some(8453)), Some(7));
        assert_eq!(
            r.worker_endpoint().unwrap().as_str(),
            "https://beta.example.com/run"
        );
        assert_eq!(r.metadata.best_val_bpb, Some(0.98));
        assert_eq!(r.services[2].version.as_deref(), Some("0.8"));

        let legacy = json!({"services": [{"name": "web", "endpoint": "http://gamma.example.com/"},
            {"name": "OASF", "version": "v0.7.0", "skills": [{"id": 1204}]}],
            "trustModels": ["reputation"], "x402Support": "true"});
        let r = parse_registration(&legacy).unwrap();
        assert!(r.has_skill(&SkillFilter::new("machine_learning/model_optimization")));
        assert_eq!(
            r.worker_endpoint().unwrap().as_str(),
            "http://gamma.example.com/"
        );
        assert!(r.x402);
        assert_eq!(r.services[1].version.as_deref(), Some("0.7"));

        let old_skill = json!({"services": [{"name": "OASF", "skills": ["machine_learning/model_optimization"]}]});
        assert!(
            parse_registration(&old_skill)
                .unwrap()
                .has_skill(&SkillFilter::new("devops_mlops/model_versioning"))
        );
    }

    #[test]
    fn reads_the_detail_record_services_object() {
        let detail = json!({"name": "Delta", "x402_supported": true,
            "services": {"web": {"endpoint": "https://delta.example.com/services/w"},
                         "oasf": {"version": "v0.8.0", "skills": ["devops_mlops/model_versioning"]},
                         "ens": "delta.eth"}});
        let r = parse_registration(&detail).unwrap();
        assert!(r.x402);
        assert!(r.has_skill(&SkillFilter::new("devops_mlops/model_versioning")));
        assert_eq!(
            r.worker_endpoint().unwrap().as_str(),
            "https://delta.example.com/services/w"
        );
        assert!(
            r.services
                .iter()
                .any(|s| s.name == "ens" && s.endpoint.as_deref() == Some("delta.eth"))
        );
    }

    #[test]
    fn inactive_wrong_skill_and_junk() {
        let mut doc = current();
        doc["active"] = json!(false);
        assert!(!parse_registration(&doc).unwrap().active);
        doc["active"] = json!("false");
        assert!(!parse_registration(&doc).unwrap().active);
        let filter = SkillFilter::new("devops_mlops/model_versioning");
        let other = json!({"services": [{"name": "OASF", "skills": ["natural_language_processing/summarization"]}]});
        assert!(!parse_registration(&other).unwrap().has_skill(&filter));
        assert!(parse_registration(&json!([1, 2])).is_err());
        assert!(parse_registration(&json!("x")).is_err());
        let junk = json!({"services": "nope", "metadata": {"best_val_bpb": "NaN", "total_experiments": -3},
            "registrations": [1, {"agentId": {}}], "skills": [null, true]});
        let r = parse_registration(&junk).unwrap();
        assert_eq!(r.metadata.best_val_bpb, None);
        assert_eq!(r.metadata.total_experiments, None);
        assert_eq!(r.worker_endpoint(), None);
    }

    #[test]
    fn ids_in_every_form() {
        assert_eq!(parse_id(&json!(42)), Some(42));
        assert_eq!(parse_id(&json!("42")), Some(42));
        assert_eq!(parse_id(&json!("0x2a")), Some(42));
        assert_eq!(
            parse_id(&json!(
                "84532:0x8004A818BFB912233c491871b3d84c89A494BD9e:42"
            )),
            Some(42)
        );
        assert_eq!(parse_id(&json!(42.0)), Some(42));
        assert_eq!(parse_id(&json!(-1)), None);
        assert_eq!(parse_id(&json!("99999999999999999999999")), None);
    }

    #[test]
    fn non_http_endpoints_are_ignored() {
        let doc = json!({"services": [{"name": "web", "endpoint": "javascript:alert(1)"},
            {"name": "x", "endpoint": "ftp://h/services/w"}]});
        assert_eq!(parse_registration(&doc).unwrap().worker_endpoint(), None);
    }
}
