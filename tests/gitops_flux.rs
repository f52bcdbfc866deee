//! Flux applying TeamAccess objects from Git, on the real control plane: Flux's
//! own source-controller and kustomize-controller (tests/gitops/flux, one Flux
//! release pinned there) run as processes beside the operator, and Flux's Git
//! test server serves a repository this test commits to. Access is read as the
//! API server decides it (SubjectAccessReviews for a member of the group).

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
};
use serde_json::json;
use support::{
    arm::{Harness, groups_with_a_member, labelled_manifest},
    operator::TEST_LABEL,
    *,
};

const MEMBER: &str = "member@contoso.com";
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/examples/flux-kustomization.yaml");
const WAIT: Duration = Duration::from_secs(90);
/// The deletion brake's window in the prune test (--namespace-deletion-window).
const WINDOW: Duration = Duration::from_secs(30);

/// Flux's two controllers and a Git server, for one test; stopped (and their
/// directory removed) on drop.
struct Flux {
    processes: Vec<Child>,
    /// The Git server's root, the artifact storage, the work tree and the logs.
    dir: PathBuf,
    /// The namespace of the GitRepository and the Kustomizations.
    namespace: String,
    repo: Repo,
    logs: PathBuf,
}

/// A Git repository the test commits to, as the server serves it.
struct Repo {
    work: PathBuf,
    url: String,
}

impl Drop for Flux {
    fn drop(&mut self) {
        for child in &mut self.processes {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port nothing listens on now, for the artifact server source-controller
/// advertises to kustomize-controller.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").args(args).current_dir(dir).output().expect("run git");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Repo {
    /// Replaces the repository's content with `files` (path, YAML) and pushes
    /// one commit; returns the revision as Flux spells it.
    fn commit(&self, message: &str, files: &[(String, String)]) -> String {
        for entry in std::fs::read_dir(&self.work).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name() != Some(".git".as_ref()) {
                if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) }.unwrap();
            }
        }
        for (path, text) in files {
            let path = self.work.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "--allow-empty", "-m", message]);
        git(&self.work, &["push", "-q", &self.url, "main"]);
        format!("main@sha1:{}", git(&self.work, &["rev-parse", "HEAD"]))
    }
}

