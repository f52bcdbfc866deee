//! Builds the azure_identity credential the operator authenticates with, to
//! Graph and to Azure Resource Manager alike: Workload Identity (as the AKS
//! webhook injects it), a client secret, or a managed identity, for any national
//! cloud or a custom authority. Each client asks it for a token of its own
//! audience (`<endpoint>/.default`).

use std::{path::PathBuf, sync::Arc};

use azure_core::{
    cloud::{CloudConfiguration, CustomConfiguration},
    credentials::{Secret, TokenCredential},
    http::{ClientOptions, Transport},
};
use azure_identity::{
    ClientAssertionCredentialOptions, ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};

/// How the operator proves its identity to Entra ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CredentialKind {
    /// Workload Identity: a federated ServiceAccount token (AZURE_FEDERATED_TOKEN_FILE).
    Workload,
    /// An application's client secret (AZURE_CLIENT_SECRET or --client-secret-file).
    Secret,
    /// The managed identity of the node or pod.
    Managed,
}

/// The national clouds; each has its own Entra ID authority, Graph and ARM endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Cloud {
    Public,
    Usgov,
    China,
}

impl Cloud {
    pub fn graph_endpoint(self) -> &'static str {
        match self {
            Cloud::Public => "https://graph.microsoft.com",
            Cloud::Usgov => "https://graph.microsoft.us",
            Cloud::China => "https://microsoftgraph.chinacloudapi.cn",
        }
    }

    /// The Azure Resource Manager root; its token audience is this plus `/.default`.
    pub fn arm_endpoint(self) -> &'static str {
        match self {
            Cloud::Public => "https://management.azure.com",
            Cloud::Usgov => "https://management.usgovcloudapi.net",
            Cloud::China => "https://management.chinacloudapi.cn",
        }
    }

    fn configuration(self) -> CloudConfiguration {
        match self {
            Cloud::Public => CloudConfiguration::AzurePublic,
            Cloud::Usgov => CloudConfiguration::AzureGovernment,
            Cloud::China => CloudConfiguration::AzureChina,
        }
    }
}

/// Everything a credential can be built from; unset values fall back to the
/// AZURE_* environment variables the Workload Identity webhook injects.
#[derive(Clone, Debug, Default)]
pub struct CredentialSettings {
    pub kind: Option<CredentialKind>,
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub federated_token_file: Option<PathBuf>,
    /// Overrides the cloud's authority host (AZURE_AUTHORITY_HOST).
    pub authority_host: Option<String>,
}

impl CredentialSettings {
    /// The kind to use: the one asked for, else what the environment provides.
    pub fn detect_kind(&self) -> CredentialKind {
        match self.kind {
            Some(kind) => kind,
            None if self.federated_token_file.is_some() => CredentialKind::Workload,
            None if self.client_secret.is_some() => CredentialKind::Secret,
            None => CredentialKind::Managed,
        }
    }
}

/// Why no credential could be built from the settings.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("the {kind:?} credential needs {what}")]
    Missing { kind: CredentialKind, what: &'static str },
    #[error("the credential settings are invalid: {0}")]
    Invalid(#[source] azure_core::Error),
}

/// The authority (the cloud's, or --authority-host) and the HTTP client every
/// credential kind talks to Entra ID with.
fn client_options(settings: &CredentialSettings, cloud: Cloud, http: reqwest::Client) -> ClientOptions {
    let cloud_config = match &settings.authority_host {
        Some(host) => {
            let mut custom = CustomConfiguration::default();
            custom.authority_host = host.clone();
            CloudConfiguration::Custom(custom)
        }
        None => cloud.configuration(),
    };
    ClientOptions {
        cloud: Some(Arc::new(cloud_config)),
        transport: Some(Transport::new(Arc::new(http))),
        ..Default::default()
    }
}

/// Builds the credential; `http` is the client it talks to Entra ID with (the same
/// one Graph and ARM use, so an extra CA applies to all). Returns it with a description
/// for the startup log, which never includes a secret.
pub fn build(
    settings: &CredentialSettings,
    cloud: Cloud,
    http: reqwest::Client,
) -> Result<(Arc<dyn TokenCredential>, String), CredentialError> {
    let client_options = client_options(settings, cloud, http);
    let authority = settings.authority_host.clone().unwrap_or_else(|| format!("{cloud:?} cloud"));
    let kind = settings.detect_kind();
    let need =
        |value: &Option<String>, what: &'static str| value.clone().ok_or(CredentialError::Missing { kind, what });
    match kind {
        CredentialKind::Workload => {
            let options = WorkloadIdentityCredentialOptions {
                credential_options: ClientAssertionCredentialOptions { client_options },
                client_id: Some(need(&settings.client_id, "AZURE_CLIENT_ID")?),
                tenant_id: Some(need(&settings.tenant_id, "AZURE_TENANT_ID")?),
                token_file_path: Some(
                    settings
                        .federated_token_file
                        .clone()
                        .ok_or(CredentialError::Missing { kind, what: "AZURE_FEDERATED_TOKEN_FILE" })?,
                ),
            };
            let credential = WorkloadIdentityCredential::new(Some(options)).map_err(CredentialError::Invalid)?;
            let description = format!(
                "workload identity (client {}, tenant {}, token file {}, authority {authority})",
                settings.client_id.as_deref().unwrap_or_default(),
                settings.tenant_id.as_deref().unwrap_or_default(),
                settings.federated_token_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
            );
            Ok((credential, description))
        }
        CredentialKind::Secret => {
            let tenant = need(&settings.tenant_id, "AZURE_TENANT_ID")?;
            let client = need(&settings.client_id, "AZURE_CLIENT_ID")?;
            let secret = need(&settings.client_secret, "AZURE_CLIENT_SECRET or --client-secret-file")?;
            let options = ClientSecretCredentialOptions { client_options };
            let credential = ClientSecretCredential::new(&tenant, client.clone(), Secret::new(secret), Some(options))
                .map_err(CredentialError::Invalid)?;
            Ok((credential, format!("client secret (client {client}, tenant {tenant}, authority {authority})")))
        }
        CredentialKind::Managed => {
            let options = ManagedIdentityCredentialOptions {
                user_assigned_id: settings.client_id.clone().map(UserAssignedId::ClientId),
                client_options,
            };
            let credential = ManagedIdentityCredential::new(Some(options)).map_err(CredentialError::Invalid)?;
            let which = settings.client_id.as_deref().map_or("system-assigned".to_string(), |c| format!("client {c}"));
            Ok((credential, format!("managed identity ({which})")))
        }
    }
}
