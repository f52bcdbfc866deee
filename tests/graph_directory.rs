//! The Graph directory against the Graph emulator, over real HTTPS, through the
//! real azure_identity credentials: every lookup path and every error path.

mod support;

use std::{sync::Arc, time::Duration};

use azure_emulator::{FEDERATED_TOKEN, Faults};
use support::graph::*;
use teamaccess_operator::{
    api::{GroupSelector, UserRef},
    {
        azure::credential::CredentialKind,
        directory::{Directory, DirectoryError, DirectoryGroup, graph::GraphDirectory},
    },
};

const SEED: &str = include_str!("../deploy/examples/seed/directory.yaml");
const APPDEV: &str = "5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01";

fn by_name(name: &str) -> GroupSelector {
    GroupSelector { display_name: Some(name.into()), ..Default::default() }
}

#[tokio::test]
async fn a_client_secret_credential_resolves_groups_by_every_selector() {
    let emulator = emulator(SEED).await;
    let graph = directory(&emulator);
    let by_display = graph.resolve_group(&by_name("appdev")).await.unwrap();
    assert_eq!(by_display.object_id, APPDEV);
    assert!(by_display.security_enabled);
    let by_nick = GroupSelector { mail_nickname: Some("opssre".into()), ..Default::default() };
    assert_eq!(graph.resolve_group(&by_nick).await.unwrap().display_name, "opssre");
    let by_id = GroupSelector { object_id: Some(APPDEV.to_uppercase()), ..Default::default() };
    assert_eq!(graph.resolve_group(&by_id).await.unwrap().display_name, "appdev");
    assert!(emulator.stats().token_requests >= 1);
}

#[tokio::test]
async fn a_workload_identity_credential_presents_the_federated_token() {
    let emulator = emulator(SEED).await;
    let token_file = emulator.ca_path().with_file_name("azure-identity-token");
    std::fs::write(&token_file, FEDERATED_TOKEN).unwrap();
    let mut settings = secret_settings(&emulator);
    settings.kind = Some(CredentialKind::Workload);
    settings.client_secret = None;
    settings.federated_token_file = Some(token_file.clone());
    let graph = directory_with(&emulator, &settings, fast_settings(&emulator));
    assert_eq!(graph.resolve_group(&by_name("appdev")).await.unwrap().object_id, APPDEV);

    // A token the tenant does not trust is an authentication failure, not "not found".
    std::fs::write(&token_file, "eyJ.not-federated.x").unwrap();
    let graph = directory_with(&emulator, &settings, fast_settings(&emulator));
    let err = graph.resolve_group(&by_name("appdev")).await.unwrap_err();
    assert_eq!(err.reason(), "GraphAuthenticationFailed", "{err}");
}

#[tokio::test]
async fn a_wrong_client_secret_is_an_authentication_failure() {
    let emulator = emulator(SEED).await;
    let mut settings = secret_settings(&emulator);
    settings.client_secret = Some("wrong".into());
    let graph = directory_with(&emulator, &settings, fast_settings(&emulator));
    let err = graph.resolve_group(&by_name("appdev")).await.unwrap_err();
    assert_eq!(err.reason(), "GraphAuthenticationFailed");
    assert!(err.to_string().contains("7000215"), "Entra ID's error code is passed on: {err}");
}

#[tokio::test]
async fn missing_ambiguous_and_injected_names_bind_nothing() {
    let mut yaml = SEED.replace("groups:\n", "groups:\n- objectId: 11111111-1111-4111-8111-111111111111\n  displayName: twin\n- objectId: 22222222-2222-4222-8222-222222222222\n  displayName: TWIN\n");
    yaml.push('\n');
    let emulator = emulator(&yaml).await;
    let graph = directory(&emulator);

    let err = graph.resolve_group(&by_name("nobody")).await.unwrap_err();
    assert_eq!(err, DirectoryError::GroupNotFound { selector: "displayName=nobody".into() });

    let err = graph.resolve_group(&by_name("twin")).await.unwrap_err();
    assert_eq!(err.reason(), "AmbiguousGroup");
    let message = err.to_string();
    assert!(
        message.contains("11111111-1111-4111-8111-111111111111")
            && message.contains("22222222-2222-4222-8222-222222222222"),
        "{message}"
    );

    // Unescaped, this filter would match appdev in the real service (and in the emulator).
    let err = graph.resolve_group(&by_name("x' or displayName eq 'appdev")).await.unwrap_err();
    assert_eq!(err.reason(), "GroupNotFound", "an injection attempt resolves to nothing");

    let missing_id =
        GroupSelector { object_id: Some("99999999-9999-4999-8999-999999999999".into()), ..Default::default() };
    assert_eq!(graph.resolve_group(&missing_id).await.unwrap_err().reason(), "GroupNotFound");
}