impl Flux {
    async fn start(admin: &Client) -> Self {
        let bin = gitops_tool("");
        let crds = bin.join("flux-crds");
        for crd in std::fs::read_dir(&crds).unwrap() {
            let text = std::fs::read_to_string(crd.unwrap().path()).unwrap();
            authors::admin_apply(&text);
        }
        // A controller that starts before its kinds are served exits.
        let established = ["wait", "--for=condition=Established", "--timeout=60s", "-f", crds.to_str().unwrap()];
        let (ok, out, err) = run_tool("kubectl", &established, None);
        assert!(ok, "Flux's CRDs not established:\n{out}\n{err}");
        let namespace = create_namespace(admin, "flux").await;
        let dir = std::env::temp_dir().join(unique("flux"));
        let (root, storage, work, logs) = (dir.join("git"), dir.join("storage"), dir.join("work"), dir.join("logs"));
        for d in [&root, &storage, &work, &logs] {
            std::fs::create_dir_all(d).unwrap();
        }
        git(&root, &["init", "-q", "--bare", "teams.git"]);
        git(&work, &["init", "-q", "-b", "main"]);
        git(&work, &["config", "user.email", "platform@contoso.com"]);
        git(&work, &["config", "user.name", "platform"]);

        let mut processes = Vec::new();
        let mut server = Command::new(bin.join("git-server"))
            .args(["-root", root.to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(logs.join("git-server.log")).unwrap())
            .spawn()
            .expect("start git-server");
        let mut url = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(server.stdout.take().unwrap()), &mut url).unwrap();
        processes.push(server);
        let repo = Repo { work, url: format!("{}/teams.git", url.trim()) };

        let storage_addr = format!("127.0.0.1:{}", free_port());
        let common = ["--metrics-addr=0", "--health-addr=0", "--enable-leader-election=false", "--log-level=info"];
        let flux_process = |name: &str, args: &[String]| {
            Command::new(bin.join(name))
                .args(common)
                .args(args)
                // Only this test's Flux objects: a second run side by side stays apart.
                .arg(format!("--watch-label-selector={TEST_LABEL}={namespace}"))
                .env("KUBECONFIG", kubeconfig_path())
                .env("RUNTIME_NAMESPACE", &namespace)
                .stdout(std::fs::File::create(logs.join(format!("{name}.log"))).unwrap())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("start {name}: {e}"))
        };
        processes.push(flux_process(
            "source-controller",
            &[
                format!("--storage-path={}", storage.display()),
                format!("--storage-addr={storage_addr}"),
                format!("--storage-adv-addr={storage_addr}"),
            ],
        ));
        processes.push(flux_process("kustomize-controller", &["--no-remote-bases".into()]));
        Self { processes, dir, namespace, repo, logs }
    }

    /// Deletes the Kustomizations (pruning what they applied) and the
    /// GitRepository while the controllers still run, so their finalizers are
    /// served; then stops the controllers and deletes the namespace.
    async fn stop(self, admin: &Client) {
        for (group, kind) in
            [("kustomize.toolkit.fluxcd.io", "Kustomization"), ("source.toolkit.fluxcd.io", "GitRepository")]
        {
            let api = Self::api(admin, &self.namespace, group, kind);
            api.delete_collection(&Default::default(), &Default::default()).await.unwrap();
            wait_for(WAIT, &format!("the {kind} objects to go"), || async {
                let left = api.list(&Default::default()).await.map_err(|e| e.to_string())?.items.len();
                if left == 0 { Ok(()) } else { Err(format!("{left} left{}", self.log_tail())) }
            })
            .await;
        }
        let namespace = self.namespace.clone();
        drop(self);
        delete_namespace(admin, &namespace).await;
    }

    fn log_tail(&self) -> String {
        let mut tail = String::new();
        for name in ["source-controller", "kustomize-controller"] {
            let log = std::fs::read_to_string(self.logs.join(format!("{name}.log"))).unwrap_or_default();
            let lines: Vec<&str> = log.lines().rev().take(5).collect();
            tail += &format!("\n{name}:\n{}", lines.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        tail
    }

    fn api(client: &Client, namespace: &str, group: &str, kind: &str) -> Api<DynamicObject> {
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, "v1", kind));
        Api::namespaced_with(client.clone(), namespace, &resource)
    }

    /// A GitRepository of the test's repository, polled every 2 s, and a
    /// Kustomization `name` of its `path` that prunes and waits for what it
    /// applies, as `service_account` when given.
    async fn sync(&self, admin: &Client, name: &str, path: &str, service_account: Option<&str>) {
        let label = json!({TEST_LABEL: self.namespace});
        let source = json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
            "metadata": {"name": "teams", "namespace": self.namespace, "labels": label},
            "spec": {"interval": "2s", "url": self.repo.url, "ref": {"branch": "main"}}
        });
        let mut kustomization = json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": name, "namespace": self.namespace, "labels": label},
            "spec": {"interval": "1m", "retryInterval": "2s", "timeout": "30s", "path": path,
                     "prune": true, "wait": true, "sourceRef": {"kind": "GitRepository", "name": "teams"},
                     "healthCheckExprs": example_health_check_exprs()}
        });
        if let Some(sa) = service_account {
            kustomization["spec"]["serviceAccountName"] = json!(sa);
        }
        let apply = PatchParams::apply("flux-test").force();
        let sources = Self::api(admin, &self.namespace, "source.toolkit.fluxcd.io", "GitRepository");
        sources.patch("teams", &apply, &Patch::Apply(source)).await.unwrap();
        let kustomizations = Self::api(admin, &self.namespace, "kustomize.toolkit.fluxcd.io", "Kustomization");
        kustomizations.patch(name, &apply, &Patch::Apply(kustomization)).await.unwrap();
    }

    /// The Kustomization's Ready condition (status, reason, message) and the
    /// revision it last applied.
    async fn kustomization(&self, admin: &Client, name: &str) -> (String, String, String, String) {
        let api = Self::api(admin, &self.namespace, "kustomize.toolkit.fluxcd.io", "Kustomization");
        let ks = api.get(name).await.unwrap();
        let status = &ks.data["status"];
        let ready = status["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Ready");
        let field = |key: &str| ready.and_then(|c| c[key].as_str()).unwrap_or_default().to_string();
        let applied = status["lastAppliedRevision"].as_str().unwrap_or_default().to_string();
        (field("status"), field("reason"), field("message"), applied)
    }

    /// Waits until Kustomization `name` is Ready for `revision`; while it is not,
    /// nothing it applied may be missing its grant, and once it is, every
    /// TeamAccess in `names` is Ready for its current generation.
    async fn wait_ready(&self, admin: &Client, h: &Harness, name: &str, revision: &str, names: &[String]) {
        wait_for(WAIT, &format!("Kustomization {name} Ready at {revision}"), || async {
            let (status, reason, message, applied) = self.kustomization(admin, name).await;
            if status == "True" && applied == revision {
                for ta in names {
                    let live = h.tas.get(ta).await.unwrap();
                    assert!(
                        ready_for_its_generation(&live),
                        "Flux said Ready at {revision} before {ta} was: {:?}",
                        live.status
                    );
                }
                Ok(())
            } else {
                Err(format!("{status} {reason}: {message} (applied {applied}){}", self.log_tail()))
            }
        })
        .await
    }

    /// Waits until Kustomization `name` reports Ready False with a message
    /// containing `says`, and returns that message.
    async fn wait_failed(&self, admin: &Client, name: &str, says: &str) -> String {
        wait_for(WAIT, &format!("Kustomization {name} to fail saying {says:?}"), || async {
            let (status, reason, message, _) = self.kustomization(admin, name).await;
            if status == "False" && message.contains(says) {
                Ok(format!("{reason}: {message}"))
            } else {
                Err(format!("{status} {reason}: {message}{}", self.log_tail()))
            }
        })
        .await
    }
}

