//! spec.bind Members: access that follows the directory. The first tests
//! drive the Graph delta client against the emulator directly; the rest run
//! the operator on the real control plane, where the API server decides
//! (SubjectAccessReviews) who gets in.

mod support;

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use azure_emulator::{Emulator, Faults};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use support::{graph::*, operator::*, *};
use teamaccess_operator::{
    api::{BindMode, GroupSelector},
    directory::{
        Directory, DirectoryError,
        file_format::{DirectoryFile, GroupRecord, ServicePrincipalRecord, UserRecord},
        members::{self, Roster},
    },
};

const POLL: Duration = Duration::from_secs(5);
const LONG: Duration = Duration::from_secs(60);

fn group(id: &str, name: &str, member_of: &[&str]) -> GroupRecord {
    GroupRecord {
        member_of: member_of.iter().map(|s| s.to_string()).collect(),
        ..GroupRecord::security_group(id, name)
    }
}

fn user(id: &str, upn: &str, member_of: &[&str]) -> UserRecord {
    UserRecord {
        object_id: id.into(),
        user_principal_name: upn.into(),
        display_name: None,
        user_type: upn.contains("#EXT#").then(|| "Guest".into()),
        member_of: member_of.iter().map(|s| s.to_string()).collect(),
    }
}

/// A tenant of its own: team (with ann, a guest, a service principal and the
/// nested group inner), inner (with carol), and people outside both.
struct Tenant {
    team: String,
    inner: String,
    ann: String,
    bob: String,
    carol: String,
    guest: String,
    robot: String,
    directory: DirectoryFile,
}

fn tenant() -> Tenant {
    let id = fresh_object_id;
    let (team, inner, ann, bob, carol, guest, robot) = (id(), id(), id(), id(), id(), id(), id());
    let suffix = unique("t");
    let directory = DirectoryFile {
        groups: vec![group(&team, &format!("team-{suffix}"), &[]), group(&inner, &format!("inner-{suffix}"), &[&team])],
        users: vec![
            user(&ann, &format!("ann-{suffix}@contoso.com"), &[&team]),
            user(&bob, &format!("bob-{suffix}@contoso.com"), &[]),
            user(&carol, &format!("carol-{suffix}@contoso.com"), &[&inner]),
            user(&guest, &format!("gus_fabrikam.com#EXT#-{suffix}@contoso.onmicrosoft.com"), &[&team]),
        ],
        service_principals: vec![ServicePrincipalRecord {
            object_id: robot.clone(),
            display_name: "deployer".into(),
            member_of: vec![team.clone()],
        }],
    };
    Tenant { team, inner, ann, bob, carol, guest, robot, directory }
}

impl Tenant {
    fn upn(&self, id: &str) -> String {
        self.directory.users.iter().find(|u| u.object_id == id).unwrap().user_principal_name.clone()
    }
}

async fn sync(roster: &Roster, source: &mut dyn members::MemberSource, root: &str) -> members::Membership {
    let roots = BTreeSet::from([root.to_string()]);
    members::sync(roster, source, &roots, jiff::Timestamp::now()).await;
    roster.view(root).expect("the members are known")
}

