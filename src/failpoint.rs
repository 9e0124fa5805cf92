//! Crash windows for tests: named points where a test build aborts the process, as a SIGKILL
//! would, so each window between two money steps can be tested deterministically.
//!
//! Built only with the `failpoints` cargo feature (the `fail` crate's `failpoints`); in a normal
//! build every call here compiles to nothing. A test arms a window through the environment of the
//! controller it starts: `FAILPOINTS=run.after_sign=return` aborts the first time that point is
//! reached (`1*return` and the other `fail` actions work too). docs/failpoints.md lists them.

use std::future::Future;
#[cfg(feature = "failpoints")]
use std::time::Duration;

/// The crash windows of one experiment, in the order it passes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// The voucher is signed; the ledger entry is not written yet.
    AfterSign,
    /// The ledger entry (status) is written; nothing is sent yet.
    AfterReserve,
    /// A voucher signed ahead for a busy worker is reserved (`SignedAhead`); it is not sent.
    SignedAhead,
    /// The request is at the worker; its answer has not come back.
    AfterSend,
    /// The worker answered; results.jsonl has not been appended to yet.
    AfterAnswer,
    /// The result is in results.jsonl; the status write has not happened yet.
    AfterAppend,
    /// The result is in status too.
    AfterStatus,
    /// A deleted campaign still has paid experiments in flight; the controller drains it.
    DeleteDraining,
}

impl Window {
    pub const ALL: [Window; 8] = [
        Window::AfterSign,
        Window::AfterReserve,
        Window::SignedAhead,
        Window::AfterSend,
        Window::AfterAnswer,
        Window::AfterAppend,
        Window::AfterStatus,
        Window::DeleteDraining,
    ];

    /// The failpoint's name, as FAILPOINTS spells it.
    pub fn name(self) -> &'static str {
        match self {
            Window::AfterSign => "run.after_sign",
            Window::AfterReserve => "run.after_reserve",
            Window::SignedAhead => "run.signed_ahead",
            Window::AfterSend => "run.after_send",
            Window::AfterAnswer => "run.after_answer",
            Window::AfterAppend => "publish.after_append",
            Window::AfterStatus => "publish.after_status",
            Window::DeleteDraining => "delete.draining",
        }
    }
}

/// Aborts the process here if the window is armed.
pub fn crash_at(window: Window) {
    #[cfg(feature = "failpoints")]
    fail::fail_point!(window.name(), |_| abort(window));
    #[cfg(not(feature = "failpoints"))]
    let _ = window;
}

/// Runs `request` (an HTTP exchange already under way); if the window is armed, aborts once the
/// request has been in flight long enough to reach a loopback peer, before its answer is read.
pub async fn crash_during<F: Future>(window: Window, request: F) -> F::Output {
    #[cfg(feature = "failpoints")]
    {
        let request = std::pin::pin!(request);
        tokio::select! {
            biased;
            answer = request => answer,
            () = async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                crash_at(window);
                std::future::pending::<()>().await
            } => unreachable!("the pending branch never completes"),
        }
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = window;
        request.await
    }
}

#[cfg(feature = "failpoints")]
fn abort(window: Window) {
    eprintln!("failpoint {}: aborting the process", window.name());
    std::process::abort();
}

/// Reads FAILPOINTS once at start-up; the scenario lives as long as the process.
pub fn setup() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}
