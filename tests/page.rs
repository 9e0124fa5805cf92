//! The live campaign page: escaping of what workers and models wrote, and rendering in real
//! headless Chromium (Debian's `chromium`, scripts/install-chromium.sh) of the page a real
//! controller serves for a campaign it ran on the payments testbed.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use autoresearch_coordinator::crd::ExperimentCampaign;
use autoresearch_coordinator::report::page;
use autoresearch_coordinator::report::{ResultHistory, Row};
use kube::api::{Api, PostParams};
use serde_json::json;
use support::controller::{Controller, campaign, signer_secret, wait_done};
use support::testbed::Testbed;

const SCRIPT: &str = "<script>alert(1)</script>";

/// Runs headless Chromium on `url` with `args`; returns (stdout, console messages).
fn chromium(url: &str, args: &[&str]) -> (String, Vec<String>) {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args(["--headless=new", "--no-sandbox", "--disable-gpu"])
        // Console messages (errors included) are logged as `INFO:CONSOLE` lines on stderr.
        .args(["--enable-logging=stderr", "--v=0"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium is installed (scripts/install-chromium.sh)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let console = stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect();
    (String::from_utf8_lossy(&out.stdout).into_owned(), console)
}

fn dump_dom(url: &str) -> (String, Vec<String>) {
    chromium(url, &["--dump-dom"])
}

fn screenshot(url: &str, path: &Path) -> Vec<String> {
    let _ = std::fs::remove_file(path);
    let (_, console) = chromium(
        url,
        &[
            &format!("--screenshot={}", path.display()),
            "--window-size=1280,1800",
            "--hide-scrollbars",
        ],
    );
    let png = std::fs::read(path).expect("chromium wrote the screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    console
}

fn target_dir() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| support::repo().join("target"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_console_check_sees_errors() {
    // The check below is only worth something if it catches a page that does fail.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.html");
    std::fs::write(
        &bad,
        "<p>x</p><script>console.error('boom'); nope();</script>",
    )
    .unwrap();
    let (_, console) = dump_dom(&format!("file://{}", bad.display()));
    assert!(console.iter().any(|l| l.contains("boom")), "{console:?}");
    assert!(
        console.iter().any(|l| l.contains("nope is not defined")),
        "{console:?}"
    );
}

fn hostile_campaign() -> (ExperimentCampaign, ResultHistory) {
    let mut c: ExperimentCampaign = serde_json::from_value(json!({
        "apiVersion": "autoresearch.obol.org/v1alpha1", "kind": "ExperimentCampaign",
        "metadata": {"name": "evil", "namespace": "ns"},
        "spec": {"trainScript": {"inline": "x"}, "search": {"strategy": "list", "experiments": [{}]},
                 "maxExperiments": 5, "budget": {"total": "1", "maxPricePerExperiment": "0.1"}}
    }))
    .unwrap();
    c.status = Some(
        serde_json::from_value(json!({
            "phase": "Running", "progress": "2/5",
            "leaderboard": [{"experimentId": "e1", "valBpb": 0.99, "worker": "<img src=x onerror=alert(2)>"}],
            "conditions": [{"type": "Progressing", "status": "True", "reason": "Running",
                            "message": "worker said <b>hi</b>", "lastTransitionTime": "2026-01-01T00:00:00Z"}]
        }))
        .unwrap(),
    );
    let rows: Vec<Row> = [
        json!({"experiment_id": "e0", "val_bpb": 1.0, "worker_endpoint": "http://w/a", "status": "keep"}),
        json!({"experiment_id": "e1", "val_bpb": 0.99, "worker_endpoint": "<img src=x onerror=alert(3)>",
               "status": "keep", "description": SCRIPT}),
    ]
    .into_iter()
    .map(|v| serde_json::from_value(v).unwrap())
    .collect();
    (c, ResultHistory::new(Some("ns/evil".into()), rows, 0.002))
}

#[test]
fn what_workers_and_models_wrote_is_shown_as_text() {
    let (c, history) = hostile_campaign();
    let events = [page::EventLine {
        reason: "ExperimentFailed".into(),
        note: "</td><script>alert(4)</script>".into(),
        ..Default::default()
    }];
    let html = page::campaign(&c, &history, &events);
    assert!(!html.to_lowercase().contains("<script"), "{html}");
    assert!(!html.contains("<img"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));

    // In a browser: no script element, no image, and the text reads as written.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("page.html");
    std::fs::write(&file, &html).unwrap();
    let (dom, console) = dump_dom(&format!("file://{}", file.display()));
    assert!(console.is_empty(), "console: {console:?}");
    assert!(!dom.contains("<script") && !dom.contains("<img"), "{dom}");
    // The leaderboard cell and the chart's label both hold the description as text.
    assert!(
        dom.matches("&lt;script&gt;alert(1)&lt;/script&gt;").count() >= 2,
        "{dom}"
    );
    assert!(dom.contains("worker said &lt;b&gt;hi&lt;/b&gt;"));
}

#[tokio::test]
async fn a_real_controller_serves_the_page_and_chromium_renders_chart_and_leaderboard() {
    let client = support::client().await;
    support::install_crd(&client).await;
    let ns = support::namespace(&client, "page").await;
    let tb = Testbed::start(json!({"workers": [
        {"name": "w-v2", "gate": "v2", "price": "10000", "durationMs": 100},
        {"name": "w-obol", "gate": "obol", "price": "10000", "durationMs": 100,
         "faults": {"runFails": 1}}
    ]}));
    signer_secret(&client, &ns, &tb).await;
    let data = tempfile::tempdir().unwrap();
    seed_a_hostile_row(data.path(), &ns);
    let controller = Controller::start(&ns, data.path(), "ctl-page");
    let api: Api<ExperimentCampaign> = Api::namespaced(client.clone(), &ns);
    let spec = json!({"maxExperiments": 6, "parallelism": 2, "maxFailedExperiments": 6});
    api.create(&PostParams::default(), &campaign("page", &tb, spec))
        .await
        .unwrap();
    let status = wait_done(&api, "page", 120, &[&controller]).await;
    assert!(status.succeeded >= 1, "{status:?}");

    let tsv = pages_are_served(&controller, &ns, data.path()).await;
    the_report_command_agrees(&ns, data.path(), &status, &tsv);
    chromium_renders(&controller, &ns, data.path(), &status);
}

/// A row a hostile model could have described: it is this campaign's history too.
fn seed_a_hostile_row(data: &Path, ns: &str) {
    let seeded = json!({"experiment_id": "exp-seeded", "train_hash": "sha256:00", "val_bpb": 9.0,
        "worker_endpoint": "http://127.0.0.1:9/services/x", "timestamp": "2026-01-01T00:00:00Z",
        "payment_tx": null, "status": "discard", "run_status": "completed", "description": SCRIPT,
        "campaign_namespace": ns, "campaign_name": "page"});
    std::fs::create_dir_all(data.join("autoresearch")).unwrap();
    std::fs::write(
        data.join("autoresearch/results.jsonl"),
        format!("{seeded}\n"),
    )
    .unwrap();
}

/// The index links the campaign, its page escapes the seeded row, results.tsv has a line per
/// recorded run (the failed one a crash), an unknown campaign is 404. Returns results.tsv.
async fn pages_are_served(controller: &Controller, ns: &str, data: &Path) -> String {
    let (code, index) = controller.http_get("/campaigns").await.unwrap();
    assert_eq!(code, 200, "{index}");
    assert!(
        index.contains(&format!("href=\"/campaigns/{ns}/page\"")),
        "{index}"
    );
    let (code, html) = controller
        .http_get(&format!("/campaigns/{ns}/page"))
        .await
        .unwrap();
    assert_eq!(code, 200, "{html}");
    assert!(html.contains("http-equiv=\"refresh\""));
    assert!(
        !html.to_lowercase().contains("<script"),
        "the seeded description is escaped"
    );
    let (code, tsv) = controller
        .http_get(&format!("/campaigns/{ns}/page/results.tsv"))
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(tsv.starts_with("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"));
    let recorded = support::controller::results(data).len();
    assert_eq!(
        tsv.lines().count(),
        1 + recorded,
        "a line per recorded run:\n{tsv}"
    );
    assert!(
        tsv.contains("\tcrash\t"),
        "the failed run is a crash:\n{tsv}"
    );
    let (code, _) = controller
        .http_get(&format!("/campaigns/{ns}/missing"))
        .await
        .unwrap();
    assert_eq!(code, 404);
    tsv
}

/// `report` on the live campaign: its rows only, its noise floor, the files written.
fn the_report_command_agrees(
    ns: &str,
    data: &Path,
    status: &autoresearch_coordinator::crd::ExperimentCampaignStatus,
    tsv: &str,
) {
    let out_dir = data.join("report");
    let out = Command::new(env!("CARGO_BIN_EXE_autoresearch-coordinator"))
        .args(["report", "--json", "--namespace", ns, "--name", "page"])
        .arg("--data-dir")
        .arg(data)
        .arg("--out")
        .arg(&out_dir)
        .env("KUBECONFIG", support::kubeconfig())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["campaign"], format!("{ns}/page"));
    assert_eq!(
        summary["experiments"],
        support::controller::results(data).len()
    );
    assert_eq!(summary["spent_usdc"], status.spent.clone().unwrap());
    // The last kept result is within the noise floor of the lowest (status.best): a lower one
    // that was not kept did not beat it by more than the floor.
    let kept = summary["best"]["val_bpb"].as_f64().unwrap();
    // (status.best is the verified best; the lowest claim is bestClaimed when it differs.)
    let lowest = status
        .best_claimed
        .as_ref()
        .or(status.best.as_ref())
        .unwrap()
        .val_bpb;
    assert!(
        lowest <= kept && kept - lowest <= 0.002 + 1e-12,
        "{kept} vs {lowest}"
    );
    assert_eq!(
        std::fs::read_to_string(out_dir.join("results.tsv")).unwrap(),
        tsv
    );
}

/// Chromium renders the chart (titled with the count of recorded runs) and the leaderboard
/// (a row per status entry), runs no script and logs nothing; screenshots for a human.
fn chromium_renders(
    controller: &Controller,
    ns: &str,
    data: &Path,
    status: &autoresearch_coordinator::crd::ExperimentCampaignStatus,
) {
    let base = format!("http://{}", controller.metrics);
    let url = format!("{base}/campaigns/{ns}/page");
    let (dom, console) = dump_dom(&url);
    assert!(console.is_empty(), "console: {console:?}");
    let chart = &dom[dom.find("<div id=\"chart\">").expect("chart div")..];
    let recorded = support::controller::results(data).len();
    let title = format!("{ns}/page: {recorded} experiments");
    assert!(
        chart.contains("<svg") && chart.contains(&title),
        "{title}: {chart}"
    );
    let board = &dom[dom.find("<table id=\"leaderboard\">").expect("leaderboard")..];
    let board = &board[..board.find("</table>").unwrap()];
    let rows = board.matches("<tr>").count() - 1;
    assert_eq!(rows, status.leaderboard.len(), "{board}");
    assert!(rows >= 1);
    assert!(!dom.contains("<script"), "{dom}");

    let shot = target_dir().join("campaign-page.png");
    let console = screenshot(&url, &shot);
    assert!(console.is_empty(), "console: {console:?}");
    eprintln!("screenshot: {}", shot.display());
    let console = screenshot(
        &format!("{base}/campaigns"),
        &target_dir().join("campaigns-index.png"),
    );
    assert!(console.is_empty(), "console: {console:?}");
}