/// 130 groups that share one display name: more than one page of 100.
fn crowded_tenant() -> String {
    let mut yaml = String::from("groups:\n");
    for i in 0..130 {
        yaml.push_str(&format!("- objectId: {i:08x}-0000-4000-8000-000000000000\n  displayName: crowded\n"));
    }
    yaml
}

#[tokio::test]
async fn every_page_is_followed_to_name_all_candidates() {
    let emulator = emulator(&crowded_tenant()).await;
    let err = directory(&emulator).resolve_group(&by_name("crowded")).await.unwrap_err();
    let DirectoryError::AmbiguousGroup { candidates, .. } = err else { panic!("expected AmbiguousGroup, got {err:?}") };
    assert_eq!(candidates.len(), 130, "the second page (after 100) was followed");
}

#[tokio::test]
async fn a_group_that_is_not_security_enabled_is_flagged() {
    let yaml = SEED.replace(
        "displayName: opssre\n  mailNickname: opssre\n  securityEnabled: true",
        "displayName: opssre\n  mailNickname: opssre\n  securityEnabled: false",
    );
    let emulator = emulator(&yaml).await;
    assert!(!directory(&emulator).resolve_group(&by_name("opssre")).await.unwrap().security_enabled);
}

#[tokio::test]
async fn users_are_found_by_upn_and_guests_by_object_id() {
    let yaml = format!(
        "{SEED}- objectId: 3c3c3c3c-3c3c-4c3c-8c3c-3c3c3c3c3c3c\n  userPrincipalName: partner_fabrikam.com#EXT#@contoso.onmicrosoft.com\n  userType: Guest\n"
    );
    let emulator = emulator(&yaml).await;
    let graph = directory(&emulator);
    let dev = graph
        .resolve_user(&UserRef { user_principal_name: Some("aksdev@contoso.com".into()), object_id: None })
        .await
        .unwrap();
    assert_eq!(dev.object_id, "0b9c7c52-1e6d-4a8a-9b4c-6a6f7b1f2e11");
    assert!(!dev.is_guest());
    let guest = graph
        .resolve_user(&UserRef {
            user_principal_name: Some("partner_fabrikam.com#EXT#@contoso.onmicrosoft.com".into()),
            object_id: None,
        })
        .await
        .unwrap();
    assert!(guest.is_guest());
    let err = graph
        .resolve_user(&UserRef { user_principal_name: Some("ghost@contoso.com".into()), object_id: None })
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "UserNotFound");
}

#[tokio::test]
async fn permission_outage_and_throttling_map_to_their_reasons() {
    let emulator = emulator(SEED).await;
    let graph = directory(&emulator);

    emulator.set_faults(&Faults { forbidden: true, ..Default::default() });
    let err = graph.resolve_group(&by_name("appdev")).await.unwrap_err();
    assert_eq!(err.reason(), "GraphPermissionDenied");
    assert!(err.to_string().contains("GroupMember.Read.All"), "{err}");
    assert!(err.to_string().contains("Authorization_RequestDenied"), "{err}");

    emulator.set_faults(&Faults { outage_for_secs: 60, retry_after_secs: 1, ..Default::default() });
    let err = graph.resolve_group(&by_name("opssre")).await.unwrap_err();
    assert_eq!(err.reason(), "GraphUnavailable");

    // The outage's Retry-After holds further lookups briefly (they fail fast meanwhile).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    emulator.set_faults(&Faults { throttle_for_secs: 60, retry_after_secs: 1, ..Default::default() });
    let started = tokio::time::Instant::now();
    let err = graph.resolve_group(&by_name("appdev")).await.unwrap_err();
    assert_eq!(err.reason(), "GraphThrottled");
    assert!(started.elapsed() < Duration::from_secs(5), "retries are bounded");
}

