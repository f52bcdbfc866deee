//! The managed-identity credential against the emulator's App Service style
//! identity endpoint. azure_identity finds that endpoint through the process
//! environment, so this test lives alone in its own test binary.

mod support;

use azure_emulator::IDENTITY_HEADER;
use support::graph::*;
use teamaccess_operator::{
    api::GroupSelector,
    {azure::credential::CredentialKind, directory::Directory},
};

#[tokio::test]
async fn a_managed_identity_credential_gets_a_token_and_resolves_groups() {
    let emulator = emulator(include_str!("../deploy/examples/seed/directory.yaml")).await;
    // SAFETY: this binary holds this one test, and the variables are set before
    // anything reads the environment from another thread.
    unsafe {
        std::env::set_var("IDENTITY_ENDPOINT", format!("{}/msi/token", emulator.url()));
        std::env::set_var("IDENTITY_HEADER", IDENTITY_HEADER);
    }
    let mut settings = secret_settings(&emulator);
    settings.kind = Some(CredentialKind::Managed);
    settings.client_secret = None;
    settings.client_id = None; // system-assigned
    let graph = directory_with(&emulator, &settings, fast_settings(&emulator));
    let group = graph
        .resolve_group(&GroupSelector { display_name: Some("opssre".into()), ..Default::default() })
        .await
        .expect("resolve with a managed identity token");
    assert_eq!(group.object_id, "7c2e4b91-3d5a-4f60-8b1c-2e9d0a4f6b02");
    assert_eq!(emulator.stats().token_requests, 1);

    // A wrong identity header is refused by the endpoint, and reported as such.
    unsafe { std::env::set_var("IDENTITY_HEADER", "wrong") };
    let graph = directory_with(&emulator, &settings, fast_settings(&emulator));
    let err = graph
        .resolve_group(&GroupSelector { display_name: Some("appdev".into()), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "GraphAuthenticationFailed", "{err}");
}
