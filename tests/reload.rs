//! Hot reload as an operator sees it: real files, the real watcher, the real server. Every
//! wait polls with a deadline; nothing sleeps to let the watcher "catch up".

mod common;

use std::{fs, io::Write as _, time::Duration};

use cedar_pdp::proto::cedarpdp::v1::{self as pb, authorizer_client::AuthorizerClient};
use common::*;
use tonic::transport::Channel;

/// How long a change may take to be served, as the issue promises.
const FOLLOW: Duration = Duration::from_secs(1);
/// A generous bound for waits that are not the point of the test.
const LONG: Duration = Duration::from_secs(10);

const ALICE_READS: &str =
    "permit(principal == User::\"alice\", action == Action::\"read\", resource);\n";
const ALICE_FORBIDDEN: &str =
    "forbid(principal == User::\"alice\", action == Action::\"read\", resource);\n";

fn read_by(user: &str) -> pb::IsAuthorizedRequest {
    request(uid("User", user), uid("Action", "read"), uid("Doc", "d"))
}

async fn allowed(client: &mut AuthorizerClient<Channel>, user: &str) -> (bool, String) {
    let response = client
        .is_authorized(read_by(user))
        .await
        .expect("the call succeeds")
        .into_inner();
    (is_allow(&response), response.policy_version)
}

async fn info(client: &mut AuthorizerClient<Channel>) -> pb::PolicySetInfo {
    client
        .get_policy_set_info(pb::GetPolicySetInfoRequest {})
        .await
        .expect("info")
        .into_inner()
}

/// Polls until alice's read is decided `allow`, within `within`; the version that did.
async fn until_alice(
    client: &AuthorizerClient<Channel>,
    allow: bool,
    within: Duration,
    what: &str,
) -> String {
    eventually(within, what, || {
        let mut client = client.clone();
        async move {
            let (allowed, version) = allowed(&mut client, "alice").await;
            (allowed == allow).then_some(version)
        }
    })
    .await
}

/// Polls `GetPolicySetInfo` until `accept` takes it, within [`LONG`].
async fn until_info(
    client: &AuthorizerClient<Channel>,
    what: &str,
    accept: impl Fn(&pb::PolicySetInfo) -> bool,
) -> pb::PolicySetInfo {
    let accept = &accept;
    eventually(LONG, what, || {
        let mut client = client.clone();
        async move { Some(info(&mut client).await).filter(accept) }
    })
    .await
}

/// A folder holding `policies/a.cedar` (alice may read), for tests that move, remove or
/// replace the policy directory itself; the folder and the directory's path.
fn policies_in_a_folder() -> (tempfile::TempDir, std::path::PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("policies");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("a.cedar"), ALICE_READS).unwrap();
    (root, dir)
}

fn reloads(text: &str, result: &str) -> f64 {
    metric(
        text,
        &format!("cedar_pdp_policy_reloads_total{{result=\"{result}\"}}"),
    )
    .expect("the reload counter is exported")
}

#[tokio::test]
async fn an_edit_that_flips_a_decision_is_served_within_a_second() {
    let dir = policy_dir(&[("a.cedar", ALICE_READS)]);
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;
    assert!(allowed(&mut client, "alice").await.0);

    fs::write(dir.path().join("a.cedar"), ALICE_FORBIDDEN).unwrap();
    let expected = version_of(&[("a.cedar", ALICE_FORBIDDEN)]);
    let version = until_alice(&client, false, FOLLOW, "the edit to be served").await;
    assert_eq!(version, expected);
    server.stop().await;
}