#[tokio::test]
async fn the_delta_client_reads_in_full_then_follows_changes_across_pages() {
    let t = tenant();
    let emulator = emulator_of(t.directory.clone()).await;
    // Two member entries per page: every group's members span pages.
    emulator.set_faults(&Faults { delta_page_size: 2, ..Default::default() });
    let graph = directory(&emulator);
    let mut source = graph.member_source().expect("Graph lists members");
    let roster = Roster::default();

    let first = sync(&roster, source.as_mut(), &t.team).await;
    let ann = t.upn(&t.ann);
    let carol = t.upn(&t.carol);
    let mut expected = vec![ann.clone(), carol.clone(), t.guest.clone(), t.robot.clone()];
    expected.sort();
    assert_eq!(first.subjects, expected, "tenant users by UPN, the guest and the service principal by objectId");
    assert_eq!((first.users, first.guests, first.service_principals, first.nested_groups), (2, 1, 1, 1));

    // A quiet poll: one request (the channel's deltaLink), no user lookups.
    emulator.reset_stats();
    let quiet = sync(&roster, source.as_mut(), &t.team).await;
    assert_eq!(quiet, first);
    assert_eq!(emulator.stats().graph_requests, 1, "team and inner share one channel: one deltaLink request");

    // Changes: ann leaves, bob joins inner; both arrive as members@delta.
    assert!(emulator.remove_member(&t.team, &t.ann));
    assert!(emulator.add_member(&t.inner, &t.bob, None));
    let changed = sync(&roster, source.as_mut(), &t.team).await;
    assert!(!changed.subjects.contains(&ann), "{changed:?}");
    assert!(changed.subjects.contains(&t.upn(&t.bob)), "{changed:?}");

    // Graph forgets the delta state: the next poll reads in full again.
    emulator.expire_delta_states();
    assert!(emulator.remove_member(&t.team, &t.inner));
    let resynced = sync(&roster, source.as_mut(), &t.team).await;
    let mut expected = vec![t.guest.clone(), t.robot.clone()];
    expected.sort();
    assert_eq!(resynced.subjects, expected, "the nested group left, with carol and bob");
    assert_eq!(resynced.nested_groups, 0);

    // An outage keeps the members and says so.
    emulator.set_faults(&Faults { outage_for_secs: 30, ..Default::default() });
    let during = sync(&roster, source.as_mut(), &t.team).await;
    assert_eq!(during.subjects, resynced.subjects, "nobody is removed by an outage");
    let stale = during.stale.expect("the failure is recorded");
    assert!(matches!(stale.error, DirectoryError::Unavailable { .. }), "{:?}", stale.error);
    emulator.set_faults(&Faults::default());
    assert!(sync(&roster, source.as_mut(), &t.team).await.stale.is_none());

    // A membership with an end time (PIM for Groups) ends by itself.
    assert!(emulator.add_member(&t.team, &t.bob, Some(Duration::from_secs(2))));
    assert!(sync(&roster, source.as_mut(), &t.team).await.subjects.contains(&t.upn(&t.bob)));
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(!sync(&roster, source.as_mut(), &t.team).await.subjects.contains(&t.upn(&t.bob)));
}

#[tokio::test]
async fn a_quiet_poll_of_many_groups_costs_one_request_per_fifty() {
    let ids: Vec<String> = (0..120).map(|_| fresh_object_id()).collect();
    let person = fresh_object_id();
    let tenant = DirectoryFile {
        groups: ids.iter().enumerate().map(|(i, id)| group(id, &format!("g{i}-{id}"), &[])).collect(),
        users: vec![user(
            &person,
            &format!("{person}@contoso.com"),
            &ids.iter().map(String::as_str).collect::<Vec<_>>(),
        )],
        service_principals: vec![],
    };
    let emulator = emulator_of(tenant).await;
    let mut source = directory(&emulator).member_source().unwrap();
    let roster = Roster::default();
    let roots: BTreeSet<String> = ids.iter().cloned().collect();
    members::sync(&roster, source.as_mut(), &roots, jiff::Timestamp::now()).await;
    assert!(ids.iter().all(|g| roster.view(g).is_ok_and(|m| m.subjects.len() == 1)));
    emulator.reset_stats();
    members::sync(&roster, source.as_mut(), &roots, jiff::Timestamp::now()).await;
    let requests = emulator.stats().graph_requests;
    println!("quiet poll of {} groups: {requests} Graph requests", ids.len());
    assert_eq!(requests, 3, "ceil(120 / 50) channels");
}

/// An operator on Graph that reads memberships every 5 s.
async fn operator(emulator: &Emulator) -> TestOperator {
    let graph: Arc<dyn Directory> = directory(emulator);
    let mut op = TestOperator::start_with_directory(graph, Duration::from_secs(60)).await;
    op.stop().await;
    op.membership_poll = POLL;
    op.resume().await;
    op
}

async fn members_team(op: &TestOperator, name: &str, group: &str, namespace: &str) {
    let mut ta = op.team(name, GroupSelector::by_object_id(group), namespace);
    ta.spec.bind = BindMode::Members;
    op.apply(&ta).await;
}

async fn may_list_pods(admin: &kube::Client, user: &str, groups: &[&str], namespace: &str) -> bool {
    allowed(admin, user, groups, "list", "", "pods", namespace).await
}

/// Polls a SubjectAccessReview every 200 ms until it answers `expected`;
/// returns how long that took.
async fn time_until(admin: &kube::Client, user: &str, namespace: &str, expected: bool, limit: Duration) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if may_list_pods(admin, user, &[], namespace).await == expected {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{user} was not {} in {namespace} within {limit:?}", if expected { "allowed" } else { "denied" });
}

