//! What an experiment is: a train.py and a config, identified by their hash.
//!
//! The id is derived, not random, so that the same (train.py, config) pair always gets the same
//! id: a duplicate proposal is recognised and never paid twice (docs/design.md, invariant 4), and a worker's
//! `GET /experiments/<id>` finds the result of a run whose answer was lost.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// `sha256:<hex>` of a train.py, as workers report it in `train_hash`.
pub fn train_hash(train_py: &str) -> String {
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(train_py.as_bytes()))
    )
}

/// Canonical JSON: object keys sorted at every level, no whitespace. Two configs that differ only
/// in key order are the same experiment.
pub fn canonical_json(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<_> = map.keys().collect();
                keys.sort();
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&map[k])))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    // serde_json keeps insertion order only with `preserve_order`; without it maps are sorted
    // already, and rebuilding them sorted makes the result independent of that feature.
    sorted(value).to_string()
}

/// The experiment id for a (train.py, config) pair: `exp-` and 16 hex digits of
/// sha256(train_hash || "\n" || canonical config). Matches the worker API's `[A-Za-z0-9_-]+`.
pub fn experiment_id(train_py: &str, config: &Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(train_hash(train_py).as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical_json(config).as_bytes());
    format!("exp-{}", &hex::encode(hasher.finalize())[..16])
}

/// `sha256:<hex>` of a config's canonical JSON: what status keeps instead of the config.
pub fn config_hash(config: &Value) -> String {
    train_hash(&canonical_json(config))
}

/// The id an experiment is sent to a worker under: unique to the campaign (`scope`, its uid),
/// so a worker that ran the same train.py and config for another campaign never hands that
/// campaign's stored result back as ours. Within a campaign the content id still dedups.
pub fn worker_id(scope: &str, experiment_id: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(scope.as_bytes());
    hasher.update(b"\n");
    hasher.update(experiment_id.as_bytes());
    format!("exp-{}", &hex::encode(hasher.finalize())[..24])
}

/// Whether a string is a valid experiment id for the worker API.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn id_ignores_key_order_but_not_values() {
        let a = experiment_id(
            "print(1)",
            &json!({"lr": 0.01, "depth": 8, "opt": {"b": 1, "a": 2}}),
        );
        let b = experiment_id(
            "print(1)",
            &json!({"opt": {"a": 2, "b": 1}, "depth": 8, "lr": 0.01}),
        );
        let c = experiment_id(
            "print(1)",
            &json!({"lr": 0.02, "depth": 8, "opt": {"b": 1, "a": 2}}),
        );
        let d = experiment_id(
            "print(2)",
            &json!({"lr": 0.01, "depth": 8, "opt": {"b": 1, "a": 2}}),
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert!(is_valid_id(&a));
        assert_eq!(a.len(), 4 + 16);
    }

    #[test]
    fn the_id_sent_to_a_worker_differs_per_campaign_and_is_stable() {
        let id = experiment_id("print(1)", &json!({"lr": 0.01}));
        let a = worker_id("uid-a", &id);
        assert_eq!(
            a,
            worker_id("uid-a", &id),
            "a resumed send asks for the same id"
        );
        assert_ne!(a, worker_id("uid-b", &id));
        assert_ne!(a, id);
        assert!(is_valid_id(&a));
    }

    #[test]
    fn train_hash_is_sha256_hex() {
        assert_eq!(
            train_hash(""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn id_validation() {
        assert!(is_valid_id("exp-20260312-a1b2c3"));
        assert!(!is_valid_id("../etc/passwd"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a b"));
    }
}