#[tokio::test]
async fn a_decision_kept_for_reuse_is_never_served_once_a_reload_changes_it() {
    let dir = policy_dir(&[("a.cedar", ALICE_READS)]);
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;
    let reused = |text: &str| {
        metric(
            text,
            "cedar_pdp_decisions_reused_total{api=\"is_authorized\"}",
        )
        .expect("the reuse counter is exported")
    };
    for _ in 0..5 {
        assert!(allowed(&mut client, "alice").await.0);
    }
    // The first was evaluated; the others came from the cache.
    let before = reused(&server.metrics_text().await);
    assert_eq!(before, 4.0);

    fs::write(dir.path().join("a.cedar"), ALICE_FORBIDDEN).unwrap();
    until_alice(&client, false, LONG, "the edit to be served").await;
    for _ in 0..5 {
        let (allow, version) = allowed(&mut client, "alice").await;
        assert!(!allow, "a kept allow of the last version was served");
        assert_eq!(version, version_of(&[("a.cedar", ALICE_FORBIDDEN)]));
    }
    // The new version's deny is kept and reused in its turn.
    assert!(reused(&server.metrics_text().await) > before);
    server.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn a_link_to_a_file_outside_the_directory_is_refused_without_quoting_it() {
    // Such a link was read, and the parse error it made quoted the file it pointed at in
    // `last_reload_error` and the logs.
    let outside = tempfile::tempdir().unwrap();
    fs::write(
        outside.path().join("shadow"),
        "root:SECRET-d2f1c0ffee:19000:0:99999:7:::\n",
    )
    .unwrap();
    let dir = policy_dir(&[("a.cedar", ALICE_READS)]);
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;
    let good = info(&mut client).await;

    std::os::unix::fs::symlink(outside.path().join("shadow"), dir.path().join("leak.cedar"))
        .unwrap();
    let failed = until_info(&client, "the failed reload to be reported", |i| {
        !i.last_reload_error.is_empty()
    })
    .await;
    assert_eq!(
        failed.last_reload_error,
        "leak.cedar: is a link to outside the policy directory; only links within it are followed"
    );
    assert_eq!(failed.policy_version, good.policy_version);
    assert!(
        allowed(&mut client, "alice").await.0,
        "the last good set serves"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_invalid_edit_keeps_the_last_good_set_serving_and_says_why_until_fixed() {
    let dir = policy_dir(&[("a.cedar", ALICE_READS)]);
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;
    let good = info(&mut client).await;
    assert!(good.last_reload_error.is_empty());
    assert_eq!(reloads(&server.metrics_text().await, "failure"), 0.0);

    // A syntax error on line 2 of a new file.
    fs::write(
        dir.path().join("team.cedar"),
        "// team rules\nforbid(principal, action resource);\n",
    )
    .unwrap();
    let failed = until_info(&client, "the failed reload to be reported", |i| {
        !i.last_reload_error.is_empty()
    })
    .await;
    assert!(
        failed.last_reload_error.contains("team.cedar:2"),
        "the error names file and line: {}",
        failed.last_reload_error
    );
    assert!(failed.last_reload_error_at.is_some());
    assert_eq!(failed.policy_version, good.policy_version);
    assert_eq!(failed.loaded_at, good.loaded_at);
    let (allow, version) = allowed(&mut client, "alice").await;
    assert!(allow, "the last good set still decides");
    assert_eq!(version, good.policy_version);
    let text = server.metrics_text().await;
    assert!(reloads(&text, "failure") >= 1.0, "{text}");
    assert_eq!(
        metric(&text, "cedar_pdp_policy_last_reload_successful"),
        Some(0.0)
    );
    let unserved_since = "cedar_pdp_policy_files_unserved_since_timestamp_seconds";
    let failed_at = metric(&text, unserved_since).expect("exported");
    assert!(failed_at > 1.0e9, "the first failure's time: {text}");
    // Counted by reason: a syntax error is `parse`, and nothing else.
    let failures = |reason: &str| {
        metric(
            &text,
            &format!("cedar_pdp_policy_reload_failures_total{{reason=\"{reason}\"}}"),
        )
        .expect("every reason is exported")
    };
    assert!(failures("parse") >= 1.0, "{text}");
    for other in [
        "io",
        "too_large",
        "schema",
        "validate",
        "entities",
        "unsettled",
        "other",
    ] {
        assert_eq!(failures(other), 0.0, "{other}");
    }
    assert!(
        metric(&text, "cedar_pdp_policy_reload_duration_seconds_count").unwrap_or(0.0) >= 1.0,
        "each rebuild is timed: {text}"
    );

    // Fixing the file recovers without a restart.
    fs::write(
        dir.path().join("team.cedar"),
        "// team rules\nforbid(principal, action, resource);\n",
    )
    .unwrap();
    let fixed = until_info(&client, "the fixed set to be served", |i| {
        i.policy_version != good.policy_version
    })
    .await;
    assert!(fixed.last_reload_error.is_empty());
    assert!(fixed.last_reload_error_at.is_none());
    assert!(!allowed(&mut client, "alice").await.0);
    let text = server.metrics_text().await;
    assert!(reloads(&text, "success") >= 1.0, "{text}");
    assert_eq!(
        metric(&text, "cedar_pdp_policy_last_reload_successful"),
        Some(1.0)
    );
    assert_eq!(metric(&text, unserved_since), Some(0.0), "served again");
    for file in ["a.cedar", "team.cedar"] {
        let series = format!("cedar_pdp_policies_by_file{{file=\"{file}\"}}");
        assert_eq!(metric(&text, &series), Some(1.0), "{series}: {text}");
    }
    let info_series = format!(
        "cedar_pdp_policy_info{{version=\"{}\"}}",
        fixed.policy_version
    );
    assert_eq!(metric(&text, &info_series), Some(1.0));
    let old_series = format!(
        "cedar_pdp_policy_info{{version=\"{}\"}}",
        good.policy_version
    );
    assert_eq!(
        metric(&text, &old_series),
        None,
        "only the serving version is exported"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_touch_that_changes_no_content_keeps_the_version() {
    let dir = policy_dir(&[("a.cedar", ALICE_READS)]);
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;
    let before = info(&mut client).await;
    let successes = reloads(&server.metrics_text().await, "success");

    let file = fs::File::options()
        .append(true)
        .open(dir.path().join("a.cedar"))
        .unwrap();
    file.set_modified(std::time::SystemTime::now() + Duration::from_secs(60))
        .unwrap();
    drop(file);
    eventually(LONG, "the touch to cause a rebuild", || async {
        (reloads(&server.metrics_text().await, "success") > successes).then_some(())
    })
    .await;
    let after = info(&mut client).await;
    assert_eq!(after.policy_version, before.policy_version);
    assert_eq!(after.loaded_at, before.loaded_at, "the snapshot was kept");
    server.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn a_configmap_data_swap_flips_a_decision() {
    let dir = tempfile::tempdir().unwrap();
    configmap(dir.path(), "2026_11_23_1", &[("a.cedar", ALICE_READS)]);
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;
    assert!(allowed(&mut client, "alice").await.0);

    configmap(dir.path(), "2026_11_23_2", &[("a.cedar", ALICE_FORBIDDEN)]);
    let expected = version_of(&[("a.cedar", ALICE_FORBIDDEN)]);
    let version = until_alice(&client, false, FOLLOW, "the swapped ConfigMap to be served").await;
    assert_eq!(version, expected);
    assert!(info(&mut client).await.last_reload_error.is_empty());
    server.stop().await;
}

/// git-sync publishes each revision as a new folder and swaps one symlink to it; the
/// server is pointed at the symlink, so the swap happens in the folder above.
#[cfg(unix)]
#[tokio::test]
async fn a_policy_path_that_is_a_swapped_symlink_is_followed_and_watched_anew() {
    use std::os::unix::fs::symlink;
    let root = tempfile::tempdir().unwrap();
    let publish = |rev: &str, text: &str| {
        let folder = root.path().join(rev);
        fs::create_dir(&folder).unwrap();
        fs::write(folder.join("a.cedar"), text).unwrap();
        let tmp = root.path().join("current.tmp");
        symlink(rev, &tmp).unwrap();
        fs::rename(&tmp, root.path().join("current")).unwrap();
    };
    publish("rev1", ALICE_READS);
    let current = root.path().join("current");
    let server = TestServer::start(&current).await;
    let mut client = server.client().await;
    assert!(allowed(&mut client, "alice").await.0);

    publish("rev2", ALICE_FORBIDDEN);
    until_alice(&client, false, LONG, "the new revision to be served").await;

    // The watch moved to the new revision: an edit inside it is followed too.
    fs::write(root.path().join("rev2/a.cedar"), ALICE_READS).unwrap();
    until_alice(
        &client,
        true,
        LONG,
        "an edit inside the new revision to be served",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn a_directory_that_disappears_keeps_serving_and_recovers_when_it_returns() {
    let (root, dir) = policies_in_a_folder();
    let server = TestServer::start(&dir).await;
    let mut client = server.client().await;
    let good = info(&mut client).await;

    fs::rename(&dir, root.path().join("elsewhere")).unwrap();
    let failed = until_info(&client, "the missing directory to be reported", |i| {
        !i.last_reload_error.is_empty()
    })
    .await;
    assert!(
        failed.last_reload_error.contains("policies"),
        "{}",
        failed.last_reload_error
    );
    assert_eq!(failed.policy_version, good.policy_version);
    assert!(allowed(&mut client, "alice").await.0, "still serving");

    fs::rename(root.path().join("elsewhere"), &dir).unwrap();
    until_info(&client, "the returned directory to clear the error", |i| {
        i.last_reload_error.is_empty()
    })
    .await;
    // And it is watched again.
    fs::write(dir.join("a.cedar"), ALICE_FORBIDDEN).unwrap();
    until_alice(
        &client,
        false,
        LONG,
        "an edit after the return to be served",
    )
    .await;
    server.stop().await;
}

/// A file written in two chunks with a pause longer than the debounce: the first chunk is
/// valid Cedar on its own and would allow bob, so serving it would show.
#[tokio::test]
async fn a_half_written_file_is_never_served() {
    const FIRST: &str = "permit(principal, action, resource);\n";
    const SECOND: &str = "forbid(principal == User::\"bob\", action, resource);\n";
    let dir = policy_dir(&[("a.cedar", ALICE_READS)]);
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;
    let initial = info(&mut client).await.policy_version;
    let whole = format!("{FIRST}{SECOND}");
    let complete = version_of(&[("a.cedar", &whole)]);

    // Watch bob's decision the whole time, from another task.
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let mut watcher_client = client.clone();
    let observer = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let (allow, version) = allowed(&mut watcher_client, "bob").await;
            seen.push((allow, version));
            if stopped.try_recv().is_ok() {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });

    let path = dir.path().join("a.cedar");
    let writer = tokio::task::spawn_blocking(move || {
        let mut file = fs::File::create(&path).unwrap();
        file.write_all(FIRST.as_bytes()).unwrap();
        file.flush().unwrap();
        std::thread::sleep(Duration::from_millis(600));
        file.write_all(SECOND.as_bytes()).unwrap();
    });
    writer.await.unwrap();
    eventually(LONG, "the complete file to be served", || {
        let mut client = client.clone();
        let complete = complete.clone();
        async move { (info(&mut client).await.policy_version == complete).then_some(()) }
    })
    .await;
    stop.send(()).unwrap();
    let seen = observer.await.unwrap();
    assert!(
        seen.len() > 20,
        "the observer kept asking ({} answers)",
        seen.len()
    );
    for (allow, version) in &seen {
        assert!(
            !allow,
            "bob was allowed by version {version}: the half file was served"
        );
        assert!(
            *version == initial || *version == complete,
            "served version {version} is neither the old nor the complete file"
        );
    }
    assert!(info(&mut client).await.last_reload_error.is_empty());
    server.stop().await;
}

/// With watching off, a change is not served until a reload is asked for. What shows the
/// change went unseen (rather than not seen yet) is a second server, watching the same
/// directory: once it has served that change, and a later one too (two rebuilds, each
/// after the events it saw), the server not watching still answers from the first
/// version, and has counted no rebuild.
#[tokio::test]
async fn with_watching_off_the_files_are_read_only_on_request() {
    let dir = policy_dir(&[("a.cedar", ALICE_READS)]);
    let config = cedar_pdp::Config {
        policies: dir.path().to_owned(),
        ..cedar_pdp::Config::default()
    };
    let server = TestServer::start_with(cedar_pdp::Config {
        watch: false,
        rescan_interval: None,
        ..config.clone()
    })
    .await;
    let watching = TestServer::start_with(config).await;
    let (client, witness) = (server.client().await, watching.client().await);
    let first = until_alice(&client, true, LONG, "the first version").await;

    fs::write(dir.path().join("a.cedar"), ALICE_FORBIDDEN).unwrap();
    until_alice(&witness, false, LONG, "the watching server to follow").await;
    fs::write(dir.path().join("b.cedar"), "// a later change\n").unwrap();
    let later = version_of(&[
        ("a.cedar", ALICE_FORBIDDEN),
        ("b.cedar", "// a later change\n"),
    ]);
    eventually(
        LONG,
        "the watching server to follow the later change",
        || {
            let mut witness = witness.clone();
            let later = later.clone();
            async move { (info(&mut witness).await.policy_version == later).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        allowed(&mut client.clone(), "alice").await,
        (true, first),
        "the server not watching followed a change"
    );
    let text = server.metrics_text().await;
    assert_eq!(reloads(&text, "success") + reloads(&text, "failure"), 0.0);

    server.watcher.reload_now();
    until_alice(&client, false, LONG, "the requested reload to be served").await;
    watching.stop().await;
    server.stop().await;
}

/// Events lost (here: no watching at all) are backed up by the periodic re-scan: the
/// change is served within about one interval, and re-scans that find nothing rebuild
/// nothing and count nothing.
#[tokio::test]
async fn with_events_lost_the_periodic_rescan_serves_a_change_within_an_interval() {
    let dir = policy_dir(&[("a.cedar", ALICE_READS)]);
    let server = TestServer::start_with(cedar_pdp::Config {
        policies: dir.path().to_owned(),
        watch: false,
        rescan_interval: Some(Duration::from_secs(1)),
        ..cedar_pdp::Config::default()
    })
    .await;
    let client = server.client().await;
    until_alice(&client, true, LONG, "the first version").await;
    // Three intervals with nothing changed: nothing rebuilt, nothing counted.
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    let text = server.metrics_text().await;
    assert_eq!(reloads(&text, "success") + reloads(&text, "failure"), 0.0);

    // With watching off, only the re-scan can find this change.
    fs::write(dir.path().join("a.cedar"), ALICE_FORBIDDEN).unwrap();
    until_alice(&client, false, LONG, "the re-scan to serve the change").await;
    let text = server.metrics_text().await;
    assert_eq!(reloads(&text, "success"), 1.0);
    server.stop().await;
}

#[tokio::test]
async fn the_metrics_endpoint_serves_only_metrics() {
    let dir = policy_dir(&[("a.cedar", ALICE_READS)]);
    let server = TestServer::start(dir.path()).await;
    let (status, body) = http_get(server.metrics_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("# HELP cedar_pdp_policy_reloads_total"),
        "{body}"
    );
    assert_eq!(metric(&body, "cedar_pdp_policies_loaded"), Some(1.0));
    let (status, _) = http_get(server.metrics_addr, "/").await;
    assert_eq!(status, 404);
    server.stop().await;
}

#[tokio::test]
async fn a_policy_file_that_cannot_be_read_is_a_reported_failure() {
    let dir = policy_dir(&[("a.cedar", ALICE_READS)]);
    let server = TestServer::start(dir.path()).await;
    let client = server.client().await;
    fs::write(dir.path().join("bad.cedar"), [0xff, 0xfe, b'\n']).unwrap();
    let failed = until_info(&client, "the unreadable file to be reported", |i| {
        !i.last_reload_error.is_empty()
    })
    .await;
    assert!(
        failed.last_reload_error.contains("bad.cedar")
            && failed.last_reload_error.contains("cannot read"),
        "{}",
        failed.last_reload_error
    );
    let text = server.metrics_text().await;
    assert!(
        metric(
            &text,
            "cedar_pdp_policy_reload_failures_total{reason=\"io\"}"
        )
        .unwrap()
            >= 1.0,
        "{text}"
    );
    fs::remove_file(dir.path().join("bad.cedar")).unwrap();
    until_info(&client, "the error to clear", |i| {
        i.last_reload_error.is_empty()
    })
    .await;
    server.stop().await;
}

/// A nesting deep enough to exhaust a thread's stack in Cedar's parser is refused before
/// Cedar sees it, so a reload cannot take the process down.
#[tokio::test]
async fn a_deeply_nested_policy_is_refused_without_harm() {
    let dir = policy_dir(&[("a.cedar", ALICE_READS)]);
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;
    let before = info(&mut client).await.policy_version;
    let deep = format!(
        "permit(principal, action, resource) when {{ {}true{} }};\n",
        "(".repeat(5000),
        ")".repeat(5000)
    );
    fs::write(dir.path().join("deep.cedar"), deep).unwrap();
    let failed = until_info(&client, "the deep policy to be refused", |i| {
        !i.last_reload_error.is_empty()
    })
    .await;
    assert!(
        failed.last_reload_error.contains("deep.cedar:1")
            && failed.last_reload_error.contains("nest"),
        "{}",
        failed.last_reload_error
    );
    // The deep policy permits everyone: bob denied on the old version shows it is not served.
    let (bob, version) = allowed(&mut client, "bob").await;
    assert!(!bob, "the refused policy must not be served");
    assert_eq!(version, before);
    server.stop().await;
}

#[tokio::test]
async fn a_directory_moved_away_and_straight_back_is_still_followed() {
    let (root, dir) = policies_in_a_folder();
    let server = TestServer::start(&dir).await;
    let client = server.client().await;

    fs::rename(&dir, root.path().join("x")).unwrap();
    fs::rename(root.path().join("x"), &dir).unwrap();
    // Let the watcher take in the moves (a rebuild confirms the content) before editing.
    let text = server.metrics_text().await;
    let successes = reloads(&text, "success");
    fs::write(dir.join("other.cedar"), "// nothing yet\n").unwrap();
    eventually(LONG, "a rebuild after the moves", || async {
        (reloads(&server.metrics_text().await, "success") > successes).then_some(())
    })
    .await;
    fs::write(dir.join("a.cedar"), ALICE_FORBIDDEN).unwrap();
    until_alice(&client, false, LONG, "an edit after the moves to be served").await;
    server.stop().await;
}

#[tokio::test]
async fn a_directory_deleted_and_recreated_is_still_followed() {
    let (_root, dir) = policies_in_a_folder();
    let server = TestServer::start(&dir).await;
    let client = server.client().await;

    fs::remove_dir_all(&dir).unwrap();
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("a.cedar"), ALICE_FORBIDDEN).unwrap();
    until_alice(&client, false, LONG, "the recreated directory to be served").await;
    fs::write(dir.join("a.cedar"), ALICE_READS).unwrap();
    until_alice(
        &client,
        true,
        LONG,
        "an edit in the recreated directory to be served",
    )
    .await;
    server.stop().await;
}

/// The first load and the start of the watch are two steps; a change between them counts.
#[tokio::test]
async fn a_change_made_before_the_watch_started_is_picked_up() {
    use cedar_pdp::policy::{LoadOptions, PolicyStore, WatchOptions, Watcher};
    let dir = policy_dir(&[("a.cedar", ALICE_READS)]);
    let (store, _) = PolicyStore::open(dir.path(), LoadOptions::default()).unwrap();
    let store = std::sync::Arc::new(store);
    fs::write(dir.path().join("a.cedar"), ALICE_FORBIDDEN).unwrap();
    let expected = version_of(&[("a.cedar", ALICE_FORBIDDEN)]);
    let watcher =
        Watcher::start(store.clone(), WatchOptions::default(), Box::new(|_, _| {})).unwrap();
    eventually(LONG, "the earlier change to be served", || {
        let version = store.current().version().to_owned();
        let expected = expected.clone();
        async move { (version == expected).then_some(()) }
    })
    .await;
    drop(watcher);
}

/// A thread doing `act` every `every` until the returned flag is set.
fn keep_doing(
    every: Duration,
    act: impl Fn() + Send + 'static,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<()>,
) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            act();
            std::thread::sleep(every);
        }
    });
    (stop, thread)
}

/// A store of `dir` watched with a `max_hold` of one second, and the failures it told.
fn watched_with_a_short_max_hold(
    dir: &std::path::Path,
) -> (
    std::sync::Arc<cedar_pdp::policy::PolicyStore>,
    cedar_pdp::policy::Watcher,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use cedar_pdp::policy::{LoadOptions, PolicyStore, Rebuilt, WatchOptions, Watcher};
    let (store, _) = PolicyStore::open(dir, LoadOptions::default()).unwrap();
    let store = std::sync::Arc::new(store);
    let failures = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = failures.clone();
    let options = WatchOptions {
        max_hold: Duration::from_secs(1),
        ..WatchOptions::default()
    };
    let watcher = Watcher::start(
        store.clone(),
        options,
        Box::new(move |rebuilt, _took| {
            if matches!(rebuilt, Rebuilt::Failed(_)) {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }),
    )
    .unwrap();
    (store, watcher, failures)
}

/// A reader opening the files over and over once held every change back for good (each
/// open counted as a possible truncating writer for 100 ms, and any open during a read
/// made the read count as changed); after `max_hold` mere opens no longer hold.
#[tokio::test]
async fn a_reader_opening_the_files_over_and_over_holds_a_change_back_at_most_max_hold() {
    for every in [Duration::from_millis(20), Duration::from_millis(1)] {
        reader_holds_a_change_back_at_most_max_hold(every).await;
    }
}

async fn reader_holds_a_change_back_at_most_max_hold(every: Duration) {
    let dir = policy_dir(&[("a.cedar", ALICE_READS)]);
    let (store, watcher, _) = watched_with_a_short_max_hold(dir.path());
    let file = dir.path().join("a.cedar");
    let (stop, reader) = keep_doing(every, move || {
        let _ = fs::read_to_string(&file);
    });
    std::thread::sleep(Duration::from_millis(100));
    fs::write(dir.path().join("a.cedar"), ALICE_FORBIDDEN).unwrap();
    let expected = version_of(&[("a.cedar", ALICE_FORBIDDEN)]);
    eventually(
        LONG,
        "the change to be served while the reader reads on",
        || {
            let served = store.current().version() == expected;
            async move { served.then_some(()) }
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().unwrap();
    drop(watcher);
}

/// A file someone keeps writing to is never served half-written, and the wait is not
/// silent: past `max_hold` the rebuild is recorded as failed, naming the file (counted,
/// and shown by `GetPolicySetInfo`), and the last good set serves until it is closed.
#[tokio::test]
async fn a_file_kept_open_and_written_fails_the_reload_naming_it_until_closed() {
    let dir = policy_dir(&[("a.cedar", ALICE_READS)]);
    let (store, watcher, failures) = watched_with_a_short_max_hold(dir.path());
    let serving = store.current().version().to_owned();
    let file = std::sync::Arc::new(std::sync::Mutex::new(
        fs::File::create(dir.path().join("a.cedar")).unwrap(),
    ));
    file.lock()
        .unwrap()
        .write_all(ALICE_FORBIDDEN.as_bytes())
        .unwrap();
    let writing = file.clone();
    let (stop, writer) = keep_doing(Duration::from_millis(50), move || {
        writing
            .lock()
            .unwrap()
            .write_all(b"// still writing\n")
            .unwrap();
    });
    let error = eventually(LONG, "the held reload to be recorded as failed", || {
        let error = store.last_error();
        async move { error }
    })
    .await;
    assert!(
        error
            .message
            .starts_with("a.cedar: did not hold still for "),
        "{}",
        error.message
    );
    assert!(failures.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    assert_eq!(
        store.current().version(),
        serving,
        "nothing half-written served"
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    drop(file);
    let written = fs::read_to_string(dir.path().join("a.cedar")).unwrap();
    let expected = version_of(&[("a.cedar", &written)]);
    eventually(LONG, "the closed file to be served", || {
        let done = store.current().version() == expected && store.last_error().is_none();
        async move { done.then_some(()) }
    })
    .await;
    drop(watcher);
}

/// SIGHUP means "reload now": not after whoever holds a file open for writing closes it.
#[tokio::test]
async fn a_requested_reload_does_not_wait_for_a_file_held_open() {
    let dir = policy_dir(&[("a.cedar", ALICE_READS)]);
    let server = TestServer::start(dir.path()).await;
    let client = server.client().await;
    let mut held = fs::File::create(dir.path().join("a.cedar")).unwrap();
    held.write_all(ALICE_FORBIDDEN.as_bytes()).unwrap();
    held.flush().unwrap();
    server.watcher.reload_now();
    // Well inside the 10 s after which an idle open file stops holding reloads back.
    until_alice(
        &client,
        false,
        Duration::from_secs(5),
        "the requested reload",
    )
    .await;
    drop(held);
    server.stop().await;
}