/// The Kustomization example's `healthCheckExprs`, as shipped.
fn example_health_check_exprs() -> serde_json::Value {
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    let example = yaml_documents(&text).into_iter().find(|d| d["kind"] == "Kustomization").expect("a Kustomization");
    let exprs = example["spec"]["healthCheckExprs"].clone();
    assert!(exprs.is_array(), "the example judges TeamAccess objects with healthCheckExprs: {example}");
    exprs
}

/// Ready True for the object's current generation, as kstatus asks it.
fn ready_for_its_generation(ta: &teamaccess_operator::api::TeamAccess) -> bool {
    ta.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True" && c.observed_generation == ta.metadata.generation)
    })
}

/// A TeamAccess file for the repository, with the test operator's label.
fn team_file(label: &str, name: &str, spec: serde_json::Value) -> (String, String) {
    (format!("{name}.yaml"), serde_json::to_string_pretty(&labelled_manifest(label, name, spec)).unwrap())
}

async fn member_allowed(admin: &Client, group: &str, verb: &str, namespace: &str) -> bool {
    allowed(admin, MEMBER, &[group], verb, "", "pods", namespace).await
}

#[tokio::test]
async fn flux_applies_waits_for_edits_and_prunes_teamaccess_objects_from_git() {
    let (directory, groups) = groups_with_a_member(1);
    let group = &groups[0];
    let emulator = graph::emulator_of(directory).await;
    // A brake of 10 namespace deletions per WINDOW, on a Lease of this test's own.
    let mut args: Vec<String> =
        ["--max-namespace-deletions", "10", "--namespace-deletion-window", "30s", "--deletion-brake-lease"]
            .map(String::from)
            .to_vec();
    args.push(unique("flux-brake"));
    let h = Harness::start_on(emulator, &args).await;
    let admin = admin_client().await;
    let flux = Flux::start(&admin).await;
    let [a, b, refused] = ["a", "b", "refused"].map(|n| h.name(n));
    let [a_ns, b_ns] = ["flux-a", "flux-b"].map(unique);
    let spec = |ns: &str, verbs: &[&str]| json!({"group": {"objectId": group}, "namespace": ns, "verbs": verbs});

    // Two grants from Git (b's namespace is kept when b goes, as production
    // namespaces should be): Flux is Ready only once both are granted.
    let mut retained = spec(&b_ns, &["get", "list", "create"]);
    retained["deletionPolicy"] = json!("Retain");
    let files =
        vec![team_file(&h.label, &a, spec(&a_ns, &["get", "list", "create"])), team_file(&h.label, &b, retained)];
    let revision = flux.repo.commit("two teams", &files);
    flux.sync(&admin, "teams", "./", None).await;
    flux.wait_ready(&admin, &h, "teams", &revision, &[a.clone(), b.clone()]).await;
    assert!(member_allowed(&admin, group, "create", &a_ns).await);
    assert!(member_allowed(&admin, group, "create", &b_ns).await);
    write_team_data(&admin, &a_ns).await;
    write_team_data(&admin, &b_ns).await;

    // One that cannot be granted fails the Kustomization, naming it.
    let mut with_refused = files.clone();
    with_refused.push(team_file(
        &h.label,
        &refused,
        json!({"group": {"objectId": group}, "namespace": unique("flux-refused"), "clusterRole": "cluster-admin"}),
    ));
    flux.repo.commit("a grant the guardrails refuse", &with_refused);
    h.wait_condition(&refused, "Stalled", "True", "ClusterRoleNotAllowed").await;
    let failed = flux.wait_failed(&admin, "teams", &format!("TeamAccess/{refused}")).await;
    println!("Flux reports: {failed}");

    // An edit (create taken away) and a prune of b, in one commit.
    let files = vec![team_file(&h.label, &a, spec(&a_ns, &["get", "list"]))];
    let revision = flux.repo.commit("a reads only; b goes", &files);
    flux.wait_ready(&admin, &h, "teams", &revision, std::slice::from_ref(&a)).await;
    wait_allowed(&admin, MEMBER, &[group], "create", "", "pods", &a_ns, false).await;
    assert!(member_allowed(&admin, group, "list", &a_ns).await, "a still reads");
    wait_gone(&h.tas, &b, WAIT).await;
    wait_gone(&h.tas, &refused, WAIT).await;
    assert!(!member_allowed(&admin, group, "create", &b_ns).await, "b's access went with it");
    assert_team_data_kept(&admin, &b_ns).await;
    assert_team_data_kept(&admin, &a_ns).await;

    // Twenty teams (deletionPolicy Delete), then a commit that removes them all:
    // access goes at once, namespaces ten per window, and the others keep their
    // data meanwhile.
    let many: Vec<(String, String)> = (0..20).map(|i| (h.name(&format!("m{i}")), unique("flux-m"))).collect();
    let mut files = vec![team_file(&h.label, &a, spec(&a_ns, &["get", "list"]))];
    files.extend(many.iter().map(|(name, ns)| team_file(&h.label, name, spec(ns, &["get", "list", "create"]))));
    let revision = flux.repo.commit("twenty teams", &files);
    let names: Vec<String> = many.iter().map(|(n, _)| n.clone()).collect();
    flux.wait_ready(&admin, &h, "teams", &revision, &names).await;
    for (_, ns) in &many {
        write_team_data(&admin, ns).await;
    }
    let pruned = tokio::time::Instant::now();
    let revision = flux.repo.commit("twenty teams go", &files[..1]);
    flux.wait_ready(&admin, &h, "teams", &revision, std::slice::from_ref(&a)).await;
    for (_, ns) in &many {
        wait_allowed(&admin, MEMBER, &[group], "create", "", "pods", ns, false).await;
    }
    // The first window opens at the first deletion, after the push: counted
    // before it closes, ten namespaces go and ten keep their data.
    let going = || async {
        let mut going = Vec::new();
        for (_, ns) in &many {
            if namespace_going(&admin, ns).await {
                going.push(ns.clone());
            }
        }
        going
    };
    wait_for(Duration::from_secs(20), "ten namespaces to go", || async {
        let n = going().await.len();
        if n >= 10 { Ok(()) } else { Err(format!("{n} going")) }
    })
    .await;
    let going = going().await;
    assert!(pruned.elapsed() < WINDOW - Duration::from_secs(3), "counted inside the first window");
    for (_, ns) in many.iter().filter(|(_, ns)| !going.contains(ns)) {
        assert_team_data_kept(&admin, ns).await;
    }
    let going = going.len();
    assert_eq!(going, 10, "the brake let ten namespaces go in the first window");
    let delayed = h.tas.list(&Default::default()).await.unwrap().items.into_iter().filter(|ta| {
        names.contains(&ta.metadata.name.clone().unwrap_or_default())
            && ta.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.reason == "NamespaceDeletionDelayed"))
    });
    assert_eq!(delayed.count(), 10, "the held-back ten say why");
    for name in &names {
        wait_gone(&h.tas, name, Duration::from_secs(120)).await;
    }

    // Removing the Kustomization prunes what is left (a).
    flux.stop(&admin).await;
    wait_gone(&h.tas, &a, Duration::from_secs(120)).await;
    h.op.stop().await;
    delete_namespace(&admin, &b_ns).await;
}