#[tokio::test]
async fn a_removed_member_is_denied_and_an_added_one_allowed_within_seconds() {
    let t = tenant();
    let emulator = emulator_of(t.directory.clone()).await;
    let op = operator(&emulator).await;
    let namespace = unique("members");
    let name = unique("members-follow");
    let name = name.as_str();
    members_team(&op, name, &t.team, &namespace).await;
    let ready = op.wait_ready(name).await;
    let counts = ready.status.as_ref().and_then(|s| s.members.clone()).expect("status.members");
    assert_eq!(
        (counts.total, counts.users, counts.guests, counts.service_principals, counts.nested_groups),
        (4, 2, 1, 1, 1)
    );
    op.wait_condition(name, "MembersSynced", "True", Some("MembersSynced"), LONG).await;

    let admin = &op.client;
    let (ann, bob, carol) = (t.upn(&t.ann), t.upn(&t.bob), t.upn(&t.carol));
    // No groups claim in these requests: the binding names the people.
    for person in [ann.as_str(), carol.as_str(), t.guest.as_str(), t.robot.as_str()] {
        assert!(may_list_pods(admin, person, &[], &namespace).await, "{person} is a member");
    }
    assert!(!may_list_pods(admin, &bob, &[], &namespace).await, "bob is not a member");
    assert!(
        !may_list_pods(admin, "someone@contoso.com", &[&t.team], &namespace).await,
        "the group itself is not bound"
    );

    assert!(emulator.remove_member(&t.team, &t.ann));
    let revoked = time_until(admin, &ann, &namespace, false, Duration::from_secs(15)).await;
    assert!(emulator.add_member(&t.team, &t.bob, None));
    let granted = time_until(admin, &bob, &namespace, true, Duration::from_secs(15)).await;
    println!("with --membership-poll {POLL:?}: removal denied after {revoked:?}, addition allowed after {granted:?}");
    // A nested group's member goes with the nested group.
    assert!(emulator.remove_member(&t.team, &t.inner));
    time_until(admin, &carol, &namespace, false, Duration::from_secs(15)).await;
    let counts = wait_for(LONG, "status.members to count the change", || async {
        let ta = op.api().get(name).await.map_err(|e| e.to_string())?;
        let m = ta.status.and_then(|s| s.members).ok_or("no status.members")?;
        if m.nested_groups == 0 && m.users == 1 { Ok(m) } else { Err(format!("{m:?}")) }
    })
    .await;
    assert_eq!(counts.total, 3, "bob, the guest and the service principal");
}

