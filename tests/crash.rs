//! A test for every crash window: the controller binary (built with `--features failpoints`)
//! aborts at one named point between two money steps, as a SIGKILL would, and a second
//! controller finishes the campaign. The chain is the judge: per nonce, the USDC contract's
//! `AuthorizationUsed` logs say what was paid, and each experiment must be paid at most once and
//! recorded exactly once (results.jsonl and status agree). docs/failpoints.md lists the windows.

mod support;

use autoresearch_coordinator::crd::Phase;
use autoresearch_coordinator::failpoint::Window;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use support::controller::{
    Controller, campaign, in_flight, setup, three_workers, wait_done, wait_for,
};
use support::onchain::{assert_books_match_chain, assert_lines_match_chain, baseline};

/// Runs a 4-experiment campaign with a controller armed to abort at `window`, then finishes it
/// with a second controller and checks the books against the chain.
async fn crash_and_resume(window: Window) {
    let prefix = format!("crash-{}", window.name().replace(['.', '_'], "-"));
    // Runs of 1 s: `run.after_send` aborts 300 ms into the request, before the answer.
    let s = setup(&prefix, three_workers(1000)).await;
    let before = baseline(&s).await;
    let armed = format!("{}=return", window.name());
    let mut first =
        Controller::start_with(&s.ns, s.data.path(), "ctl-armed", &[("FAILPOINTS", &armed)]);
    let spec = json!({"maxExperiments": 4, "parallelism": 2});
    s.api
        .create(&PostParams::default(), &campaign("crash", &s.tb, spec))
        .await
        .unwrap();
    let exit = first.wait_exit(90);
    assert!(!exit.success(), "{exit:?}\n{}", first.log_text());
    let aborted = format!("failpoint {}: aborting", window.name());
    assert!(first.log_text().contains(&aborted), "{}", first.log_text());

    let second = Controller::start(&s.ns, s.data.path(), "ctl-after");
    let status = wait_done(&s.api, "crash", 120, &[&first, &second]).await;
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:?}");
    assert_eq!(status.succeeded, 4, "{status:?}");
    assert_books_match_chain(&s, "crash", &status, &before).await;
}

#[tokio::test]
async fn crash_after_signing_before_the_ledger_write() {
    crash_and_resume(Window::AfterSign).await;
}

#[tokio::test]
async fn crash_after_the_ledger_write_before_sending() {
    crash_and_resume(Window::AfterReserve).await;
}

#[tokio::test]
async fn crash_after_sending_before_the_answer() {
    crash_and_resume(Window::AfterSend).await;
}

#[tokio::test]
async fn crash_after_the_answer_before_the_results_append() {
    crash_and_resume(Window::AfterAnswer).await;
}

#[tokio::test]
async fn crash_after_the_results_append_before_the_status_write() {
    crash_and_resume(Window::AfterAppend).await;
}

#[tokio::test]
async fn crash_after_the_status_write() {
    crash_and_resume(Window::AfterStatus).await;
}

/// Deletion keeps paid work, across a crash: the campaign is deleted with two paid experiments
/// in flight, the controller aborts while draining it, and the next one records both before
/// the finalizer lets the campaign go. Nothing new is paid after the delete.
#[tokio::test]
async fn a_crash_while_deleting_keeps_the_campaign_until_its_paid_experiments_are_recorded() {
    let s = setup("crash-delete", three_workers(3000)).await;
    let before = baseline(&s).await;
    let finalizer = ("CAMPAIGN_FINALIZER", "true");
    let armed = [finalizer, ("FAILPOINTS", "delete.draining=return")];
    let mut first = Controller::start_with(&s.ns, s.data.path(), "ctl-armed", &armed);
    let spec = json!({"maxExperiments": 20, "parallelism": 2});
    s.api
        .create(&PostParams::default(), &campaign("doomed", &s.tb, spec))
        .await
        .unwrap();
    let running = wait_for(&s.api, "doomed", 60, "2 in flight", &[&first], |c| {
        c.status.as_ref().is_some_and(|st| st.ledger.len() == 2)
    })
    .await;
    let in_flight = in_flight(&running);
    s.api
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    let exit = first.wait_exit(30);
    assert!(!exit.success(), "{exit:?}\n{}", first.log_text());
    let kept = s.api.get("doomed").await.expect("kept by the finalizer");
    assert!(kept.metadata.deletion_timestamp.is_some());

    let second = Controller::start_with(&s.ns, s.data.path(), "ctl-after", &[finalizer]);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while s.api.get_opt("doomed").await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never released:\n{}",
            second.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let lines = assert_lines_match_chain(&s, &["doomed"], &before).await;
    for id in &in_flight {
        assert!(
            lines
                .iter()
                .any(|l| l["experiment_id"] == id.as_str() && l["status"] == "completed"),
            "in flight at the delete, not recorded: {id}\n{lines:#?}"
        );
    }
    // Nothing started after the delete: only what was finished or in flight then is recorded.
    let finished_then = kept.status.unwrap().succeeded as usize;
    assert_eq!(lines.len(), finished_then + in_flight.len(), "{lines:#?}");
}

/// A voucher signed ahead for a busy worker is in the ledger, not sent, when the controller
/// aborts. The next controller finishes it with the same voucher once its worker is free:
/// every experiment is paid once on chain and recorded once.
#[tokio::test]
async fn crash_with_a_voucher_signed_ahead_and_not_sent() {
    let s = setup("crash-ahead", three_workers(1500)).await;
    let before = baseline(&s).await;
    let armed = format!("{}=return", Window::SignedAhead.name());
    let mut first =
        Controller::start_with(&s.ns, s.data.path(), "ctl-armed", &[("FAILPOINTS", &armed)]);
    // Nothing is signed ahead while a replication runs or waits: none here, so that the
    // window is reached soon after the baseline runs.
    let spec = json!({"maxExperiments": 8, "parallelism": 2, "objective": {"replicate": false}});
    s.api
        .create(&PostParams::default(), &campaign("ahead", &s.tb, spec))
        .await
        .unwrap();
    let exit = first.wait_exit(90);
    assert!(!exit.success(), "{exit:?}\n{}", first.log_text());
    let crashed = s.api.get("ahead").await.unwrap().status.unwrap();
    let waiting: Vec<_> = crashed
        .ledger
        .iter()
        .filter(|e| {
            e.payment_state == Some(autoresearch_coordinator::crd::PaymentState::SignedAhead)
        })
        .collect();
    assert_eq!(waiting.len(), 1, "{:#?}", crashed.ledger);
    assert_eq!(crashed.running as usize, crashed.ledger.len() - 1);

    let second = Controller::start(&s.ns, s.data.path(), "ctl-after");
    let status = wait_done(&s.api, "ahead", 120, &[&first, &second]).await;
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:?}");
    assert_eq!(status.succeeded, 8, "{status:?}");
    assert_books_match_chain(&s, "ahead", &status, &before).await;
}