#[tokio::test]
async fn flux_applying_as_its_service_account_meets_the_admission_policy() {
    let (directory, groups) = groups_with_a_member(1);
    let emulator = graph::emulator_of(directory).await;
    let h = Harness::start_on(emulator, &[]).await;
    let admin = admin_client().await;
    let flux = Flux::start(&admin).await;
    let name = h.name("as-sa");
    let namespace = unique("flux-sa");
    let sa = "flux-applier";
    let sa_user = format!("system:serviceaccount:{}:{sa}", flux.namespace);
    authors::admin_apply(
        &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": flux.namespace}})
            .to_string(),
    );
    // Flux's ServiceAccount may write TeamAccess objects, nothing more: the
    // admission policy refuses a grant it could not make by hand.
    let rules = json!([{"apiGroups": ["teamaccess.dev"], "resources": ["teamaccesses"],
                        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}]);
    authors::grant_cluster_wide(&sa_user, "teamaccess-tests-author", rules);
    let spec = json!({"group": {"objectId": groups[0]}, "namespace": namespace, "verbs": ["get", "list", "create"]});
    let revision = flux.repo.commit("a team, applied as Flux's ServiceAccount", &[team_file(&h.label, &name, spec)]);
    flux.sync(&admin, "as-sa", "./", Some(sa)).await;
    let refused = flux.wait_failed(&admin, "as-sa", "may grant only permissions you hold yourself").await;
    println!("Flux reports: {refused}");
    assert!(h.tas.get_opt(&name).await.unwrap().is_none(), "nothing was admitted");

    // With the rights the README tells you to give it (those of the grants it
    // applies; cluster-admin in Flux's default install), it is admitted and granted.
    authors::admin_apply(
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": format!("{}-cluster-admin", flux.namespace)},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": flux.namespace}]})
        .to_string(),
    );
    flux.wait_ready(&admin, &h, "as-sa", &revision, std::slice::from_ref(&name)).await;
    assert!(member_allowed(&admin, &groups[0], "create", &namespace).await);

    let binding = format!("{}-cluster-admin", flux.namespace);
    flux.stop(&admin).await;
    wait_gone(&h.tas, &name, WAIT).await;
    run_tool("kubectl", &["delete", "clusterrolebinding", &binding], None);
    h.op.stop().await;
}
