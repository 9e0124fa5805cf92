//! The checks a reply goes through before anything is paid (no network: `check` is pure).

use super::*;
use crate::crd::DEFAULT_LLM_ENDPOINT;

const BASE: &str = "DEPTH = 8  # layers\nLR = 0.04\nprint(f'val_bpb: {1.0}')\n";

fn proposer(limits: LlmLimits) -> LlmProposer {
    let spec: LlmSpec = serde_json::from_value(serde_json::json!({"model": "m"})).unwrap();
    assert_eq!(spec.endpoint, DEFAULT_LLM_ENDPOINT);
    LlmProposer::with_limits(&spec, None, program_or_default(None), limits).unwrap()
}

/// A context on BASE with no results.
fn context<'a>(tried: &'a (dyn Fn(&str) -> bool + Sync)) -> ProposalContext<'a> {
    ProposalContext {
        base_train_py: BASE,
        recent: &[],
        noise_floor: 0.002,
        tried,
    }
}

fn check(content: &str, tried: &(dyn Fn(&str) -> bool + Sync)) -> Result<LlmProposal, Refused> {
    let ctx = context(tried);
    let reply = client::ModelAnswer {
        content: content.into(),
        truncated: false,
    };
    proposer(LlmLimits::default()).check(&ctx, &reply)
}

fn edit(old: &str, new: &str) -> String {
    serde_json::json!({"description": "an edit", "changes": [{"old": old, "new": new}]}).to_string()
}

#[test]
fn a_valid_edit_becomes_a_proposal() {
    let p = check(&edit("DEPTH = 8", "DEPTH = 10"), &|_| false).unwrap();
    assert_eq!(p.description, "an edit");
    assert_eq!(p.train_py, BASE.replace("DEPTH = 8", "DEPTH = 10"));
}

#[test]
fn each_unusable_reply_is_refused_with_its_kind() {
    let never = |_: &str| false;
    let cases = [
        (edit("DEPTH = 9", "DEPTH = 10"), RefusalKind::NoMatch),
        (edit("= ", "="), RefusalKind::AmbiguousMatch),
        (edit("LR = 0.04", "LR = 0.04 *"), RefusalKind::SyntaxError),
        (edit("LR = 0.04", "LR = 0.04"), RefusalKind::Unchanged),
        ("no idea".to_string(), RefusalKind::Unparseable),
    ];
    for (content, kind) in cases {
        assert_eq!(check(&content, &never).unwrap_err().kind, kind, "{content}");
    }
    let refused = check(&edit("LR = 0.04", "LR = 0.04 *"), &never).unwrap_err();
    assert!(refused.message.contains("line 2"), "{}", refused.message);
}

#[test]
fn a_train_py_already_tried_is_refused() {
    let target = BASE.replace("LR = 0.04", "LR = 0.03");
    let hash = train_hash(&target);
    let tried = move |h: &str| h == hash;
    let r = check(&edit("LR = 0.04", "LR = 0.03"), &tried).unwrap_err();
    assert_eq!(r.kind, RefusalKind::AlreadyTried);
    assert!(check(&edit("LR = 0.04", "LR = 0.02"), &tried).is_ok());
}

#[test]
fn a_train_py_over_the_size_limit_is_refused() {
    let limits = LlmLimits {
        max_train_py_bytes: BASE.len() + 10,
        ..LlmLimits::default()
    };
    let never = |_: &str| false;
    let ctx = context(&never);
    let big = client::ModelAnswer {
        content: edit("LR = 0.04", &format!("LR = 0.04  # {}", "x".repeat(100))),
        truncated: false,
    };
    let r = proposer(limits).check(&ctx, &big).unwrap_err();
    assert_eq!(r.kind, RefusalKind::TooLarge);
}

#[test]
fn a_whole_file_reply_is_checked_like_an_edit() {
    let whole = format!("Deeper.\n```python\n{}```", BASE.replace("8", "12"));
    let p = check(&whole, &|_| false).unwrap();
    assert_eq!(p.description, "Deeper.");
    assert!(p.train_py.starts_with("DEPTH = 12"));
    let broken = "Oops.\n```python\ndef f(:\n```";
    assert_eq!(
        check(broken, &|_| false).unwrap_err().kind,
        RefusalKind::SyntaxError
    );
}

#[test]
fn a_cut_off_reply_says_so() {
    let never = |_: &str| false;
    let ctx = context(&never);
    let reply = client::ModelAnswer {
        content: "{\"description\": \"x\", \"changes\": [{\"old\": \"LR".into(),
        truncated: true,
    };
    let r = proposer(LlmLimits::default())
        .check(&ctx, &reply)
        .unwrap_err();
    assert!(r.message.contains("max_tokens"), "{}", r.message);
}

#[test]
fn waits_are_bounded() {
    let p = proposer(LlmLimits {
        backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(5),
        max_retry_after: Duration::from_secs(10),
        ..LlmLimits::default()
    });
    let server = LlmError::Server {
        status: 500,
        message: String::new(),
    };
    assert_eq!(p.wait_after(&server, 0), Some(Duration::from_secs(1)));
    assert_eq!(p.wait_after(&server, 2), Some(Duration::from_secs(4)));
    assert_eq!(p.wait_after(&server, 40), Some(Duration::from_secs(5)));
    let limited = |s| LlmError::RateLimited {
        retry_after: Some(Duration::from_secs(s)),
        message: String::new(),
    };
    assert_eq!(p.wait_after(&limited(3), 0), Some(Duration::from_secs(3)));
    assert_eq!(
        p.wait_after(&limited(3600), 0),
        None,
        "too long: give up for now"
    );
}

#[tokio::test]
async fn no_calls_left_makes_no_call() {
    let never = |_: &str| false;
    let ctx = context(&never);
    let outcome = proposer(LlmLimits::default()).propose(&ctx, 0).await;
    assert_eq!(outcome.calls, 0);
    assert_eq!(outcome.error, Some(LlmError::NoCallsLeft));
}

#[test]
fn conversations_stay_bounded() {
    let mut c = Conversation::new("program", "request".into());
    for i in 0..10 {
        c.refused(&format!("reply {i}"), "bad");
    }
    let m = c.messages();
    assert_eq!(m.len(), 2 + 2 * KEPT_EXCHANGES);
    assert_eq!(m[0].content, "program");
    assert_eq!(m[1].content, "request");
    assert_eq!(m[m.len() - 2].content, "reply 9");
}

#[test]
fn propose_can_run_in_a_spawned_task() {
    fn spawnable<F: std::future::Future + Send + 'static>(_: F) {}
    let p = proposer(LlmLimits::default());
    spawnable(async move {
        let tried = std::collections::HashSet::<String>::new();
        let is_tried = move |h: &str| tried.contains(h);
        p.propose(&context(&is_tried), 1).await
    });
}
