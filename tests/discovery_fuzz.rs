//! The registration parser and worker builder never panic, whatever JSON a stranger publishes.

use autoresearch_coordinator::discovery::{
    AddressPolicy, FoundIn, SkillFilter, Worker, parse_registration,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Arbitrary JSON, biased towards the keys and shapes the parser looks at.
fn json_value() -> impl Strategy<Value = Value> {
    let keys = prop::sample::select(vec![
        "name",
        "services",
        "endpoints",
        "endpoint",
        "skills",
        "x402Support",
        "x402support",
        "active",
        "registrations",
        "agentId",
        "agentRegistry",
        "metadata",
        "best_val_bpb",
        "total_experiments",
        "gpu",
        "version",
        "id",
        "enabled",
        "web",
        "oasf",
        "supportedTrust",
        "trustModels",
        "url",
        "type",
    ])
    .prop_map(str::to_string);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        any::<u64>().prop_map(|n| json!(n)),
        prop::sample::select(vec![
            "https://w.example.com/services/w",
            "http://127.0.0.1:1/experiment",
            "devops_mlops/model_versioning",
            "v0.8.0",
            "0x2a",
            "84532:0xabc:7",
            "true",
            "NaN",
            "",
            "eip155:84532:0x8004A818BFB912233c491871b3d84c89A494BD9e",
        ])
        .prop_map(|s| Value::String(s.to_string())),
        ".*".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((keys.clone(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parser_never_panics(doc in json_value()) {
        let filter = SkillFilter::new("devops_mlops/model_versioning");
        if let Ok(reg) = parse_registration(&doc) {
            let _ = reg.worker_endpoint();
            let _ = reg.agent_id_for(Some(84532));
            if let Ok(worker) = Worker::from_registration(&reg, &filter, None, Some(84532), FoundIn::Index) {
                // Whatever the document says, the endpoint is an http(s) URL.
                let url = worker.url().expect("endpoint parses");
                prop_assert!(matches!(url.scheme(), "http" | "https"));
                let _ = AddressPolicy::strict().check_url(&url);
            }
        }
    }

    #[test]
    fn parser_never_panics_on_any_text(text in ".{0,200}") {
        if let Ok(doc) = serde_json::from_str::<Value>(&text) {
            let _ = parse_registration(&doc);
        }
    }

    #[test]
    fn allowlist_parsing_never_panics(entry in ".{0,64}") {
        let _ = AddressPolicy::with_allowlist(&[entry]);
    }
}