#[tokio::test]
async fn a_graph_outage_of_a_minute_changes_no_binding() {
    let t = tenant();
    let emulator = emulator_of(t.directory.clone()).await;
    let op = operator(&emulator).await;
    let namespace = unique("outage");
    let name = unique("members-outage");
    let name = name.as_str();
    let binding = format!("teamaccess-{name}");
    members_team(&op, name, &t.team, &namespace).await;
    op.wait_condition(name, "MembersSynced", "True", None, LONG).await;
    let bindings = Api::<RoleBinding>::namespaced(op.client.clone(), &namespace);
    let before = bindings.get(&binding).await.unwrap();

    emulator.set_faults(&Faults { outage_for_secs: 60, ..Default::default() });
    let started = Instant::now();
    let stale = op.wait_condition(name, "MembersSynced", "False", Some("MembersStale"), LONG).await;
    let message = stale.status.unwrap().conditions.into_iter().find(|c| c.type_ == "MembersSynced").unwrap().message;
    assert!(message.contains("GraphUnavailable") && message.contains("stay bound"), "{message}");
    let ann = t.upn(&t.ann);
    while started.elapsed() < Duration::from_secs(60) {
        let now = bindings.get(&binding).await.unwrap();
        assert_eq!(
            now.metadata.resource_version, before.metadata.resource_version,
            "the binding was written during the outage"
        );
        assert!(may_list_pods(&op.client, &ann, &[], &namespace).await, "a member lost access during the outage");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    op.wait_condition(name, "MembersSynced", "True", Some("MembersSynced"), LONG).await;
    let after = bindings.get(&binding).await.unwrap();
    assert_eq!(after.subjects, before.subjects, "the same people after the outage");
}

#[tokio::test]
async fn switching_between_group_and_members_never_leaves_a_member_without_access() {
    let t = tenant();
    let emulator = emulator_of(t.directory.clone()).await;
    let op = operator(&emulator).await;
    let namespace = unique("switch");
    let name = unique("members-switch");
    let name = name.as_str();
    op.apply(&op.team(name, GroupSelector::by_object_id(&t.team), &namespace)).await;
    op.wait_ready(name).await;
    let ann = t.upn(&t.ann);
    // What ann's token carries: her name and the group's objectId.
    let token_groups = [t.team.as_str()];
    let bindings = Api::<RoleBinding>::namespaced(op.client.clone(), &namespace);
    let binding = format!("teamaccess-{name}");
    let names_group = |rb: &RoleBinding| rb.subjects.iter().flatten().any(|s| s.kind == "Group");

    for (mode, want_group) in [("Members", false), ("Group", true)] {
        let patch = serde_json::json!({"spec": {"bind": mode}});
        op.api().patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        let mut checks = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                may_list_pods(&op.client, &ann, &token_groups, &namespace).await,
                "ann lost access during the switch to {mode}"
            );
            checks += 1;
            let rb = bindings.get(&binding).await.unwrap();
            if names_group(&rb) == want_group && (want_group || rb.subjects.iter().flatten().any(|s| s.name == ann)) {
                break;
            }
            assert!(Instant::now() < deadline, "the binding did not switch to {mode}: {:?}", rb.subjects);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        op.wait_ready(name).await;
        println!("switch to {mode}: {checks} SubjectAccessReviews during it, all allowed");
    }
    // Back in Group mode, status no longer counts members.
    let ta = op.api().get(name).await.unwrap();
    assert!(ta.status.unwrap().members.is_none());
    // Without the groups claim, ann relies on the group binding alone now.
    assert!(!may_list_pods(&op.client, &ann, &[], &namespace).await);
}

