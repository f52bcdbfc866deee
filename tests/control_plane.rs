//! Proves the local control plane is a real one: the namespace controller and the
//! garbage collector run, RBAC decides with impersonated identities as it would
//! for Entra ID users, and ServiceAccount tokens authenticate.

mod support;

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::{
    authentication::v1::{SelfSubjectReview, TokenRequest, TokenRequestSpec},
    core::v1::{ConfigMap, Pod, ServiceAccount},
    rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
};
use kube::{
    Api,
    api::{DeleteParams, ObjectMeta, PostParams},
};
use support::*;

const AKSDEV: &str = "aksdev@contoso.com";

fn pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "nginx", "image": "mcr.microsoft.com/oss/nginx/nginx:1.15.5-alpine"}]}
    }))
    .unwrap()
}

#[tokio::test]
async fn a_deleted_namespace_is_really_gone_within_60s() {
    let admin = admin_client().await;
    let ns = create_namespace(&admin, "cp-ns").await;
    // Content makes the namespace controller do real work before removing the namespace.
    let cm =
        ConfigMap { metadata: ObjectMeta { name: Some("content".into()), ..Default::default() }, ..Default::default() };
    Api::<ConfigMap>::namespaced(admin.clone(), &ns).create(&PostParams::default(), &cm).await.unwrap();
    delete_namespace(&admin, &ns).await;
    wait_namespace_gone(&admin, &ns, Duration::from_secs(60)).await;
}

#[tokio::test]
async fn deleting_an_owner_removes_its_dependents() {
    let admin = admin_client().await;
    let ns = create_namespace(&admin, "cp-gc").await;
    let configmaps = Api::<ConfigMap>::namespaced(admin.clone(), &ns);
    let owner = configmaps
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta { name: Some("owner".into()), ..Default::default() },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let owner_ref = k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "owner".into(),
        uid: owner.metadata.uid.clone().unwrap(),
        ..Default::default()
    };
    let dependent = ConfigMap {
        metadata: ObjectMeta {
            name: Some("dependent".into()),
            owner_references: Some(vec![owner_ref]),
            ..Default::default()
        },
        ..Default::default()
    };
    configmaps.create(&PostParams::default(), &dependent).await.unwrap();
    configmaps.delete("owner", &DeleteParams::background()).await.unwrap();
    wait_for(Duration::from_secs(60), "the garbage collector to delete the dependent", || async {
        match configmaps.get_opt("dependent").await {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err("dependent still present".into()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    delete_namespace(&admin, &ns).await;
}

#[tokio::test]
async fn rbac_forbids_an_entra_user_until_a_rolebinding_grants_its_group() {
    let admin = admin_client().await;
    let ns = create_namespace(&admin, "cp-rbac").await;
    wait_default_service_account(&admin, &ns).await;
    let group = "5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01";
    let aksdev = impersonating(AKSDEV, &[group]).await;
    let pods = Api::<Pod>::namespaced(aksdev.clone(), &ns);

    let denied = pods.create(&PostParams::default(), &pod("nginx-dev")).await;
    assert_eq!(api_status(&denied), 403, "expected Forbidden before any binding: {denied:?}");
    assert!(
        !allowed(&admin, AKSDEV, &[group], "create", "", "pods", &ns).await,
        "SubjectAccessReview must agree: denied"
    );

    let role = Role {
        metadata: ObjectMeta { name: Some("dev-user-full-access".into()), ..Default::default() },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["".into(), "extensions".into(), "apps".into()]),
            resources: Some(vec!["*".into()]),
            verbs: vec!["*".into()],
            ..Default::default()
        }]),
    };
    Api::<Role>::namespaced(admin.clone(), &ns).create(&PostParams::default(), &role).await.unwrap();
    let binding = RoleBinding {
        metadata: ObjectMeta { name: Some("dev-user-access".into()), ..Default::default() },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: "dev-user-full-access".into(),
        },
        subjects: Some(vec![Subject {
            kind: "Group".into(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            name: group.into(),
            namespace: None,
        }]),
    };
    Api::<RoleBinding>::namespaced(admin.clone(), &ns).create(&PostParams::default(), &binding).await.unwrap();

    // The RBAC authorizer reads bindings from an informer: allow a moment for it to see them.
    wait_for(Duration::from_secs(10), "the binding to take effect", || async {
        let created = pods.create(&PostParams::default(), &pod("nginx-dev")).await;
        match api_status(&created) {
            200 => Ok(()),
            code => Err(format!("HTTP {code}: {created:?}")),
        }
    })
    .await;
    assert!(
        allowed(&admin, AKSDEV, &[group], "create", "", "pods", &ns).await,
        "SubjectAccessReview must agree: allowed"
    );
    let other_user = impersonating("someone@contoso.com", &["00000000-0000-4000-8000-000000000000"]).await;
    let denied = Api::<Pod>::namespaced(other_user, &ns).create(&PostParams::default(), &pod("x")).await;
    assert_eq!(api_status(&denied), 403, "a user outside the group stays Forbidden");
    delete_namespace(&admin, &ns).await;
}

#[tokio::test]
async fn a_token_from_the_token_request_api_authenticates_as_its_service_account() {
    let admin = admin_client().await;
    let ns = create_namespace(&admin, "cp-token").await;
    let accounts = Api::<ServiceAccount>::namespaced(admin.clone(), &ns);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("robot".into()),
            labels: Some(BTreeMap::from([("test".into(), "token".into())])),
            ..Default::default()
        },
        ..Default::default()
    };
    accounts.create(&PostParams::default(), &sa).await.unwrap();
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { expiration_seconds: Some(600), ..Default::default() }),
        ..Default::default()
    };
    let issued = accounts.create_token_request("robot", &PostParams::default(), &request).await.unwrap();
    let token = issued.status.and_then(|s| s.token).expect("a token in the TokenRequest status");

    let robot = with_token(&token).await;
    let review = Api::<SelfSubjectReview>::all(robot)
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .expect("SelfSubjectReview with the token");
    let user = review.status.and_then(|s| s.user_info).expect("user info");
    assert_eq!(user.username.as_deref(), Some(format!("system:serviceaccount:{ns}:robot").as_str()));
    assert!(user.groups.unwrap_or_default().contains(&"system:serviceaccounts".to_string()));

    let anonymous = with_token("not-a-token").await;
    let rejected =
        Api::<SelfSubjectReview>::all(anonymous).create(&PostParams::default(), &SelfSubjectReview::default()).await;
    assert_eq!(api_status(&rejected), 401, "a made-up token must not authenticate");
    delete_namespace(&admin, &ns).await;
}