#[tokio::test]
async fn a_throttled_lookup_honours_retry_after_and_then_succeeds() {
    let emulator = emulator(SEED).await;
    let graph = directory(&emulator);
    emulator.set_faults(&Faults { throttle_next: 1, retry_after_secs: 1, ..Default::default() });
    let started = tokio::time::Instant::now();
    assert_eq!(graph.resolve_group(&by_name("appdev")).await.unwrap().object_id, APPDEV);
    assert!(started.elapsed() >= Duration::from_secs(1), "waited for Retry-After");
    assert_eq!(emulator.stats().throttled, 1);
}

#[tokio::test]
async fn concurrent_lookups_are_batched_and_then_served_from_the_cache() {
    let emulator = emulator(&support::tenant::groups_yaml("team", 100)).await;
    let graph = directory(&emulator);
    let resolve_all = || {
        let graph = graph.clone();
        async move {
            let lookups = (0..100).map(|i| {
                let graph = graph.clone();
                async move { graph.resolve_group(&by_name(&format!("team-{i}"))).await }
            });
            futures::future::join_all(lookups).await
        }
    };
    let results = resolve_all().await;
    assert!(results.iter().all(Result::is_ok), "{:?}", results.iter().find(|r| r.is_err()));
    let cold = emulator.stats();
    println!(
        "100 groups resolved cold: {} Graph HTTP requests ({} $batch), {} token requests",
        cold.graph_requests, cold.batch_requests, cold.token_requests
    );
    assert!(cold.graph_requests <= 5 + 100_u64.div_ceil(20), "{cold:?}");
    assert_eq!(cold.lookups, 100);

    emulator.reset_stats();
    assert!(resolve_all().await.iter().all(Result::is_ok));
    assert_eq!(emulator.stats().graph_requests, 0, "within the TTL every lookup is a cache hit");
}

#[tokio::test]
async fn a_throttled_batch_item_is_retried_alone() {
    let emulator = emulator(&support::tenant::groups_yaml("team", 10)).await;
    let graph = directory(&emulator);
    emulator.set_faults(&Faults { throttle_next: 1, retry_after_secs: 1, ..Default::default() });
    let lookups = (0..10).map(|i| {
        let graph = graph.clone();
        async move { graph.resolve_group(&by_name(&format!("team-{i}"))).await }
    });
    let results = futures::future::join_all(lookups).await;
    assert!(results.iter().all(Result::is_ok));
    let stats = emulator.stats();
    assert_eq!(stats.throttled, 1);
    assert_eq!(stats.lookups, 11, "ten lookups, one of them twice");
    assert_eq!(stats.graph_requests, 2, "one $batch, then the throttled item alone: {stats:?}");
}

/// Ten lookups that travel in one `$batch`.
async fn resolve_ten(graph: &Arc<GraphDirectory>) -> Vec<Result<DirectoryGroup, DirectoryError>> {
    let lookups = (0..10).map(|i| {
        let graph = graph.clone();
        async move { graph.resolve_group(&by_name(&format!("team-{i}"))).await }
    });
    futures::future::join_all(lookups).await
}

#[tokio::test]
async fn a_storm_answered_item_by_item_holds_back_every_lookup() {
    let emulator = emulator(&support::tenant::groups_yaml("team", 10)).await;
    let graph = directory(&emulator);
    // Graph answers the batch 200 and throttles each item, with its own Retry-After.
    emulator.set_faults(&Faults { throttle_for_secs: 60, retry_after_secs: 2, per_item: true, ..Default::default() });
    let results = resolve_ten(&graph).await;
    assert!(results.iter().all(|r| r.as_ref().is_err_and(|e| e.reason() == "GraphThrottled")), "{results:?}");
    let after_first = emulator.stats();
    assert!(after_first.throttled >= 10, "the items were throttled one by one: {after_first:?}");
    // Told to wait, the client fails fast: another round costs Graph nothing.
    let results = resolve_ten(&graph).await;
    assert!(results.iter().all(Result::is_err));
    assert_eq!(emulator.stats().graph_requests, after_first.graph_requests, "held back while Graph asked to wait");
    println!("per-item storm: {after_first:?}");
    assert!(after_first.graph_requests <= 3, "one batch and its bounded retries: {after_first:?}");
}