#[tokio::test]
async fn a_large_group_is_bound_once_left_alone_while_quiet_and_repaired_when_edited() {
    let team = fresh_object_id();
    let people: Vec<String> = (0..400).map(|_| fresh_object_id()).collect();
    let tenant = DirectoryFile {
        groups: vec![group(&team, &format!("large-{team}"), &[])],
        users: people.iter().map(|id| user(id, &format!("{id}@contoso.com"), &[&team])).collect(),
        service_principals: vec![],
    };
    let emulator = emulator_of(tenant).await;
    let op = operator(&emulator).await;
    let namespace = unique("large");
    let name = unique("members-large");
    members_team(&op, &name, &team, &namespace).await;
    op.wait_condition(&name, "MembersSynced", "True", None, LONG).await;
    let bindings = Api::<RoleBinding>::namespaced(op.client.clone(), &namespace);
    let binding = format!("teamaccess-{name}");
    let bound = bindings.get(&binding).await.unwrap();
    assert_eq!(bound.subjects.as_ref().map(Vec::len), Some(400));
    let ta_version = op.api().get(&name).await.unwrap().metadata.resource_version;

    // Three polls with nothing changed: neither the binding nor the status is written.
    tokio::time::sleep(POLL * 3 + Duration::from_secs(1)).await;
    assert_eq!(bindings.get(&binding).await.unwrap().metadata.resource_version, bound.metadata.resource_version);
    assert_eq!(op.api().get(&name).await.unwrap().metadata.resource_version, ta_version);

    // Someone edits the binding (drops one person, adds an outsider): put back.
    let mut edited = bound.subjects.clone().unwrap();
    edited.remove(0);
    edited.push(k8s_openapi::api::rbac::v1::Subject {
        kind: "User".into(),
        api_group: Some("rbac.authorization.k8s.io".into()),
        name: "intruder@contoso.com".into(),
        namespace: None,
    });
    let patch = serde_json::json!({"subjects": edited});
    bindings.patch(&binding, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_for(LONG, "the edited binding to be put back", || async {
        let now = bindings.get(&binding).await.map_err(|e| e.to_string())?;
        if now.subjects == bound.subjects {
            Ok(())
        } else {
            Err(format!("{} subjects", now.subjects.map_or(0, |s| s.len())))
        }
    })
    .await;
    assert!(!may_list_pods(&op.client, "intruder@contoso.com", &[], &namespace).await);
}

#[tokio::test]
async fn access_report_names_each_person_namespace_and_grant_in_both_modes() {
    let t = tenant();
    // A group of more than one page of transitiveMembers (999 per page).
    let crowd_group = fresh_object_id();
    let mut directory = t.directory.clone();
    directory.groups.push(group(&crowd_group, &format!("crowd-{crowd_group}"), &[]));
    let crowd: Vec<String> = (0..1100).map(|_| fresh_object_id()).collect();
    directory.users.extend(crowd.iter().map(|id| user(id, &format!("{id}@contoso.com"), &[&crowd_group])));
    let emulator = emulator_of(directory).await;
    let op = operator(&emulator).await;
    let (by_group, by_members, big) = (unique("report-group"), unique("report-members"), unique("report-crowd"));
    let namespace = unique("report");
    let mut group_mode = op.team(&by_group, GroupSelector::by_object_id(&t.team), &namespace);
    group_mode.spec.users =
        vec![teamaccess_operator::api::UserRef { user_principal_name: Some(t.upn(&t.bob)), object_id: None }];
    op.apply(&group_mode).await;
    members_team(&op, &by_members, &t.inner, &namespace).await;
    op.apply(&op.team(&big, GroupSelector::by_object_id(&crowd_group), &unique("crowd"))).await;
    for name in [&by_group, &by_members, &big] {
        op.wait_ready(name).await;
    }

    // The emulator serves from this test's runtime: the command runs off it.
    let report = |extra: &[&str]| {
        let mut args: Vec<String> = vec!["access-report".into()];
        args.extend(support::process::graph_args(&emulator));
        args.extend(extra.iter().map(|s| s.to_string()));
        tokio::task::spawn_blocking(move || {
            let output = std::process::Command::new(env!("CARGO_BIN_EXE_teamaccess-operator"))
                .args(&args)
                .env("KUBECONFIG", kubeconfig_path())
                .envs(support::process::GRAPH_ENV)
                .output()
                .expect("run access-report");
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            String::from_utf8(output.stdout).unwrap()
        })
    };
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&report(&["--namespace", &namespace, "-o", "json"]).await.unwrap()).unwrap();
    let row = |person: &str, ta: &str| rows.iter().find(|r| r["person"] == person && r["teamaccess"] == ta).cloned();
    let ann = row(&t.upn(&t.ann), &by_group).expect("ann, through the group");
    assert_eq!(
        (ann["kind"].as_str(), ann["bind"].as_str(), ann["access"].as_str()),
        (Some("user"), Some("Group"), Some("verbs *"))
    );
    assert!(ann["via"].as_str().unwrap().contains(&t.team));
    assert!(row(&t.upn(&t.carol), &by_group).is_some(), "carol, through the nested group");
    assert!(row(&t.upn(&t.carol), &by_members).is_some_and(|r| r["bind"] == "Members"));
    assert_eq!(row(&t.guest, &by_group).unwrap()["kind"], "guest");
    assert_eq!(row(&t.robot, &by_group).unwrap()["kind"], "servicePrincipal");
    assert_eq!(row(&t.upn(&t.bob), &by_group).unwrap()["via"], "spec.users");
    assert!(row(&t.upn(&t.ann), &by_members).is_none(), "ann is not in inner");
    assert!(rows.iter().all(|r| r["namespace"] == namespace.as_str()), "--namespace filters");
    // Every page of a large group, and the other formats.
    let all = report(&["-o", "csv"]).await.unwrap();
    assert_eq!(
        all.lines().filter(|l| l.contains(&format!(",{big},"))).count(),
        1100,
        "both pages of transitiveMembers"
    );
    let table = report(&["--namespace", &namespace]).await.unwrap();
    assert!(table.starts_with("PERSON"), "{table}");
    assert!(table.contains(&t.upn(&t.ann)));
}

#[tokio::test]
async fn a_deleted_group_takes_its_members_access_with_it() {
    let t = tenant();
    let emulator = emulator_of(t.directory.clone()).await;
    // Lookups expire at once, so the reconcile learns the group is gone from Graph.
    let settings = teamaccess_operator::directory::graph::GraphSettings {
        cache_ttl: Duration::from_millis(200),
        ..fast_settings(&emulator)
    };
    let graph: Arc<dyn Directory> = directory_with(&emulator, &secret_settings(&emulator), settings);
    let mut op = TestOperator::start_with_directory(graph, Duration::from_secs(60)).await;
    op.stop().await;
    op.membership_poll = POLL;
    op.resume().await;
    let namespace = unique("deleted");
    let name = unique("members-deleted");
    members_team(&op, &name, &t.team, &namespace).await;
    op.wait_condition(&name, "MembersSynced", "True", None, LONG).await;
    let ann = t.upn(&t.ann);
    assert!(may_list_pods(&op.client, &ann, &[], &namespace).await);

    let mut without = t.directory.clone();
    without.groups.retain(|g| g.object_id != t.team);
    emulator.set_directory(without);
    time_until(&op.client, &ann, &namespace, false, Duration::from_secs(15)).await;
    op.wait_condition(&name, "Ready", "False", Some("GroupMissing"), LONG).await;
    let bindings = Api::<RoleBinding>::namespaced(op.client.clone(), &namespace);
    assert!(
        bindings.get_opt(&format!("teamaccess-{name}")).await.unwrap().is_none(),
        "the binding went with the group"
    );
}

#[tokio::test]
async fn a_group_past_one_bindings_size_is_split_and_its_parts_follow_the_mode() {
    let team = fresh_object_id();
    let people: Vec<String> = (0..3000).map(|_| fresh_object_id()).collect();
    let tenant = DirectoryFile {
        groups: vec![group(&team, &format!("split-{team}"), &[])],
        users: people.iter().map(|id| user(id, &format!("{id}@contoso.com"), &[&team])).collect(),
        service_principals: vec![],
    };
    let emulator = emulator_of(tenant).await;
    let op = operator(&emulator).await;
    let namespace = unique("split");
    let name = unique("members-split");
    members_team(&op, &name, &team, &namespace).await;
    op.wait_condition(&name, "MembersSynced", "True", None, LONG).await;
    let bindings = Api::<RoleBinding>::namespaced(op.client.clone(), &namespace);
    let ours = kube::api::ListParams::default().labels("app.kubernetes.io/managed-by=teamaccess-operator");
    let listed = bindings.list(&ours).await.unwrap().items;
    let sizes: Vec<usize> = listed.iter().map(|rb| rb.subjects.as_ref().map_or(0, Vec::len)).collect();
    assert_eq!(listed.len(), 5, "the main binding and four parts: {sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), 3000, "{sizes:?}");
    // Someone from each part gets in, by name alone.
    for rb in &listed {
        let someone = &rb.subjects.as_ref().unwrap()[0].name;
        assert!(may_list_pods(&op.client, someone, &[], &namespace).await, "{someone} of {:?}", rb.metadata.name);
    }
    let in_a_part = listed
        .iter()
        .find(|rb| rb.metadata.name.as_deref() != Some(&format!("teamaccess-{name}")))
        .map(|rb| rb.subjects.as_ref().unwrap()[0].name.clone())
        .unwrap();

    // Back to Group: the group is bound before the parts go, so nobody of a
    // part is without access meanwhile (their token carries the group).
    let patch = serde_json::json!({"spec": {"bind": "Group"}});
    op.api().patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(may_list_pods(&op.client, &in_a_part, &[&team], &namespace).await, "a gap during the switch");
        if bindings.list(&ours).await.unwrap().items.len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the parts were not removed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    op.wait_ready(&name).await;
    // Deleting the TeamAccess removes every binding it made (the namespace is
    // kept, so only the cleanup can have removed them).
    let mut retained = op.team(&name, GroupSelector::by_object_id(&team), &namespace);
    retained.spec.bind = BindMode::Members;
    retained.spec.deletion_policy = teamaccess_operator::api::DeletionPolicy::Retain;
    op.apply(&retained).await;
    wait_for(LONG, "the parts to be made again", || async {
        let n = bindings.list(&ours).await.map_err(|e| e.to_string())?.items.len();
        if n == 5 { Ok(()) } else { Err(format!("{n} bindings")) }
    })
    .await;
    op.delete(&name).await;
    op.wait_deleted(&name, LONG).await;
    let kept = Api::<k8s_openapi::api::core::v1::Namespace>::all(op.client.clone()).get(&namespace).await.unwrap();
    assert!(kept.metadata.deletion_timestamp.is_none(), "Retain keeps the namespace");
    let left = bindings.list(&ours).await.unwrap().items;
    assert!(left.is_empty(), "{:?}", left.iter().map(|rb| rb.metadata.name.clone()).collect::<Vec<_>>());
}