#[tokio::test]
async fn throttling_and_outages_without_retry_after_back_off_and_are_bounded() {
    let emulator = emulator(&support::tenant::groups_yaml("team", 10)).await;
    let graph = directory(&emulator);
    emulator.set_faults(&Faults { throttle_next: 1, omit_retry_after: true, ..Default::default() });
    let started = tokio::time::Instant::now();
    assert!(resolve_ten(&graph).await.iter().all(Result::is_ok), "the throttled item is retried after a backoff");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(75), "backed off before the retry: {waited:?}");
    assert_eq!(emulator.stats().graph_requests, 2);

    emulator.reset_stats();
    emulator.set_faults(&Faults { outage_for_secs: 60, omit_retry_after: true, ..Default::default() });
    let graph = directory(&emulator); // a cold cache
    let started = tokio::time::Instant::now();
    let err = graph.resolve_group(&by_name("team-1")).await.unwrap_err();
    assert_eq!(err.reason(), "GraphUnavailable");
    assert!(err.retry_after().is_none());
    let stats = emulator.stats();
    println!("a lookup during an outage without Retry-After: {stats:?} in {:?}", started.elapsed());
    assert_eq!(stats.graph_requests, 3, "max_attempts tries, no more: {stats:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "bounded: {:?}", started.elapsed());
}

#[tokio::test]
async fn other_errors_of_batch_items_map_to_their_reasons_and_spare_the_rest() {
    let emulator = emulator(&support::tenant::groups_yaml("team", 10)).await;
    let graph = directory(&emulator);
    for (status, reason) in [(500, "GraphUnavailable"), (403, "GraphPermissionDenied"), (400, "GraphRequestRejected")] {
        let graph = directory(&emulator);
        emulator.set_faults(&Faults { fail_next: 1, fail_status: status, ..Default::default() });
        let results = resolve_ten(&graph).await;
        let failed: Vec<&DirectoryError> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        assert_eq!(failed.len(), 1, "HTTP {status}: only the failed item fails, {results:?}");
        assert_eq!(failed[0].reason(), reason, "HTTP {status}: {}", failed[0]);
    }
    // A 503 item is retried on its own like a throttled one, and succeeds.
    emulator.set_faults(&Faults { fail_next: 1, fail_status: 503, retry_after_secs: 1, ..Default::default() });
    assert!(resolve_ten(&graph).await.iter().all(Result::is_ok));
}

#[tokio::test]
async fn a_next_page_link_to_another_host_is_not_followed() {
    let emulator = emulator(&crowded_tenant()).await;
    emulator
        .set_faults(&Faults { next_link_origin: Some("https://attacker.invalid:8443".into()), ..Default::default() });
    let err = directory(&emulator).resolve_group(&by_name("crowded")).await.unwrap_err();
    assert_eq!(err.reason(), "GraphRequestRejected", "{err}");
    assert!(
        err.to_string().contains("https://attacker.invalid:8443") && err.to_string().contains("not followed"),
        "{err}"
    );
    assert_eq!(emulator.stats().graph_requests, 1, "only the first page was fetched");
}

#[tokio::test]
async fn an_endpoint_that_is_not_graph_is_a_configuration_error_not_a_missing_group() {
    let emulator = emulator(SEED).await;
    emulator.set_faults(&Faults { not_graph: true, ..Default::default() });
    let graph = directory(&emulator);
    // By objectId (a plain GET), by name (a plain GET), and several at once ($batch).
    let by_id = graph.resolve_group(&GroupSelector::by_object_id(APPDEV)).await.unwrap_err();
    let by_name_err = graph.resolve_group(&by_name("opssre")).await.unwrap_err();
    for err in [&by_id, &by_name_err] {
        assert_eq!(err.reason(), "GraphRequestRejected", "{err}");
        assert!(err.to_string().contains("--graph-endpoint"), "{err}");
    }
    let graph = directory(&emulator);
    let lookups = ["appdev", "opssre"].map(|n| {
        let graph = graph.clone();
        async move { graph.resolve_group(&by_name(n)).await }
    });
    for result in futures::future::join_all(lookups).await {
        assert_eq!(result.unwrap_err().reason(), "GraphRequestRejected");
    }
}
