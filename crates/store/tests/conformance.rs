//! One conformance suite for every backend of the store: each case runs on SQLite
//! (a fresh file) and on PostgreSQL (a fresh schema) when
//! `FLEETGATE_TEST_POSTGRES_URL` is set, so the two can never drift.

use fleetgate_core::events::{NewEvent, Severity};
use fleetgate_core::time::now_ms;
use fleetgate_core::user::Role;
use fleetgate_store::{
    AcmeAccountRecord, AcmeChallengeRecord, Actor, AgentRecord, ApiKeyRecord, AuditEvent,
    AuditFilter, CertificateRecord, ConfigStore, DraftState, EventFilter, EventStore,
    NamespaceRecord, PageRequest, ProjectRecord, ProjectTokenRecord, RedirectStore, ResourceSet,
    RuleData, RuleFilter, RuleTable, SessionRecord, SqlStore, Store, StoreError, StoreOptions,
    TokenScope, UserRecord,
};
use fleetgate_store::{
    AgentBudget, AgentReservation, AgentReserve, AgentRunRecord, AgentScheduleRecord, AgentSplit,
    AgentStepRecord, AgentStore, AgentToolRecord, AgentVersionRecord, AiAgentRecord,
    McpServerRecord,
};
use fleetgate_store::{AiBudgetRecord, AiGatewayStore, AiPriceRecord, AiUsageRow, UsageGroup};
use fleetgate_store::{AiPreferencesRecord, AiProviderRecord, AiStore};
use fleetgate_store::{
    AlertRuleRecord, AlertStore, IncidentAnalysisRecord, IncidentFilter, IncidentRecord,
    NewTimelineEntry,
};
use fleetgate_store::{AttemptOutcome, DeliveryRecord, WebhookRecord, WebhookStore};
use fleetgate_store::{AuditStore, AuthStore, CertificateStore, ConfigEdit, NoCheck};
use fleetgate_store::{Declaration, DeclaredProject};
use fleetgate_store::{FleetStore, NodePresence, NodeSample};
use fleetgate_store::{Leg, LegState, TunnelRecord, TunnelStore};
use fleetgate_store::{LoginAttempt, MetricPoint, MetricStore};
use fleetgate_store::{NodeFilter, NodeRecord, NodeSeen, NodeStore};
use serde_json::json;

struct Harness {
    store: SqlStore,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/store.db", dir.path().display());
    let store = SqlStore::open_and_migrate(&StoreOptions::new(url))
        .await
        .expect("open sqlite");
    Harness {
        store,
        _dir: Some(dir),
    }
}

/// A fresh schema on the test PostgreSQL, or `None` (with the reason printed).
async fn postgres() -> Option<Harness> {
    let Ok(base) = std::env::var("FLEETGATE_TEST_POSTGRES_URL") else {
        eprintln!("skipping PostgreSQL case: FLEETGATE_TEST_POSTGRES_URL is not set");
        return None;
    };
    let schema = format!("fg_store_{}", uuid::Uuid::new_v4().simple());
    let admin = SqlStore::open(&StoreOptions::new(base.clone()))
        .await
        .expect("connect to FLEETGATE_TEST_POSTGRES_URL");
    admin
        .execute_raw(&format!("CREATE SCHEMA {schema}"))
        .await
        .expect("create schema");
    admin.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    let store = SqlStore::open_and_migrate(&StoreOptions::new(url))
        .await
        .expect("open postgres schema");
    Some(Harness { store, _dir: None })
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let h = super::sqlite().await;
                    super::$name(&h.store).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    if let Some(h) = super::postgres().await {
                        super::$name(&h.store).await;
                    }
                }
            )*
        }
    };
}

conformance!(
    migrations_are_current_and_idempotent,
    users_crud_with_versions,
    usernames_are_unique,
    last_super_admin_is_kept,
    sessions_expire_and_go_with_their_user,
    login_failures_are_counted_per_ip,
    login_attempts_are_reserved_atomically,
    api_keys_by_hash,
    audit_filters_and_pagination,
    resources_and_revisions,
    replace_resources_is_one_revision,
    object_edits_are_one_revision,
    concurrent_config_writes_get_distinct_revisions,
    a_config_write_starts_from_what_another_manager_committed,
    revisions_are_deltas_between_keyframes,
    concurrent_read_then_write_transactions_all_succeed,
    backup_writes_a_file,
    hostile_text_is_stored_verbatim,
    certificates_crud_with_versions,
    acme_certificates_keep_their_domains_and_renewal_errors,
    acme_accounts_are_kept_per_directory_encrypted,
    acme_challenges_are_live_until_they_expire,
    namespaces_and_projects,
    rule_drafts_publish_and_discard,
    rule_import_merge_and_replace,
    declare_writes_config_and_projects_in_one_transaction,
    project_tokens_and_agents,
    events_filters_ack_and_retention,
    webhook_deliveries_are_claimed_once,
    metric_points_roll_up_and_prune,
    alert_rules_crud_with_versions,
    one_active_incident_per_rule,
    incident_timelines_filters_and_deletion,
    incident_analyses_are_kept_shown_and_audited,
    nodes_crud_tokens_and_registration,
    fleet_presence_follows_live_replicas_and_samples_roll,
    tunnels_crud_legs_and_audit_without_secrets,
    tunnel_listens_are_claimed_once,
    events_of_limited_callers,
    ai_providers_crud_default_and_audit_without_keys,
    ai_preferences_follow_their_providers_and_users,
    agents_versions_promotions_and_audit,
    agent_tools_keep_header_values_out_of_the_audit,
    mcp_servers_keep_secret_values_out_of_the_audit,
    agent_runs_steps_and_spend,
    agent_budget_reservations_never_pass_the_limit,
    agent_schedules_are_claimed_once,
    ai_budgets_crud_with_versions_and_audit,
    ai_prices_set_replace_drop_and_audit,
    ai_usage_batches_roll_up_and_charge_budgets,
    ai_allowances_never_lease_past_the_limit,
);

fn actor() -> Actor {
    Actor {
        name: "tester".into(),
        id: Some("u-test".into()),
        role: Role::SuperAdmin,
        client_ip: Some("127.0.0.1".into()),
        request_id: Some("req-1".into()),
    }
}

fn user(id: &str, name: &str, role: Role) -> UserRecord {
    let now = now_ms();
    UserRecord {
        id: id.into(),
        username: name.into(),
        display_name: format!("{name} display"),
        email: None,
        role,
        password_hash: "$argon2id$fake".into(),
        allowed_node_ids: None,
        disabled: false,
        version: 1,
        created_at: now,
        updated_at: now,
        last_login_at: None,
    }
}

fn page(limit: i64, offset: i64) -> PageRequest {
    PageRequest { limit, offset }
}

async fn migrations_are_current_and_idempotent(s: &SqlStore) {
    let status = s.migration_status().await.expect("status");
    assert!(status.is_current(), "{status:?}");
    s.migrate().await.expect("second migrate is a no-op");
    s.ping().await.expect("ping");
    assert_eq!(s.latest_revision().await.expect("latest"), 0);
}

async fn users_crud_with_versions(s: &SqlStore) {
    let a = actor();
    s.create_user(&a, &user("u1", "alice", Role::Admin))
        .await
        .expect("create");
    s.create_user(&a, &user("u2", "bob", Role::Viewer))
        .await
        .expect("create");
    assert_eq!(s.count_users().await.expect("count"), 2);
    let mut alice = s
        .get_user_by_username("alice")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(alice.role, Role::Admin);
    alice.allowed_node_ids = Some(vec!["n1".into(), "n2".into()]);
    alice.display_name = "Alice A.".into();
    let updated = s.update_user(&a, &alice, Some(1)).await.expect("update");
    assert_eq!(updated.version, 2);
    assert_eq!(
        updated.allowed_node_ids,
        Some(vec!["n1".into(), "n2".into()])
    );
    match s.update_user(&a, &alice, Some(1)).await {
        Err(StoreError::VersionMismatch { current: 2 }) => {}
        other => panic!("expected a version mismatch, got {other:?}"),
    }
    let list = s.list_users(page(1, 1)).await.expect("list");
    assert_eq!(list.total, 2);
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].username, "bob");
    s.delete_user(&a, "u2", None).await.expect("delete");
    assert!(s.get_user("u2").await.expect("get").is_none());
    assert!(matches!(
        s.delete_user(&a, "u2", None).await,
        Err(StoreError::NotFound(_))
    ));
    let audit = s
        .list_audit(
            &AuditFilter {
                target_type: Some("user".into()),
                ..Default::default()
            },
            page(50, 0),
        )
        .await
        .expect("audit");
    let actions: Vec<_> = audit.items.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["user.delete", "user.update", "user.create", "user.create"]
    );
    let upd = &audit.items[1];
    assert_eq!(
        upd.before.as_ref().expect("before")["display_name"],
        "alice display"
    );
    assert_eq!(
        upd.after.as_ref().expect("after")["display_name"],
        "Alice A."
    );
    assert!(!upd
        .after
        .as_ref()
        .expect("after")
        .to_string()
        .contains("argon2"));
    assert_eq!(upd.client_ip.as_deref(), Some("127.0.0.1"));
}

async fn usernames_are_unique(s: &SqlStore) {
    let a = actor();
    s.create_user(&a, &user("u1", "alice", Role::Admin))
        .await
        .expect("create");
    let err = s.create_user(&a, &user("u9", "alice", Role::Viewer)).await;
    assert!(matches!(err, Err(StoreError::Conflict(_))), "{err:?}");
    // The failed insert left nothing behind, audit included.
    let audit = s
        .list_audit(&AuditFilter::default(), page(10, 0))
        .await
        .expect("audit");
    assert_eq!(audit.total, 1);
}

async fn last_super_admin_is_kept(s: &SqlStore) {
    let a = actor();
    s.create_user(&a, &user("root", "root", Role::SuperAdmin))
        .await
        .expect("create");
    assert!(matches!(
        s.delete_user(&a, "root", None).await,
        Err(StoreError::Conflict(_))
    ));
    let mut root = s.get_user("root").await.expect("get").expect("exists");
    root.role = Role::Admin;
    assert!(matches!(
        s.update_user(&a, &root, None).await,
        Err(StoreError::Conflict(_))
    ));
    s.create_user(&a, &user("root2", "root2", Role::SuperAdmin))
        .await
        .expect("create");
    s.update_user(&a, &root, None).await.expect("now allowed");
}

async fn sessions_expire_and_go_with_their_user(s: &SqlStore) {
    let a = actor();
    s.create_user(&a, &user("u1", "alice", Role::Admin))
        .await
        .expect("create");
    let now = now_ms();
    let session = SessionRecord {
        token_hash: "h1".into(),
        user_id: "u1".into(),
        csrf_token: "c1".into(),
        client_ip: Some("10.0.0.1".into()),
        created_at: now,
        expires_at: now + 60_000,
    };
    s.create_session(&a, &session).await.expect("session");
    let (got, u) = s.get_session("h1", now).await.expect("get").expect("live");
    assert_eq!(got, session);
    assert_eq!(u.username, "alice");
    assert!(s
        .get_session("h1", now + 60_000)
        .await
        .expect("get")
        .is_none());
    assert_eq!(s.prune_sessions(now + 60_001).await.expect("prune"), 1);
    s.create_session(
        &a,
        &SessionRecord {
            token_hash: "h2".into(),
            ..session.clone()
        },
    )
    .await
    .expect("session");
    s.delete_user(&a, "u1", None).await.expect("delete");
    assert!(s.get_session("h2", now).await.expect("get").is_none());
    assert!(!s.delete_session(&a, "h2").await.expect("delete"));
}

async fn login_failures_are_counted_per_ip(s: &SqlStore) {
    let t = now_ms();
    for i in 0..3 {
        s.record_login_failure("1.2.3.4", t + i)
            .await
            .expect("record");
    }
    s.record_login_failure("5.6.7.8", t).await.expect("record");
    assert_eq!(
        s.login_failures("1.2.3.4", t - 1).await.expect("count"),
        (3, Some(t))
    );
    assert_eq!(s.login_failures("1.2.3.4", t).await.expect("count").0, 2);
    s.clear_login_failures("1.2.3.4").await.expect("clear");
    assert_eq!(
        s.login_failures("1.2.3.4", 0).await.expect("count"),
        (0, None)
    );
    assert_eq!(s.login_failures("5.6.7.8", 0).await.expect("count").0, 1);
}

async fn login_attempts_are_reserved_atomically(s: &SqlStore) {
    let t = now_ms();
    // Twenty attempts at once against a limit of five: exactly five are admitted.
    let outcomes = futures::future::join_all(
        (0..20).map(|i| s.reserve_login_attempt("9.9.9.9", t + i, t - 60_000, 5)),
    )
    .await;
    let admitted: Vec<i64> = outcomes
        .iter()
        .filter_map(|o| match o.as_ref().expect("reserve") {
            LoginAttempt::Admitted { id } => Some(*id),
            LoginAttempt::Refused { .. } => None,
        })
        .collect();
    assert_eq!(admitted.len(), 5, "{outcomes:?}");
    for o in &outcomes {
        if let LoginAttempt::Refused { oldest } = o.as_ref().expect("reserve") {
            assert!((t..t + 20).contains(oldest), "{oldest}");
        }
    }
    // Refused attempts are not recorded; another address is unaffected.
    assert_eq!(s.login_failures("9.9.9.9", 0).await.expect("count").0, 5);
    assert!(matches!(
        s.reserve_login_attempt("8.8.8.8", t, t - 60_000, 5)
            .await
            .expect("reserve"),
        LoginAttempt::Admitted { .. }
    ));
    // Releasing one frees exactly one place.
    s.release_login_attempt(admitted[0]).await.expect("release");
    assert!(matches!(
        s.reserve_login_attempt("9.9.9.9", t + 30, t - 60_000, 5)
            .await
            .expect("reserve"),
        LoginAttempt::Admitted { .. }
    ));
    assert!(matches!(
        s.reserve_login_attempt("9.9.9.9", t + 31, t - 60_000, 5)
            .await
            .expect("reserve"),
        LoginAttempt::Refused { .. }
    ));
    // Outside the window the old attempts no longer count.
    assert!(matches!(
        s.reserve_login_attempt("9.9.9.9", t + 61_000, t + 1_000, 5)
            .await
            .expect("reserve"),
        LoginAttempt::Admitted { .. }
    ));
}

async fn api_keys_by_hash(s: &SqlStore) {
    let a = actor();
    s.create_user(&a, &user("u1", "alice", Role::Admin))
        .await
        .expect("create");
    let key = ApiKeyRecord {
        id: "k1".into(),
        name: "ci".into(),
        prefix: "fg_ab".into(),
        key_hash: "hash-1".into(),
        role: Role::Operator,
        user_id: Some("u1".into()),
        created_at: now_ms(),
        last_used_at: None,
    };
    s.create_api_key(&a, &key).await.expect("create");
    s.create_api_key(
        &a,
        &ApiKeyRecord {
            id: "k2".into(),
            key_hash: "hash-2".into(),
            user_id: None,
            ..key.clone()
        },
    )
    .await
    .expect("create");
    assert_eq!(
        s.find_api_key_by_hash("hash-1").await.expect("find"),
        Some(key.clone())
    );
    assert!(s
        .find_api_key_by_hash("nope")
        .await
        .expect("find")
        .is_none());
    assert_eq!(
        s.list_api_keys(Some("u1"), page(10, 0))
            .await
            .expect("list")
            .total,
        1
    );
    assert_eq!(
        s.list_api_keys(None, page(10, 0))
            .await
            .expect("list")
            .total,
        2
    );
    s.touch_api_key("k1", 42).await.expect("touch");
    assert_eq!(
        s.get_api_key("k1")
            .await
            .expect("get")
            .expect("exists")
            .last_used_at,
        Some(42)
    );
    s.delete_api_key(&a, "k1").await.expect("delete");
    assert!(matches!(
        s.delete_api_key(&a, "k1").await,
        Err(StoreError::NotFound(_))
    ));
}

async fn audit_filters_and_pagination(s: &SqlStore) {
    let a = actor();
    for i in 0..5 {
        s.append_audit(
            &a,
            AuditEvent::new("thing.poke", "thing", Some(&i.to_string())),
        )
        .await
        .expect("append");
    }
    s.append_audit(
        &Actor::system(),
        AuditEvent::new("backup.create", "backup", None),
    )
    .await
    .expect("append");
    let all = s
        .list_audit(&AuditFilter::default(), page(2, 0))
        .await
        .expect("list");
    assert_eq!(all.total, 6);
    assert_eq!(all.items.len(), 2);
    assert_eq!(all.items[0].action, "backup.create");
    let by_actor = s
        .list_audit(
            &AuditFilter {
                actor: Some("tester".into()),
                action: Some("thing.poke".into()),
                ..Default::default()
            },
            page(10, 3),
        )
        .await
        .expect("list");
    assert_eq!(by_actor.total, 5);
    assert_eq!(by_actor.items.len(), 2);
    let future = s
        .list_audit(
            &AuditFilter {
                since: Some(now_ms() + 60_000),
                ..Default::default()
            },
            page(10, 0),
        )
        .await
        .expect("list");
    assert_eq!(future.total, 0);
    assert_eq!(s.prune_audit(now_ms() + 1).await.expect("prune"), 6);
}

async fn resources_and_revisions(s: &SqlStore) {
    let a = actor();
    let (r, rev) = s
        .put_resource(
            &a,
            "settings",
            "global",
            &json!({"api": {"rate_limit_per_minute": 10}}),
            Some(0),
            "first",
        )
        .await
        .expect("put");
    assert_eq!((r.version, rev), (1, 1));
    let conflict = s
        .put_resource(&a, "settings", "global", &json!({}), Some(0), "again")
        .await;
    assert!(
        matches!(conflict, Err(StoreError::VersionMismatch { current: 1 })),
        "{conflict:?}"
    );
    let (r2, rev2) = s
        .put_resource(
            &a,
            "settings",
            "global",
            &json!({"api": {"rate_limit_per_minute": 20}}),
            Some(1),
            "second",
        )
        .await
        .expect("put");
    assert_eq!(
        (r2.version, rev2),
        (2, 2),
        "a failed write must not consume a revision number"
    );
    s.put_resource(&a, "route", "r1", &json!({"path": "/a"}), None, "route")
        .await
        .expect("put");
    let set = s.resource_set().await.expect("set");
    assert_eq!(set["route"]["r1"], json!({"path": "/a"}));
    assert_eq!(s.list_resources("route").await.expect("list").len(), 1);
    let rev3 = s
        .delete_resource(&a, "route", "r1", Some(1), "bye")
        .await
        .expect("delete");
    assert_eq!(rev3, 4);
    assert_eq!(s.latest_revision().await.expect("latest"), 4);
    let revs = s.list_revisions(page(10, 0)).await.expect("list");
    assert_eq!(revs.total, 4);
    assert_eq!(revs.items[0].number, 4);
    assert_eq!(revs.items[3].message, "first");
    let r3 = s.get_revision(3).await.expect("get").expect("exists");
    assert_eq!(r3.snapshot.expect("snapshot")["route"]["r1"]["path"], "/a");
    assert_eq!(r3.author, "tester");
    assert!(s.get_revision(99).await.expect("get").is_none());
}

async fn replace_resources_is_one_revision(s: &SqlStore) {
    let a = actor();
    s.put_resource(&a, "route", "old", &json!(1), None, "m")
        .await
        .expect("put");
    s.put_resource(&a, "route", "kept", &json!(2), None, "m")
        .await
        .expect("put");
    let mut set = ResourceSet::new();
    set.entry("route".into())
        .or_default()
        .insert("kept".into(), json!(2));
    set.entry("route".into())
        .or_default()
        .insert("new".into(), json!(3));
    let rev = s
        .replace_resources(&a, &set, "config.import", "import")
        .await
        .expect("replace");
    assert_eq!(rev, 3);
    assert_eq!(s.resource_set().await.expect("set"), set);
    assert_eq!(
        s.get_resource("route", "kept")
            .await
            .expect("get")
            .expect("kept")
            .version,
        1
    );
    let audit = s
        .list_audit(
            &AuditFilter {
                action: Some("config.import".into()),
                ..Default::default()
            },
            page(10, 0),
        )
        .await
        .expect("audit");
    assert_eq!(audit.total, 1);
    assert_eq!(
        audit.items[0].before.as_ref().expect("before")["route"]["old"],
        1
    );
}

/// Several objects put and deleted as one revision with one audit entry holding
/// only what was touched; a repeat changes nothing.
async fn object_edits_are_one_revision(s: &SqlStore) {
    let a = actor();
    s.put_resource(&a, "route", "gone", &json!(1), None, "m")
        .await
        .expect("put");
    s.put_resource(&a, "route", "same", &json!(2), None, "m")
        .await
        .expect("put");
    let puts = [
        ("upstream", "app", json!({"t": 1})),
        ("route", "app", json!({"r": 1})),
        ("route", "same", json!(2)),
    ];
    let deletes = [("route", "gone"), ("route", "never-was")];
    let edit = || ConfigEdit::Objects {
        puts: &puts,
        deletes: &deletes,
        action: "deployment.proxy",
    };
    let committed = s
        .write_config(&a, edit(), "proxy for app", &NoCheck)
        .await
        .expect("objects");
    assert!(committed.written);
    assert_eq!(committed.number, 3);
    let set = s.resource_set().await.expect("set");
    assert_eq!(set["route"].keys().collect::<Vec<_>>(), ["app", "same"]);
    assert_eq!(set["upstream"]["app"], json!({"t": 1}));
    assert_eq!(*committed.after, set);
    let same = s
        .get_resource("route", "same")
        .await
        .expect("get")
        .expect("same");
    assert_eq!(same.version, 1, "an unchanged object keeps its version");
    let audit = s
        .list_audit(
            &AuditFilter {
                action: Some("deployment.proxy".into()),
                ..Default::default()
            },
            page(10, 0),
        )
        .await
        .expect("audit");
    assert_eq!(audit.total, 1);
    let entry = &audit.items[0];
    assert_eq!(
        entry.before.as_ref().expect("before"),
        &json!({"route/gone": 1})
    );
    assert_eq!(
        entry.after.as_ref().expect("after"),
        &json!({"upstream/app": {"t": 1}, "route/app": {"r": 1}})
    );
    let again = s
        .write_config(&a, edit(), "again", &NoCheck)
        .await
        .expect("again");
    assert!(!again.written);
    assert_eq!(s.latest_revision().await.expect("latest"), 3);
}

/// A store keeps the configuration it last committed and starts its next write
/// from it; when another manager sharing the database wrote in between (here by
/// hand: the next revision number, an object and the revision row), the write
/// reads the objects again and keeps the other manager's object.
async fn a_config_write_starts_from_what_another_manager_committed(s: &SqlStore) {
    let a = actor();
    s.put_resource(&a, "route", "mine", &json!(1), None, "first")
        .await
        .expect("put");
    for sql in [
        "UPDATE counters SET value = value + 1 WHERE name = 'revision'",
        "INSERT INTO resources (kind, name, body, version, updated_at) \
         VALUES ('route', 'theirs', '2', 1, 0)",
        "INSERT INTO revisions (number, created_at, author, message, snapshot) \
         VALUES (2, 0, 'other', 'other manager', '{\"route\":{\"mine\":1,\"theirs\":2}}')",
    ] {
        s.execute_raw(sql).await.expect("the other manager's write");
    }
    let committed = s
        .write_config(
            &a,
            ConfigEdit::Put {
                kind: "route",
                name: "next",
                body: &json!(3),
                expected_version: None,
            },
            "after the other manager",
            &NoCheck,
        )
        .await
        .expect("write");
    assert_eq!(committed.number, 3);
    let want = json!({"route": {"mine": 1, "next": 3, "theirs": 2}});
    assert_eq!(
        serde_json::to_value(&*committed.before).expect("json"),
        json!({"route": {"mine": 1, "theirs": 2}})
    );
    assert_eq!(serde_json::to_value(&*committed.after).expect("json"), want);
    let stored = s.get_revision(3).await.expect("get").expect("revision 3");
    assert_eq!(
        serde_json::to_value(stored.snapshot.expect("snapshot")).expect("json"),
        want
    );
    // The next write starts from what this one kept, and it matches the database.
    let again = s
        .delete_resource(&a, "route", "mine", None, "delete")
        .await
        .expect("delete");
    assert_eq!(again, 4);
    assert_eq!(
        serde_json::to_value(s.resource_set().await.expect("set")).expect("json"),
        json!({"route": {"next": 3, "theirs": 2}})
    );
}

/// Every revision reads back as the configuration its write committed, whether
/// its row is a keyframe or a delta, across puts, deletes, object edits and
/// whole replacements; a revision whose delta chain has a gap is reported as
/// corrupt. Keyframes: the first revision, each replacement, and (after the
/// write) every `KEYFRAME_EVERY`th revision.
async fn revisions_are_deltas_between_keyframes(s: &SqlStore) {
    use fleetgate_store::KEYFRAME_EVERY;
    let a = actor();
    let mut committed: Vec<(i64, ResourceSet)> = Vec::new();
    let mut replaced = Vec::new();
    let total = 2 * KEYFRAME_EVERY + 5;
    for i in 1..=total {
        let edit_body = json!({"path": format!("/p{i}"), "n": i});
        let puts = [
            ("route", "shared", json!({"seen": i})),
            ("upstream", "u", json!({"targets": [i]})),
        ];
        let deletes = [("route", "r1")];
        let mut replacement = ResourceSet::new();
        replacement
            .entry("route".into())
            .or_default()
            .insert("only".into(), json!({"i": i}));
        let name = format!("r{}", i % 7);
        let edit = match i % 9 {
            // A delete of an object that exists (r{i-1 mod 7} was put before).
            4 => ConfigEdit::Delete {
                kind: "route",
                name: "r3",
                expected_version: None,
            },
            6 => ConfigEdit::Objects {
                puts: &puts,
                deletes: &deletes,
                action: "test.objects",
            },
            8 if i > 20 => ConfigEdit::Replace {
                set: &replacement,
                action: "test.replace",
            },
            _ => ConfigEdit::Put {
                kind: "route",
                name: &name,
                body: &edit_body,
                expected_version: None,
            },
        };
        let is_replace = matches!(edit, ConfigEdit::Replace { .. });
        let result = s.write_config(&a, edit, "step", &NoCheck).await;
        let c = match result {
            Ok(c) => c,
            // r3 deleted already: put it back instead.
            Err(StoreError::NotFound(_)) => s
                .write_config(
                    &a,
                    ConfigEdit::Put {
                        kind: "route",
                        name: "r3",
                        body: &edit_body,
                        expected_version: None,
                    },
                    "step",
                    &NoCheck,
                )
                .await
                .expect("put r3"),
            Err(e) => panic!("write {i}: {e:?}"),
        };
        assert!(c.written, "write {i} changed something");
        if is_replace {
            replaced.push(c.number);
        }
        committed.push((c.number, (*c.after).clone()));
    }
    let check_all = |label: &'static str| {
        let committed = &committed;
        async move {
            for (n, want) in committed {
                let got = s
                    .get_revision(*n)
                    .await
                    .unwrap_or_else(|e| panic!("{label}: revision {n}: {e:?}"))
                    .unwrap_or_else(|| panic!("{label}: revision {n} missing"));
                assert_eq!(got.snapshot.as_ref(), Some(want), "{label}: revision {n}");
            }
        }
    };
    check_all("right after the writes").await;

    // Keyframes: revision 1 and every replacement at once, every
    // KEYFRAME_EVERY-th revision soon after its write, nothing else.
    let mut want: Vec<i64> = vec![1];
    want.extend(&replaced);
    want.extend((1..=total / KEYFRAME_EVERY).map(|k| k * KEYFRAME_EVERY));
    want.sort_unstable();
    want.dedup();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let got = s.revision_keyframes().await.expect("keyframes");
        if got == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "keyframes {got:?}, want {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    check_all("with the later keyframes").await;

    // A gap in a chain is corruption, named; revisions before it still read.
    let gap = KEYFRAME_EVERY + 3;
    assert!(!want.contains(&gap) && !want.contains(&(gap + 1)));
    s.execute_raw(&format!("DELETE FROM revisions WHERE number = {gap}"))
        .await
        .expect("delete a revision row");
    let broken = s.get_revision(gap + 1).await;
    assert!(
        matches!(&broken, Err(StoreError::Corrupt(m)) if m.contains(&gap.to_string())),
        "{broken:?}"
    );
    assert!(s.get_revision(gap).await.expect("get").is_none());
    let before_gap = s.get_revision(gap - 1).await.expect("get").expect("exists");
    assert_eq!(
        before_gap.snapshot.as_ref(),
        committed
            .iter()
            .find(|(n, _)| *n == gap - 1)
            .map(|(_, set)| set)
    );
}

async fn concurrent_config_writes_get_distinct_revisions(s: &SqlStore) {
    let a = actor();
    let writes = (0..8).map(|i| {
        let a = a.clone();
        async move {
            s.put_resource(&a, "route", &format!("r{i}"), &json!(i), None, "concurrent")
                .await
                .expect("put")
                .1
        }
    });
    let mut revs = futures::future::join_all(writes).await;
    revs.sort_unstable();
    assert_eq!(revs, (1..=8).collect::<Vec<_>>());
}

/// Transactions that read, then write (an update checking the current version)
/// while other connections commit: none may fail with a busy/locked error.
async fn concurrent_read_then_write_transactions_all_succeed(s: &SqlStore) {
    for i in 0..8 {
        s.create_alert_rule(&actor(), &alert_rule(&format!("c{i}"), "auth.*"))
            .await
            .expect("create");
    }
    let updates = (0..8).map(|w| async move {
        for n in 0..10 {
            let mut rule = s
                .get_alert_rule(&format!("c{w}"))
                .await
                .expect("get")
                .expect("rule");
            rule.name = format!("writer {w} pass {n}");
            s.update_alert_rule(&actor(), &rule, None)
                .await
                .expect("an update among concurrent writers");
        }
    });
    let puts = (0..8).map(|i| async move {
        s.put_resource(
            &actor(),
            "route",
            &format!("busy{i}"),
            &json!(i),
            None,
            "concurrent",
        )
        .await
        .expect("put");
    });
    futures::future::join(
        futures::future::join_all(updates),
        futures::future::join_all(puts),
    )
    .await;
    let versions: i64 = futures::future::join_all((0..8).map(|i| async move {
        s.get_alert_rule(&format!("c{i}"))
            .await
            .expect("get")
            .expect("rule")
            .version
    }))
    .await
    .into_iter()
    .sum();
    assert_eq!(versions, 8 + 80, "every update counted once");
}

async fn backup_writes_a_file(s: &SqlStore) {
    let a = actor();
    s.create_user(&a, &user("u1", "alice", Role::Admin))
        .await
        .expect("create");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("b1.backup");
    s.backup(&path).await.expect("backup");
    let bytes = std::fs::read(&path).expect("backup exists");
    if !bytes.starts_with(b"SQLite format 3\0") {
        // PostgreSQL: a JSON export holding every table of the schema, new ones too.
        let doc: serde_json::Value = serde_json::from_slice(&bytes).expect("a JSON backup");
        let tables = doc["tables"].as_object().expect("tables");
        for t in [
            "users",
            "resources",
            "ai_agents",
            "ai_mcp_servers",
            "tunnels",
            "_sqlx_migrations",
        ] {
            assert!(tables.contains_key(t), "the backup holds table {t}");
        }
        assert_eq!(tables["users"][0]["username"], "alice");
    }
    assert!(matches!(
        s.backup(&path).await,
        Err(StoreError::Conflict(_))
    ));
}

async fn hostile_text_is_stored_verbatim(s: &SqlStore) {
    let a = actor();
    let name = "x'); DROP TABLE users;--";
    let mut u = user("u1", "mallory", Role::Viewer);
    u.display_name = name.into();
    u.email = Some("\u{0}nul\u{7f}é😀".replace('\u{0}', ""));
    s.create_user(&a, &u).await.expect("create");
    let got = s.get_user("u1").await.expect("get").expect("exists");
    assert_eq!(got.display_name, name);
    assert_eq!(got.email, u.email);
    assert_eq!(s.count_users().await.expect("count"), 1);
}

async fn acme_certificates_keep_their_domains_and_renewal_errors(s: &SqlStore) {
    let a = actor();
    let c = CertificateRecord {
        name: "acme-site".into(),
        cert_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
        key_encrypted: "v1:opaque-acme".into(),
        source: "acme".into(),
        acme_domains: vec!["a.example".into(), "b.example".into()],
        ..CertificateRecord::default()
    };
    let stored = s.put_certificate(&a, &c, Some(0)).await.expect("create");
    assert_eq!(stored.version, 1);
    let got = s
        .get_certificate("acme-site")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got.source, "acme");
    assert_eq!(got.acme_domains, ["a.example", "b.example"]);
    assert_eq!(
        (got.renewal_error.as_deref(), got.renewal_error_at),
        (None, None)
    );

    // A failed renewal is recorded without touching the certificate or its version.
    s.set_certificate_renewal_error(&a, "acme-site", Some("CA said: \"no\" 'really'"))
        .await
        .expect("record failure");
    let failed = s
        .get_certificate("acme-site")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        failed.renewal_error.as_deref(),
        Some("CA said: \"no\" 'really'")
    );
    assert!(failed.renewal_error_at.is_some_and(|t| t > 0));
    assert_eq!(
        (failed.version, &failed.key_encrypted),
        (1, &c.key_encrypted)
    );
    assert!(matches!(
        s.set_certificate_renewal_error(&a, "missing", Some("x"))
            .await,
        Err(StoreError::NotFound(_))
    ));
    s.set_certificate_renewal_error(&a, "acme-site", None)
        .await
        .expect("clear");
    let cleared = s
        .get_certificate("acme-site")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        (cleared.renewal_error, cleared.renewal_error_at),
        (None, None)
    );

    let audit = s
        .list_audit(
            &AuditFilter {
                target_type: Some("certificate".into()),
                ..Default::default()
            },
            page(10, 0),
        )
        .await
        .expect("audit");
    let actions: Vec<&str> = audit.items.iter().map(|e| e.action.as_str()).collect();
    assert!(
        actions.contains(&"certificate.renewal_failed"),
        "{actions:?}"
    );
    assert!(
        !audit
            .items
            .iter()
            .any(|e| format!("{:?}{:?}", e.before, e.after).contains("opaque-acme")),
        "keys stay out of the audit log"
    );
}

async fn acme_challenges_are_live_until_they_expire(s: &SqlStore) {
    let now = now_ms();
    let challenge = |token: &str, expires_at: i64| AcmeChallengeRecord {
        token: token.into(),
        key_authorization: format!("{token}.thumbprint"),
        identifier: "a.example".into(),
        expires_at,
        created_at: 0,
    };
    assert!(s.live_acme_challenges(now).await.expect("none").is_empty());
    s.put_acme_challenge(&challenge("tok-b", now + 60_000))
        .await
        .expect("b");
    s.put_acme_challenge(&challenge("tok-a", now + 60_000))
        .await
        .expect("a");
    s.put_acme_challenge(&challenge("tok-old", now - 1))
        .await
        .expect("old");
    // Replacing a token's answer keeps one row.
    let mut again = challenge("tok-b", now + 120_000);
    again.key_authorization = "tok-b.other".into();
    s.put_acme_challenge(&again).await.expect("replace");

    // The expired row is not live; the others are, by token.
    let live = s.live_acme_challenges(now).await.expect("live");
    let tokens: Vec<&str> = live.iter().map(|c| c.token.as_str()).collect();
    assert_eq!(tokens, ["tok-a", "tok-b"]);
    assert_eq!(live[1].key_authorization, "tok-b.other");
    assert_eq!(live[1].expires_at, now + 120_000);
    assert_eq!(live[0].identifier, "a.example");
    assert!(live[0].created_at > 0);
    // Expiry is exclusive: at `expires_at` the row is gone.
    let at_a = s.live_acme_challenges(now + 60_000).await.expect("later");
    assert_eq!(at_a.len(), 1, "{at_a:?}");
    assert_eq!(at_a[0].token, "tok-b");

    assert_eq!(s.prune_acme_challenges(now).await.expect("prune"), 1);
    assert_eq!(s.prune_acme_challenges(now).await.expect("again"), 0);
    assert_eq!(
        s.delete_acme_challenges(&["tok-a".into(), "missing".into()])
            .await
            .expect("delete"),
        1
    );
    assert_eq!(s.delete_acme_challenges(&[]).await.expect("nothing"), 0);
    let left = s.live_acme_challenges(now).await.expect("left");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].token, "tok-b");
}

async fn acme_accounts_are_kept_per_directory_encrypted(s: &SqlStore) {
    let a = actor();
    let dir = "https://acme.test/dir";
    assert!(s.get_acme_account(dir).await.expect("get").is_none());
    let acc = AcmeAccountRecord {
        directory_url: dir.into(),
        email: Some("ops@example.com".into()),
        credentials_encrypted: "v1:sealed-credentials".into(),
        created_at: 0,
        updated_at: 0,
    };
    s.put_acme_account(&a, &acc).await.expect("create");
    let got = s.get_acme_account(dir).await.expect("get").expect("exists");
    assert_eq!(got.credentials_encrypted, acc.credentials_encrypted);
    assert_eq!(got.email.as_deref(), Some("ops@example.com"));
    assert!(got.created_at > 0);
    s.put_acme_account(
        &a,
        &AcmeAccountRecord {
            email: None,
            credentials_encrypted: "v1:other".into(),
            ..got.clone()
        },
    )
    .await
    .expect("replace");
    let again = s.get_acme_account(dir).await.expect("get").expect("exists");
    assert_eq!((again.email, again.created_at), (None, got.created_at));
    assert!(s
        .get_acme_account("https://other.test/dir")
        .await
        .expect("get")
        .is_none());
    let audit = s
        .list_audit(
            &AuditFilter {
                target_type: Some("acme_account".into()),
                ..Default::default()
            },
            page(10, 0),
        )
        .await
        .expect("audit");
    assert_eq!(audit.total, 2);
    assert!(
        !audit
            .items
            .iter()
            .any(|e| format!("{:?}{:?}", e.before, e.after).contains("sealed-credentials")),
        "credentials stay out of the audit log"
    );
}

async fn certificates_crud_with_versions(s: &SqlStore) {
    let a = actor();
    let c = CertificateRecord {
        name: "site".into(),
        cert_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
        key_encrypted: "v1:opaque".into(),
        version: 0,
        created_at: 0,
        updated_at: 0,
        ..CertificateRecord::default()
    };
    let stored = s.put_certificate(&a, &c, Some(0)).await.expect("create");
    assert_eq!(stored.source, "upload");
    assert_eq!(stored.version, 1);
    assert!(matches!(
        s.put_certificate(&a, &c, Some(0)).await,
        Err(StoreError::VersionMismatch { current: 1 })
    ));
    let again = s
        .put_certificate(
            &a,
            &CertificateRecord {
                key_encrypted: "v1:new".into(),
                ..c.clone()
            },
            Some(1),
        )
        .await
        .expect("replace");
    assert_eq!((again.version, again.created_at), (2, stored.created_at));
    assert_eq!(
        s.get_certificate("site")
            .await
            .expect("get")
            .expect("exists")
            .key_encrypted,
        "v1:new"
    );
    s.put_certificate(
        &a,
        &CertificateRecord {
            name: "api".into(),
            ..c.clone()
        },
        None,
    )
    .await
    .expect("second");
    let names: Vec<String> = s
        .list_certificates()
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["api", "site"]);
    s.delete_certificate(&a, "site").await.expect("delete");
    assert!(matches!(
        s.delete_certificate(&a, "site").await,
        Err(StoreError::NotFound(_))
    ));
    let audit = s
        .list_audit(
            &AuditFilter {
                target_type: Some("certificate".into()),
                ..Default::default()
            },
            page(10, 0),
        )
        .await
        .expect("audit");
    assert_eq!(audit.total, 4);
    assert!(
        !audit
            .items
            .iter()
            .any(|e| format!("{:?}{:?}", e.before, e.after).contains("opaque")),
        "keys stay out of the audit log"
    );
}

async fn project_fixture(s: &SqlStore, ns: &str, name: &str, hosts: &[&str]) -> ProjectRecord {
    let now = now_ms();
    if s.get_namespace(ns).await.expect("get ns").is_none() {
        s.create_namespace(
            &actor(),
            &NamespaceRecord {
                name: ns.into(),
                description: String::new(),
                version: 1,
                created_at: now,
                updated_at: now,
            },
        )
        .await
        .expect("namespace");
    }
    let p = ProjectRecord {
        id: uuid::Uuid::new_v4().to_string(),
        namespace: ns.into(),
        name: name.into(),
        description: "d".into(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        published_version: 0,
        published_at: None,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    s.create_project(&actor(), &p).await.expect("project");
    p
}

fn rd(kind: &str, key: &str, value: &str) -> RuleData {
    RuleData {
        kind: kind.into(),
        key: key.into(),
        value: value.into(),
        flavor: "FOUND".into(),
    }
}

async fn namespaces_and_projects(s: &SqlStore) {
    let p = project_fixture(s, "prod", "site", &["a.example.com"]).await;
    let dup = s
        .create_namespace(
            &actor(),
            &NamespaceRecord {
                name: "prod".into(),
                description: String::new(),
                version: 1,
                created_at: 0,
                updated_at: 0,
            },
        )
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))));
    // A host belongs to one project only; names are unique per namespace.
    let mut other = p.clone();
    other.id = "other".into();
    other.name = "other".into();
    let err = s
        .create_project(&actor(), &other)
        .await
        .expect_err("host taken");
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("a.example.com")),
        "{err}"
    );
    other.hosts = vec!["b.example.com".into()];
    s.create_project(&actor(), &other)
        .await
        .expect("other project");
    let mut same_name = other.clone();
    same_name.id = "third".into();
    same_name.hosts = vec![];
    assert!(matches!(
        s.create_project(&actor(), &same_name).await,
        Err(StoreError::Conflict(_))
    ));
    let got = s
        .get_project("prod", "site")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got.hosts, vec!["a.example.com".to_string()]);
    assert_eq!(got.published_version, 0);
    let mut edit = got.clone();
    edit.hosts = vec!["b.example.com".into()];
    assert!(matches!(
        s.update_project(&actor(), &edit, None).await,
        Err(StoreError::Conflict(_))
    ));
    edit.hosts = vec!["c.example.com".into()];
    assert!(matches!(
        s.update_project(&actor(), &edit, Some(7)).await,
        Err(StoreError::VersionMismatch { current: 1 })
    ));
    let updated = s
        .update_project(&actor(), &edit, Some(1))
        .await
        .expect("update");
    assert_eq!(updated.version, 2);
    let listed = s.list_projects("prod", page(10, 0)).await.expect("list");
    assert_eq!(listed.total, 2);
    assert_eq!(s.all_projects().await.expect("all").len(), 2);
    assert!(matches!(
        s.delete_namespace(&actor(), "prod").await,
        Err(StoreError::Conflict(_))
    ));
    s.create_rule(
        &actor(),
        RuleTable::Redirects,
        &p.id,
        &rd("BASIC", "/a", "/b"),
    )
    .await
    .expect("rule");
    s.delete_project(&actor(), &p.id)
        .await
        .expect("delete project");
    s.delete_project(&actor(), &other.id)
        .await
        .expect("delete other");
    assert!(s.get_project("prod", "site").await.expect("get").is_none());
    s.delete_namespace(&actor(), "prod")
        .await
        .expect("delete namespace");
    let audit = s
        .list_audit(
            &AuditFilter {
                target_type: Some("project".into()),
                ..Default::default()
            },
            page(50, 0),
        )
        .await
        .expect("audit");
    assert!(audit.items.iter().any(|a| a.action == "project.delete"));
}

async fn rule_drafts_publish_and_discard(s: &SqlStore) {
    let p = project_fixture(s, "ns", "p", &[]).await;
    let t = RuleTable::Redirects;
    let a = s
        .create_rule(&actor(), t, &p.id, &rd("BASIC", "/a", "/x"))
        .await
        .expect("a");
    let b = s
        .create_rule(&actor(), t, &p.id, &rd("REGEX", "^/b/(.*)$", "/y/$1"))
        .await
        .expect("b");
    assert_eq!(a.state, DraftState::Created);
    assert!(matches!(
        s.create_rule(&actor(), t, &p.id, &rd("BASIC_HOST", "/a", "https://x"))
            .await,
        Err(StoreError::Conflict(_))
    ));
    // Nothing is served before the first publish.
    let served = s
        .published_rules(t, &p.id, page(100, 0))
        .await
        .expect("published");
    assert_eq!((served.total, served.items.len()), (0, 0));
    let pub1 = s.publish(&actor(), &p.id).await.expect("publish");
    assert_eq!(pub1.version, 1);
    assert_eq!(pub1.summary["redirects"]["created"], 2);
    assert!(matches!(
        s.publish(&actor(), &p.id).await,
        Err(StoreError::Conflict(_))
    ));
    let served = s
        .published_rules(t, &p.id, page(1, 1))
        .await
        .expect("published");
    assert_eq!(served.total, 2);
    assert_eq!(served.items, vec![rd("REGEX", "^/b/(.*)$", "/y/$1")]);
    // Edits and deletes are drafts: agents keep the published set.
    s.update_rule(&actor(), t, &p.id, a.id, &rd("BASIC", "/a", "/z"))
        .await
        .expect("update");
    s.delete_rule(&actor(), t, &p.id, b.id)
        .await
        .expect("delete");
    let c = s
        .create_rule(&actor(), t, &p.id, &rd("BASIC", "/c", "/x"))
        .await
        .expect("c");
    // Looked up by key: the working set only (a rule deleted in the draft is gone).
    let by_key = s.rule_by_key(t, &p.id, "/c").await.expect("by key");
    assert_eq!(by_key.map(|r| r.id), Some(c.id));
    let gone = s.rule_by_key(t, &p.id, "^/b/(.*)$").await.expect("by key");
    assert!(gone.is_none(), "deleted in the draft: {gone:?}");
    let absent = s.rule_by_key(t, &p.id, "/nope").await.expect("by key");
    assert!(absent.is_none());
    let drafts = s.drafts(&p.id, 10).await.expect("drafts");
    assert_eq!(
        (
            drafts.redirects.created,
            drafts.redirects.updated,
            drafts.redirects.deleted
        ),
        (1, 1, 1)
    );
    let served = s
        .published_rules(t, &p.id, page(10, 0))
        .await
        .expect("published");
    assert_eq!(
        served.items,
        vec![rd("BASIC", "/a", "/x"), rd("REGEX", "^/b/(.*)$", "/y/$1")]
    );
    let listed = s
        .list_rules(t, &p.id, &RuleFilter::default(), page(10, 0))
        .await
        .expect("list");
    assert_eq!(
        listed.total, 2,
        "the deleted rule is hidden from the working set"
    );
    let with_deleted = RuleFilter {
        include_deleted: true,
        ..Default::default()
    };
    assert_eq!(
        s.list_rules(t, &p.id, &with_deleted, page(10, 0))
            .await
            .expect("list")
            .total,
        3
    );
    // Drafts only: the created and the updated rule, and the deleted one on request.
    let drafts_only = RuleFilter {
        drafts_only: true,
        ..Default::default()
    };
    let ids = |p: fleetgate_store::Page<fleetgate_store::RuleRow>| {
        p.items.iter().map(|r| r.id).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(s
            .list_rules(t, &p.id, &drafts_only, page(10, 0))
            .await
            .expect("drafts only")),
        vec![a.id, c.id]
    );
    let all_drafts = RuleFilter {
        drafts_only: true,
        include_deleted: true,
        ..Default::default()
    };
    assert_eq!(
        ids(s
            .list_rules(t, &p.id, &all_drafts, page(10, 0))
            .await
            .expect("drafts with deleted")),
        vec![a.id, b.id, c.id]
    );
    let q = RuleFilter {
        q: Some("/C".into()),
        ..Default::default()
    };
    let found = s
        .list_rules(t, &p.id, &q, page(10, 0))
        .await
        .expect("search");
    assert_eq!(
        found.items.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![c.id]
    );
    let kind = RuleFilter {
        kind: Some("REGEX".into()),
        include_deleted: true,
        ..Default::default()
    };
    assert_eq!(
        s.list_rules(t, &p.id, &kind, page(10, 0))
            .await
            .expect("kind")
            .total,
        1
    );
    // Discard restores the published set as the working set.
    assert_eq!(s.discard_drafts(&actor(), &p.id).await.expect("discard"), 3);
    let working = s.working_rules(t, &p.id).await.expect("working");
    assert_eq!(
        working,
        vec![rd("BASIC", "/a", "/x"), rd("REGEX", "^/b/(.*)$", "/y/$1")]
    );
    // An edit back to the published value is no draft; a re-created deleted key is an edit.
    s.update_rule(&actor(), t, &p.id, a.id, &rd("BASIC", "/a", "/x"))
        .await
        .expect("noop");
    assert_eq!(
        s.drafts(&p.id, 10).await.expect("drafts").redirects.total(),
        0
    );
    s.delete_rule(&actor(), t, &p.id, a.id)
        .await
        .expect("delete a");
    let again = s
        .create_rule(&actor(), t, &p.id, &rd("BASIC", "/a", "/new"))
        .await
        .expect("re-create");
    assert_eq!((again.id, again.state), (a.id, DraftState::Updated));
    // Pages have their own table and count in the same publish.
    s.create_rule(
        &actor(),
        RuleTable::Pages,
        &p.id,
        &RuleData {
            kind: "BASIC".into(),
            key: "/robots.txt".into(),
            value: "User-agent: *".into(),
            flavor: "TEXT_PLAIN".into(),
        },
    )
    .await
    .expect("page");
    let pub2 = s.publish(&actor(), &p.id).await.expect("publish 2");
    assert_eq!(pub2.version, 2);
    assert_eq!(pub2.summary["pages"]["created"], 1);
    assert_eq!(
        s.get_project("ns", "p")
            .await
            .expect("get")
            .expect("p")
            .published_version,
        2
    );
    let history = s.list_publishes(&p.id, page(10, 0)).await.expect("history");
    assert_eq!(
        history.items.iter().map(|h| h.version).collect::<Vec<_>>(),
        vec![2, 1]
    );
    let pages = s
        .published_rules(RuleTable::Pages, &p.id, page(10, 0))
        .await
        .expect("pages");
    assert_eq!(pages.items[0].value, "User-agent: *");
}

async fn rule_import_merge_and_replace(s: &SqlStore) {
    let p = project_fixture(s, "ns", "imp", &[]).await;
    let t = RuleTable::Redirects;
    let rows: Vec<RuleData> = (0..1200)
        .map(|i| rd("BASIC", &format!("/r{i}"), "/t"))
        .collect();
    let sum = s
        .import_rules(&actor(), t, &p.id, &rows, false)
        .await
        .expect("import");
    assert_eq!((sum.created, sum.updated, sum.unchanged), (1200, 0, 0));
    s.publish(&actor(), &p.id).await.expect("publish");
    let mut next: Vec<RuleData> = (0..600)
        .map(|i| rd("BASIC", &format!("/r{i}"), "/t"))
        .collect();
    next[0].value = "/changed".into();
    next.push(rd("BASIC", "/new", "/t"));
    let sum = s
        .import_rules(&actor(), t, &p.id, &next, true)
        .await
        .expect("replace");
    assert_eq!(
        (sum.created, sum.updated, sum.unchanged, sum.deleted),
        (1, 1, 599, 600)
    );
    let working = s.working_rules(t, &p.id).await.expect("working");
    assert_eq!(working.len(), 601);
    assert_eq!(working[0].value, "/changed");
    assert_eq!(working.last().map(|r| r.key.as_str()), Some("/new"));
    let published = s
        .published_rules(t, &p.id, page(2000, 0))
        .await
        .expect("published");
    assert_eq!(published.total, 1200, "imports are drafts until published");
    let p2 = s.publish(&actor(), &p.id).await.expect("publish");
    assert_eq!(p2.summary["truncated"], true);
    assert_eq!(
        p2.summary["changes"].as_array().map(Vec::len),
        Some(fleetgate_store::PUBLISH_CHANGES_LISTED)
    );
    assert_eq!(
        s.published_rules(t, &p.id, page(1, 0))
            .await
            .expect("published")
            .total,
        601
    );
}

async fn project_tokens_and_agents(s: &SqlStore) {
    let p = project_fixture(s, "ns", "tok", &[]).await;
    let scope = |resource: &str, action: &str| TokenScope {
        namespace: "ns".into(),
        project: "tok".into(),
        resource: resource.into(),
        action: action.into(),
    };
    let token = ProjectTokenRecord {
        id: "t1".into(),
        project_id: p.id.clone(),
        name: "edge".into(),
        token_hash: "ab".repeat(32),
        preview: "flecto_abcd...wxyz".into(),
        scopes: vec![scope("redirect", "read"), scope("agent", "write")],
        created_at: now_ms(),
        expires_at: None,
        last_used_at: None,
    };
    s.create_project_token(&actor(), &token)
        .await
        .expect("token");
    let found = s
        .find_project_token(&"ab".repeat(32))
        .await
        .expect("find")
        .expect("found");
    assert_eq!(found.scopes, token.scopes);
    assert!(found.scopes[0].grants("ns", "tok", Some("redirect"), "read"));
    assert!(
        !found.scopes[1].grants("ns", "tok", Some("agent"), "read"),
        "write does not imply read"
    );
    assert!(!found.scopes[0].grants("ns", "other", Some("redirect"), "read"));
    s.touch_project_token("t1", 5).await.expect("touch");
    assert_eq!(
        s.list_project_tokens(&p.id).await.expect("list")[0].last_used_at,
        Some(5)
    );
    let now = now_ms();
    let agent = AgentRecord {
        project_id: p.id.clone(),
        name: "edge-1".into(),
        kind: "traefik".into(),
        loaded_version: 3,
        status: "success".into(),
        error: String::new(),
        load_duration_ns: 1_500_000,
        created_at: now,
        updated_at: now,
        last_hit_at: now,
    };
    assert!(s.report_agent(&actor(), &agent).await.expect("report"));
    assert!(!s
        .report_agent(
            &actor(),
            &AgentRecord {
                loaded_version: 4,
                ..agent.clone()
            }
        )
        .await
        .expect("again"));
    s.hit_agent(&p.id, "edge-1", now + 10).await.expect("hit");
    s.hit_agent(&p.id, "never-registered", now + 20)
        .await
        .expect("hit unknown");
    let agents = s.list_agents(&p.id).await.expect("agents");
    assert_eq!(agents.len(), 2);
    assert_eq!(
        (agents[0].loaded_version, agents[0].last_hit_at),
        (4, now + 10)
    );
    assert_eq!(agents[1].loaded_version, 0);
    s.delete_agent(&actor(), &p.id, "edge-1")
        .await
        .expect("delete agent");
    s.delete_project_token(&actor(), &p.id, "t1")
        .await
        .expect("revoke");
    assert!(s
        .find_project_token(&"ab".repeat(32))
        .await
        .expect("find")
        .is_none());
}

async fn events_filters_ack_and_retention(s: &SqlStore) {
    let now = now_ms();
    let mut batch = Vec::new();
    for i in 0..6 {
        let (t, sev) = match i % 3 {
            0 => ("circuit_breaker.opened", Severity::Critical),
            1 => ("rate_limit.exceeded", Severity::Warning),
            _ => ("config.applied", Severity::Info),
        };
        let mut e = NewEvent::new(t, sev, format!("event {i}")).upstream("api");
        e.created_at = now - (6 - i) * 1000;
        e.details = json!({"i": i, "text": "it's \"quoted\""});
        batch.push(e);
    }
    let stored = s.insert_events(&batch).await.expect("insert");
    assert_eq!(stored.len(), 6);
    assert!(
        stored.windows(2).all(|w| w[0].id < w[1].id),
        "ids follow insertion order"
    );
    let all = s
        .list_events(&EventFilter::default(), page(10, 0))
        .await
        .expect("list");
    assert_eq!(all.total, 6);
    assert_eq!(all.items[0].id, stored[5].id, "newest first");
    assert_eq!(all.items[0].event, batch[5]);
    let crit = EventFilter {
        severity: Some(Severity::Critical),
        ..Default::default()
    };
    assert_eq!(
        s.list_events(&crit, page(10, 0)).await.expect("list").total,
        2
    );
    let alerts = EventFilter {
        min_severity: Some(Severity::Warning),
        ..Default::default()
    };
    assert_eq!(
        s.list_events(&alerts, page(10, 0))
            .await
            .expect("list")
            .total,
        4
    );
    let cat = EventFilter {
        category: Some("rate_limit".into()),
        since: Some(now - 4500),
        ..Default::default()
    };
    assert_eq!(
        s.list_events(&cat, page(10, 0)).await.expect("list").total,
        1
    );
    let after = s
        .events_after(stored[2].id, &alerts, 10)
        .await
        .expect("after");
    assert_eq!(
        after.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![stored[3].id, stored[4].id]
    );
    assert!(s.ack_event(stored[0].id, "alice", now).await.expect("ack"));
    assert!(!s.ack_event(stored[0].id, "bob", now).await.expect("again"));
    assert!(matches!(
        s.ack_event(999_999, "bob", now).await,
        Err(StoreError::NotFound(_))
    ));
    let got = s
        .get_event(stored[0].id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got.acknowledged_by.as_deref(), Some("alice"));
    let counts = s
        .count_unacked(&EventFilter::default())
        .await
        .expect("count");
    assert_eq!(
        (counts.critical, counts.warning, counts.info, counts.total),
        (1, 2, 2, 5)
    );
    let n = s
        .ack_events(
            &EventFilter {
                category: Some("rate_limit".into()),
                ..Default::default()
            },
            "bob",
            now,
        )
        .await
        .expect("bulk");
    assert_eq!(n, 2);
    let unacked = EventFilter {
        unacknowledged: Some(true),
        ..Default::default()
    };
    assert_eq!(
        s.list_events(&unacked, page(10, 0))
            .await
            .expect("list")
            .total,
        3
    );
    // Retention: by age, then by count.
    assert_eq!(
        s.prune_events(now - 5500, 1000).await.expect("prune age"),
        1
    );
    assert_eq!(s.prune_events(0, 2).await.expect("prune count"), 3);
    let left = s
        .list_events(&EventFilter::default(), page(10, 0))
        .await
        .expect("list");
    assert_eq!(
        left.items.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![stored[5].id, stored[4].id]
    );
}

async fn webhook_deliveries_are_claimed_once(s: &SqlStore) {
    let now = now_ms();
    let hook = WebhookRecord {
        id: "w1".into(),
        url: "https://hooks.example.test/x".into(),
        events: vec!["*".into()],
        secret_encrypted: "sealed".into(),
        headers: vec![("x-team".into(), "sealed-value".into())],
        enabled: true,
        consecutive_failures: 0,
        disabled_reason: None,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    s.create_webhook(&actor(), &hook).await.expect("create");
    assert_eq!(s.get_webhook("w1").await.expect("get"), Some(hook.clone()));
    let deliveries: Vec<DeliveryRecord> = (0..10)
        .map(|i| DeliveryRecord {
            id: format!("d{i}"),
            webhook_id: "w1".into(),
            event_id: Some(i),
            event_type: "config.changed".into(),
            payload: format!("{{\"n\":{i}}}"),
            status: "pending".into(),
            attempts: 0,
            next_attempt_at: if i < 8 { now - 10 } else { now + 60_000 },
            last_status_code: None,
            last_error: None,
            last_latency_ms: None,
            created_at: now,
            updated_at: now,
        })
        .collect();
    s.enqueue_deliveries(&deliveries).await.expect("enqueue");
    // Two claimers at once get disjoint sets; nothing not yet due is claimed.
    let (a, b) = tokio::join!(
        s.claim_deliveries(now, 30_000, 5),
        s.claim_deliveries(now, 30_000, 5)
    );
    let (a, b) = (a.expect("claim a"), b.expect("claim b"));
    let mut ids: Vec<String> = a.iter().chain(b.iter()).map(|d| d.id.clone()).collect();
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), before, "a delivery was claimed twice");
    assert_eq!(ids.len(), 8);
    assert!(
        s.claim_deliveries(now, 30_000, 5)
            .await
            .expect("again")
            .is_empty(),
        "claimed ones are leased"
    );
    // After the lease runs out an unfinished delivery can be claimed again.
    assert_eq!(
        s.claim_deliveries(now + 31_000, 30_000, 20)
            .await
            .expect("later")
            .len(),
        8
    );
    let fail = AttemptOutcome {
        at: now,
        status_code: Some(500),
        latency_ms: 3,
        error: Some("answered 500".into()),
        success: false,
        retry_at: Some(now + 100),
    };
    assert_eq!(s.record_attempt("d0", &fail).await.expect("attempt"), 1);
    let ok = AttemptOutcome {
        at: now + 200,
        status_code: Some(200),
        latency_ms: 2,
        error: None,
        success: true,
        retry_at: None,
    };
    assert_eq!(
        s.record_attempt("d0", &ok).await.expect("attempt"),
        0,
        "a success resets the streak"
    );
    let d0 = s.get_delivery("d0").await.expect("get").expect("exists");
    assert_eq!(
        (d0.status.as_str(), d0.attempts, d0.last_status_code),
        ("success", 2, Some(200))
    );
    let log = s.list_attempts("d0").await.expect("attempts");
    assert_eq!(
        log.iter().map(|a| a.status_code).collect::<Vec<_>>(),
        vec![Some(500), Some(200)]
    );
    let requeued = s
        .requeue_delivery(&actor(), "d0", now + 300)
        .await
        .expect("requeue");
    assert_eq!(requeued.status, "pending");
    assert_eq!(
        s.list_deliveries("w1", page(3, 0))
            .await
            .expect("list")
            .total,
        10
    );
    s.disable_webhook("w1", "too many failures")
        .await
        .expect("disable");
    let w = s.get_webhook("w1").await.expect("get").expect("exists");
    assert!(!w.enabled);
    let mut enable = w.clone();
    enable.enabled = true;
    let w = s
        .update_webhook(&actor(), &enable, Some(w.version))
        .await
        .expect("enable");
    assert_eq!((w.consecutive_failures, w.disabled_reason), (0, None));
    s.delete_webhook(&actor(), "w1").await.expect("delete");
    assert!(
        s.get_delivery("d1").await.expect("get").is_none(),
        "deliveries go with their webhook"
    );
}

async fn metric_points_roll_up_and_prune(s: &SqlStore) {
    // An hour boundary, so the three resolutions line up: 2026-01-01T00:00:00Z.
    let hour = 1_767_225_600_000i64;
    let point = |ts: i64, source: &str, requests: i64, p50: f64| MetricPoint {
        ts,
        scope: "route:r1".into(),
        source: source.into(),
        requests,
        errors: 1,
        client_errors: 2,
        rate_limited: 3,
        timeouts: 0,
        retries: 0,
        latency_count: requests,
        p50_weighted: p50 * requests as f64,
        p95_weighted: 2.0 * p50 * requests as f64,
        p99_weighted: 3.0 * p50 * requests as f64,
    };
    // Six 10 s readings in the first minute from one gateway, one from another,
    // and one reading in the next minute.
    let mut points: Vec<MetricPoint> = (0..6)
        .map(|i| point(hour + i * 10_000, "a", 10, 1.5))
        .collect();
    points.push(point(hour + 20_000, "b", 30, 0.5));
    points.push(point(hour + 60_000, "a", 5, 4.0));
    s.record_metric_points(&points).await.expect("record");
    // The same reading again adds up (two writes of one interval are summed).
    s.record_metric_points(&[point(hour + 60_000, "a", 5, 4.0)])
        .await
        .expect("record again");

    let raw = s
        .metric_points(10, "route:r1", hour, hour + 3_600_000)
        .await
        .expect("raw");
    assert_eq!(raw.len(), 7, "{raw:?}");
    assert_eq!(raw[2].ts, hour + 20_000);
    assert_eq!(raw[2].requests, 40, "sources are summed");
    assert_eq!(raw[6].requests, 10);
    assert_eq!(raw[6].errors, 2);
    assert!((raw[2].p50_weighted - (15.0 + 15.0)).abs() < 1e-9);

    let minutes = s
        .metric_points(60, "route:r1", hour, hour + 3_600_000)
        .await
        .expect("minutes");
    assert_eq!(
        minutes
            .iter()
            .map(|p| (p.ts, p.requests))
            .collect::<Vec<_>>(),
        vec![(hour, 90), (hour + 60_000, 10)]
    );
    let hours = s
        .metric_points(3600, "route:r1", hour - 3_600_000, hour + 3_600_000)
        .await
        .expect("hours");
    assert_eq!(hours.len(), 1);
    assert_eq!(hours[0].requests, 100);
    assert_eq!(hours[0].rate_limited, 3 * 9);
    // Another scope is separate; an empty range is empty.
    assert!(s
        .metric_points(10, "", hour, hour + 3_600_000)
        .await
        .expect("other scope")
        .is_empty());
    assert!(s
        .metric_points(10, "route:r1", hour + 70_000, hour + 80_000)
        .await
        .expect("empty")
        .is_empty());

    // Binning 10 s rows into 30 s steps.
    let binned = MetricPoint::bin(&raw, 30_000);
    assert_eq!(
        binned
            .iter()
            .map(|p| (p.ts, p.requests))
            .collect::<Vec<_>>(),
        vec![(hour, 60), (hour + 30_000, 30), (hour + 60_000, 10)]
    );

    // Pruning is per resolution.
    assert_eq!(
        s.prune_metric_points(10, hour + 30_000)
            .await
            .expect("prune"),
        4
    );
    assert_eq!(
        s.metric_points(10, "route:r1", 0, i64::MAX)
            .await
            .expect("raw after prune")
            .len(),
        4
    );
    assert_eq!(
        s.metric_points(60, "route:r1", 0, i64::MAX)
            .await
            .expect("minutes after prune")
            .len(),
        2
    );
}

fn alert_rule(id: &str, event_type: &str) -> AlertRuleRecord {
    use fleetgate_core::alerts::{AlertCondition, EventCondition, EventKind, EventRuleFilter};
    let now = now_ms();
    AlertRuleRecord {
        id: id.into(),
        name: format!("rule {id}"),
        description: "it's \"quoted\"".into(),
        enabled: true,
        severity: Severity::Warning,
        condition: AlertCondition::Event(EventCondition {
            kind: EventKind::Event,
            event_type: event_type.into(),
            count: 3,
            window_secs: 60,
            filter: EventRuleFilter {
                route_id: Some("r1".into()),
                ..Default::default()
            },
        }),
        version: 1,
        created_at: now,
        updated_at: now,
    }
}

fn incident(
    id: &str,
    rule_id: Option<&str>,
    severity: Severity,
    created_at: i64,
) -> IncidentRecord {
    IncidentRecord {
        id: id.into(),
        title: format!("incident {id}"),
        status: IncidentStatus::Open,
        severity,
        rule_id: rule_id.map(str::to_string),
        created_at,
        updated_at: created_at,
        acknowledged_by: None,
        acknowledged_at: None,
        resolved_by: None,
        resolved_at: None,
        analysis: None,
        version: 1,
    }
}

use fleetgate_core::alerts::{IncidentStatus, TimelineKind};

async fn alert_rules_crud_with_versions(s: &SqlStore) {
    use fleetgate_core::alerts::{
        AlertCondition, CompareOp, MetricCondition, MetricKind, MetricName,
    };
    let a = alert_rule("a1", "auth.login_failed");
    s.create_alert_rule(&actor(), &a).await.expect("create");
    assert!(matches!(
        s.create_alert_rule(&actor(), &a).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.get_alert_rule("a1").await.expect("get"), Some(a.clone()));
    let mut b = alert_rule("a2", "proxy.*");
    b.created_at += 1;
    b.condition = AlertCondition::Metric(MetricCondition {
        kind: MetricKind::Metric,
        metric: MetricName::LatencyP95Ms,
        route: None,
        upstream: Some("api".into()),
        op: CompareOp::Ge,
        threshold: 250.5,
        duration_secs: 30,
    });
    s.create_alert_rule(&actor(), &b).await.expect("create b");
    let listed = s.list_alert_rules(page(1, 1)).await.expect("list");
    assert_eq!((listed.total, listed.items.len()), (2, 1));
    assert_eq!(listed.items[0], b, "metric conditions round-trip");
    assert_eq!(s.all_alert_rules().await.expect("all").len(), 2);

    let mut changed = a.clone();
    changed.enabled = false;
    changed.severity = Severity::Critical;
    assert!(matches!(
        s.update_alert_rule(&actor(), &changed, Some(7)).await,
        Err(StoreError::VersionMismatch { current: 1 })
    ));
    let stored = s
        .update_alert_rule(&actor(), &changed, Some(1))
        .await
        .expect("update");
    assert_eq!((stored.version, stored.enabled), (2, false));
    assert_eq!(s.get_alert_rule("a1").await.expect("get"), Some(stored));
    let mut ghost = a.clone();
    ghost.id = "nope".into();
    assert!(matches!(
        s.update_alert_rule(&actor(), &ghost, None).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.delete_alert_rule(&actor(), "a1", Some(1)).await,
        Err(StoreError::VersionMismatch { current: 2 })
    ));
    s.delete_alert_rule(&actor(), "a1", Some(2))
        .await
        .expect("delete");
    assert!(s.get_alert_rule("a1").await.expect("get").is_none());
    assert!(matches!(
        s.delete_alert_rule(&actor(), "a1", None).await,
        Err(StoreError::NotFound(_))
    ));
    let audit = s
        .list_audit(
            &AuditFilter {
                target_type: Some("alert_rule".into()),
                ..Default::default()
            },
            page(10, 0),
        )
        .await
        .expect("audit");
    let actions: Vec<&str> = audit.items.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        vec![
            "alert_rule.delete",
            "alert_rule.update",
            "alert_rule.create",
            "alert_rule.create"
        ]
    );
    assert_eq!(
        audit.items[1].before.as_ref().expect("before")["enabled"],
        true
    );
    assert_eq!(
        audit.items[1].after.as_ref().expect("after")["enabled"],
        false
    );
}

async fn one_active_incident_per_rule(s: &SqlStore) {
    let now = now_ms();
    let system = Actor::system();
    // Two managers see the rule fire at the same moment: exactly one incident opens.
    let (i1, i2) = (
        incident("i1", Some("r1"), Severity::Critical, now),
        incident("i2", Some("r1"), Severity::Critical, now),
    );
    let (x, y) = tokio::join!(
        s.create_incident(&system, &i1, &[]),
        s.create_incident(&system, &i2, &[])
    );
    let opened: Vec<&str> = [("i1", &x), ("i2", &y)]
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(opened.len(), 1, "{x:?} {y:?}");
    assert!(matches!(x, Err(StoreError::Conflict(_))) || matches!(y, Err(StoreError::Conflict(_))));
    let first = opened[0];
    let active = s
        .active_incident_of_rule("r1")
        .await
        .expect("active")
        .expect("one");
    assert_eq!(active.id, first);
    s.create_incident(&actor(), &incident("m0", None, Severity::Info, now), &[])
        .await
        .expect("manual");
    let all_active = s.active_rule_incidents().await.expect("active");
    assert_eq!(
        all_active.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        vec![first],
        "only incidents of rules"
    );
    // Acknowledged is still active.
    let mut acked = active.clone();
    acked.status = IncidentStatus::Acknowledged;
    acked.acknowledged_by = Some("alice".into());
    acked.acknowledged_at = Some(now + 1);
    let acked = s
        .update_incident(&actor(), &acked, Some(1), &[])
        .await
        .expect("ack");
    assert!(matches!(
        s.create_incident(
            &system,
            &incident("i3", Some("r1"), Severity::Warning, now),
            &[]
        )
        .await,
        Err(StoreError::Conflict(_))
    ));
    // Manual incidents (no rule) are not limited.
    for id in ["m1", "m2"] {
        s.create_incident(&actor(), &incident(id, None, Severity::Info, now), &[])
            .await
            .expect("manual");
    }
    // Resolving happens once, whoever tries.
    let (r1, r2) = tokio::join!(
        s.resolve_incident(&system, first, now + 2, "cleared"),
        s.resolve_incident(&system, first, now + 2, "cleared")
    );
    let (r1, r2) = (r1.expect("resolve"), r2.expect("resolve"));
    assert_eq!(
        usize::from(r1.is_some()) + usize::from(r2.is_some()),
        1,
        "{r1:?} {r2:?}"
    );
    let resolved = r1.or(r2).expect("resolved");
    assert_eq!(resolved.status, IncidentStatus::Resolved);
    assert_eq!(resolved.version, acked.version + 1);
    assert_eq!(
        (resolved.resolved_by.as_deref(), resolved.resolved_at),
        (Some("system"), Some(now + 2))
    );
    assert!(s
        .active_incident_of_rule("r1")
        .await
        .expect("none")
        .is_none());
    // The rule may fire again; the old incident can then not be reopened.
    s.create_incident(
        &system,
        &incident("i4", Some("r1"), Severity::Critical, now + 3),
        &[],
    )
    .await
    .expect("fires again");
    let mut reopen = resolved.clone();
    reopen.status = IncidentStatus::Open;
    reopen.resolved_at = None;
    reopen.resolved_by = None;
    assert!(matches!(
        s.update_incident(&actor(), &reopen, None, &[]).await,
        Err(StoreError::Conflict(_))
    ));
    s.resolve_incident(&system, "i4", now + 4, "cleared")
        .await
        .expect("resolve")
        .expect("was active");
    let reopened = s
        .update_incident(&actor(), &reopen, Some(resolved.version), &[])
        .await
        .expect("reopen once nothing else is active");
    assert_eq!(reopened.status, IncidentStatus::Open);
    let timeline = s.incident_timeline(first).await.expect("timeline");
    assert_eq!(
        timeline
            .iter()
            .map(|e| (e.kind, e.status, e.actor.as_deref()))
            .collect::<Vec<_>>(),
        vec![(
            TimelineKind::Status,
            Some(IncidentStatus::Resolved),
            Some("system")
        )],
        "one resolution entry"
    );
}

async fn incident_timelines_filters_and_deletion(s: &SqlStore) {
    let now = now_ms();
    let opened = vec![
        NewTimelineEntry::status(now, IncidentStatus::Open, "opened by rule r9", "system"),
        NewTimelineEntry::event(now - 10, 101, "proxy.upstream_error", "it's \"down\"", None),
        NewTimelineEntry::event(now - 5, 102, "proxy.upstream_error", "still down", None),
    ];
    s.create_incident(
        &Actor::system(),
        &incident("t1", Some("r9"), Severity::Critical, now),
        &opened,
    )
    .await
    .expect("create");
    // Linking the same events again (another manager, or an operator) adds nothing.
    let again = vec![
        NewTimelineEntry::event(now - 5, 102, "proxy.upstream_error", "still down", None),
        NewTimelineEntry::event(now + 1, 103, "proxy.timeout", "slow", Some("tester")),
    ];
    let (inc, added) = s
        .append_incident_timeline(&actor(), "t1", &again, Some("incident.link_event"))
        .await
        .expect("link");
    assert_eq!((added, inc.version), (1, 2));
    let (inc, added) = s
        .append_incident_timeline(&actor(), "t1", &again, Some("incident.link_event"))
        .await
        .expect("link again");
    assert_eq!(
        (added, inc.version),
        (0, 2),
        "nothing added, no new version"
    );
    let (inc, added) = s
        .append_incident_timeline(
            &actor(),
            "t1",
            &[NewTimelineEntry::note(
                now + 2,
                "looking; it's the DB",
                "tester",
            )],
            Some("incident.note"),
        )
        .await
        .expect("note");
    assert_eq!((added, inc.version, inc.updated_at), (1, 3, now + 2));
    assert!(matches!(
        s.append_incident_timeline(&actor(), "nope", &again, None)
            .await,
        Err(StoreError::NotFound(_))
    ));
    let timeline = s.incident_timeline("t1").await.expect("timeline");
    assert_eq!(
        timeline
            .iter()
            .map(|e| (e.kind, e.event_id))
            .collect::<Vec<_>>(),
        vec![
            (TimelineKind::Status, None),
            (TimelineKind::Event, Some(101)),
            (TimelineKind::Event, Some(102)),
            (TimelineKind::Event, Some(103)),
            (TimelineKind::Note, None),
        ]
    );
    assert_eq!(timeline[1].message, "it's \"down\"");
    assert_eq!(timeline[4].actor.as_deref(), Some("tester"));

    // Listing: newest first, filtered, paged.
    s.create_incident(
        &actor(),
        &incident("t2", None, Severity::Warning, now + 10),
        &[],
    )
    .await
    .expect("t2");
    s.create_incident(
        &actor(),
        &incident("t3", None, Severity::Critical, now + 20),
        &[],
    )
    .await
    .expect("t3");
    let mut t3 = s.get_incident("t3").await.expect("get").expect("t3");
    t3.status = IncidentStatus::Resolved;
    t3.resolved_at = Some(now + 21);
    t3.resolved_by = Some("tester".into());
    t3.title = "renamed".into();
    let t3 = s
        .update_incident(
            &actor(),
            &t3,
            Some(1),
            &[NewTimelineEntry::status(
                now + 21,
                IncidentStatus::Resolved,
                "fixed",
                "tester",
            )],
        )
        .await
        .expect("resolve t3");
    assert!(matches!(
        s.update_incident(&actor(), &t3, Some(1), &[]).await,
        Err(StoreError::VersionMismatch { current: 2 })
    ));
    let all = s
        .list_incidents(&IncidentFilter::default(), page(2, 0))
        .await
        .expect("list");
    assert_eq!(all.total, 3);
    assert_eq!(
        all.items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        vec!["t3", "t2"]
    );
    let critical_open = s
        .list_incidents(
            &IncidentFilter {
                status: Some(IncidentStatus::Open),
                severity: Some(Severity::Critical),
                ..Default::default()
            },
            page(10, 0),
        )
        .await
        .expect("filter");
    assert_eq!(
        critical_open
            .items
            .iter()
            .map(|i| i.id.as_str())
            .collect::<Vec<_>>(),
        vec!["t1"]
    );
    let of_rule = s
        .list_incidents(
            &IncidentFilter {
                rule_id: Some("r9".into()),
                ..Default::default()
            },
            page(10, 0),
        )
        .await
        .expect("by rule");
    assert_eq!(of_rule.total, 1);
    let injected = s
        .list_incidents(
            &IncidentFilter {
                rule_id: Some("' OR 1=1 --".into()),
                ..Default::default()
            },
            page(10, 0),
        )
        .await
        .expect("text");
    assert_eq!(injected.total, 0);

    // Deletion takes the timeline with it; audited throughout.
    assert!(matches!(
        s.delete_incident(&actor(), "t1", Some(1)).await,
        Err(StoreError::VersionMismatch { current: 3 })
    ));
    s.delete_incident(&actor(), "t1", Some(3))
        .await
        .expect("delete");
    assert!(s.get_incident("t1").await.expect("get").is_none());
    assert!(s
        .incident_timeline("t1")
        .await
        .expect("timeline")
        .is_empty());
    let audit = s
        .list_audit(
            &AuditFilter {
                target_type: Some("incident".into()),
                ..Default::default()
            },
            page(20, 0),
        )
        .await
        .expect("audit");
    let actions: Vec<&str> = audit.items.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        vec![
            "incident.delete",
            "incident.update",
            "incident.create",
            "incident.create",
            "incident.note",
            "incident.link_event",
            "incident.create"
        ]
    );
}

fn analysis(id: &str, incident_id: &str, at: i64, summary: &str) -> IncidentAnalysisRecord {
    IncidentAnalysisRecord {
        id: id.into(),
        incident_id: incident_id.into(),
        summary: summary.into(),
        probable_cause: "upstream 'api' refused connections".into(),
        suggested_actions: vec!["check the api pool".into(), "raise the timeout'; --".into()],
        provider_id: Some("p1".into()),
        provider_name: "openai".into(),
        model: "gpt-4.1-mini".into(),
        input_tokens: 1200,
        output_tokens: 80,
        context: json!({"events": 3, "routes": ["r1"]}),
        created_by: "tester".into(),
        created_at: at,
    }
}

async fn incident_analyses_are_kept_shown_and_audited(s: &SqlStore) {
    let now = now_ms();
    s.create_incident(
        &actor(),
        &incident("an1", None, Severity::Critical, now),
        &[],
    )
    .await
    .expect("create");
    // An incident that does not exist gets no analysis.
    assert!(matches!(
        s.record_incident_analysis(&actor(), &analysis("x0", "nope", now, "s"))
            .await,
        Err(StoreError::NotFound(_))
    ));
    let first = analysis("a1", "an1", now + 1, "first");
    let i = s
        .record_incident_analysis(&actor(), &first)
        .await
        .expect("record");
    assert_eq!(i.version, 2, "an analysis bumps the version");
    assert_eq!(i.analysis, Some(first.view()));
    let second = analysis("a2", "an1", now + 2, "second");
    s.record_incident_analysis(&actor(), &second)
        .await
        .expect("record");
    let i = s.get_incident("an1").await.expect("get").expect("incident");
    assert_eq!(
        i.analysis.as_ref().map(|a| a["summary"].clone()),
        Some(json!("second"))
    );
    assert_eq!((i.version, i.updated_at), (3, now + 2));
    // Every analysis is kept, oldest first, text verbatim.
    let all = s.incident_analyses("an1").await.expect("list");
    assert_eq!(all, vec![first, second]);
    // An update of the incident keeps the analysis.
    let mut changed = i.clone();
    changed.title = "renamed".into();
    let after = s
        .update_incident(&actor(), &changed, Some(3), &[])
        .await
        .expect("update");
    assert_eq!(after.analysis, i.analysis);
    // Audited, without the context sent.
    let audit = s
        .list_audit(
            &AuditFilter {
                action: Some("incident.analyze".into()),
                ..Default::default()
            },
            page(10, 0),
        )
        .await
        .expect("audit");
    assert_eq!(audit.items.len(), 2);
    let after = audit.items[0].after.clone().expect("after");
    assert_eq!(after["analysis"]["summary"], "second");
    assert!(after["analysis"].get("context").is_none());
    // Deleting the incident deletes its analyses.
    s.delete_incident(&actor(), "an1", None)
        .await
        .expect("delete");
    assert!(s.incident_analyses("an1").await.expect("list").is_empty());
}

fn node(id: &str, device_type: &str, token_hash: &str) -> NodeRecord {
    NodeRecord {
        id: id.into(),
        name: format!("node {id}"),
        description: None,
        device_type: device_type.into(),
        secret_hash: None,
        token_hash: Some(token_hash.into()),
        token_prefix: Some(token_hash.chars().take(8).collect()),
        token_expires_at: Some(now_ms() + 3_600_000),
        token_used_at: None,
        expires_at: None,
        metadata: json!({}),
        software_version: None,
        protocol_version: None,
        registered_at: None,
        last_seen_at: None,
        version: 1,
        created_at: now_ms(),
        updated_at: now_ms(),
    }
}

async fn nodes_crud_tokens_and_registration(s: &SqlStore) {
    let a = actor();
    s.create_node(&a, &node("n1", "edge", "hash-1"))
        .await
        .expect("create n1");
    s.create_node(&a, &node("n2", "relay", "hash-2"))
        .await
        .expect("create n2");
    s.create_node(&a, &node("n3", "edge", "hash-3"))
        .await
        .expect("create n3");
    assert!(matches!(
        s.create_node(&a, &node("n1", "edge", "hash-x")).await,
        Err(StoreError::Conflict(_))
    ));

    // Listing: by device type, by allowed ids, paginated.
    let all = s
        .list_nodes(&NodeFilter::default(), page(2, 0))
        .await
        .expect("list");
    assert_eq!((all.total, all.items.len()), (3, 2));
    let edges = s
        .list_nodes(
            &NodeFilter {
                device_type: Some("edge".into()),
                ids: None,
            },
            page(10, 0),
        )
        .await
        .expect("edges");
    assert_eq!(
        edges
            .items
            .iter()
            .map(|n| n.id.as_str())
            .collect::<Vec<_>>(),
        ["n1", "n3"]
    );
    let limited = s
        .list_nodes(
            &NodeFilter {
                device_type: None,
                ids: Some(vec!["n2".into(), "n3".into()]),
            },
            page(10, 0),
        )
        .await
        .expect("limited");
    assert_eq!(limited.total, 2);
    let none = s
        .list_nodes(
            &NodeFilter {
                device_type: None,
                ids: Some(vec![]),
            },
            page(10, 0),
        )
        .await
        .expect("none");
    assert_eq!(none.total, 0);

    // Update with versions; metadata round-trips.
    let mut n1 = s.get_node("n1").await.expect("get").expect("n1");
    n1.name = "renamed".into();
    n1.description = Some("rack 4".into());
    n1.metadata = json!({"site": "syd"});
    let updated = s.update_node(&a, &n1, Some(1)).await.expect("update");
    assert_eq!((updated.version, updated.name.as_str()), (2, "renamed"));
    assert!(matches!(
        s.update_node(&a, &n1, Some(1)).await,
        Err(StoreError::VersionMismatch { current: 2 })
    ));
    let again = s.get_node("n1").await.expect("get").expect("n1");
    assert_eq!(again.metadata, json!({"site": "syd"}));
    assert_eq!(
        again.token_hash.as_deref(),
        Some("hash-1"),
        "update keeps the token"
    );

    // Registration consumes the token once.
    let found = s
        .find_node_by_token("hash-1")
        .await
        .expect("find")
        .expect("by token");
    assert_eq!(found.id, "n1");
    let now = now_ms();
    let reg = s
        .register_node(&a, "n1", "hash-1", "secret-hash", now)
        .await
        .expect("register");
    assert_eq!(reg.secret_hash.as_deref(), Some("secret-hash"));
    assert_eq!(reg.token_used_at, Some(now));
    assert!(!reg.token_usable(now));
    assert!(matches!(
        s.register_node(&a, "n1", "hash-1", "other", now).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.register_node(&a, "n3", "wrong-hash", "other", now).await,
        Err(StoreError::Conflict(_))
    ));
    // An expired token does not register.
    assert!(matches!(
        s.register_node(&a, "n3", "hash-3", "other", now + 7_200_000)
            .await,
        Err(StoreError::Conflict(_))
    ));

    // A new token replaces the old one and is usable again; the secret stays.
    let t = s
        .set_node_token(&a, "n1", "hash-1b", "hash-1b-", None)
        .await
        .expect("token");
    assert!(t.token_usable(now));
    assert_eq!(t.secret_hash.as_deref(), Some("secret-hash"));
    assert!(s
        .find_node_by_token("hash-1")
        .await
        .expect("find")
        .is_none());

    s.node_seen("n1", now, Some("0.5.3"), Some(1))
        .await
        .expect("seen");
    s.node_seen("n1", now + 1, None, None)
        .await
        .expect("seen again");
    let seen = s.get_node("n1").await.expect("get").expect("n1");
    assert_eq!(seen.last_seen_at, Some(now + 1));
    assert_eq!(seen.software_version.as_deref(), Some("0.5.3"));
    assert_eq!(seen.protocol_version, Some(1));

    // Many at once: each row as node_seen would write it; unknown ids are skipped.
    let batch: Vec<NodeSeen> = ["n1", "n2", "gone"]
        .iter()
        .enumerate()
        .map(|(i, id)| NodeSeen {
            id: (*id).to_string(),
            at: now + 10 + i as i64,
            software_version: (i == 1).then(|| "0.6.0".to_string()),
            protocol_version: None,
        })
        .collect();
    s.nodes_seen(&batch).await.expect("seen in a batch");
    let n1 = s.get_node("n1").await.expect("get").expect("n1");
    assert_eq!(n1.last_seen_at, Some(now + 10));
    assert_eq!(n1.software_version.as_deref(), Some("0.5.3"));
    assert_eq!(n1.protocol_version, Some(1));
    let n2 = s.get_node("n2").await.expect("get").expect("n2");
    assert_eq!(n2.last_seen_at, Some(now + 11));
    assert_eq!(n2.software_version.as_deref(), Some("0.6.0"));

    s.delete_node(&a, "n2").await.expect("delete");
    assert!(s.get_node("n2").await.expect("get").is_none());
    assert!(matches!(
        s.delete_node(&a, "n2").await,
        Err(StoreError::NotFound(_))
    ));

    // Every change is audited, and no credential hash reaches the log.
    let audit = s
        .list_audit(
            &AuditFilter {
                target_type: Some("node".into()),
                ..Default::default()
            },
            page(100, 0),
        )
        .await
        .expect("audit");
    let actions: Vec<&str> = audit.items.iter().map(|e| e.action.as_str()).collect();
    for want in [
        "node.create",
        "node.update",
        "node.register",
        "node.token",
        "node.delete",
    ] {
        assert!(actions.contains(&want), "{want} missing from {actions:?}");
    }
    let text = format!("{:?}", audit.items);
    assert!(
        !text.contains("secret-hash") && !text.contains("hash-1b"),
        "{text}"
    );
}

fn presence(node_id: &str, replica: &str, conn_id: i64) -> NodePresence {
    NodePresence {
        node_id: node_id.into(),
        replica: replica.into(),
        conn_id,
        connected_at: now_ms(),
        peer: "192.0.2.1:5000".into(),
        protocol_version: Some(1),
    }
}

async fn fleet_presence_follows_live_replicas_and_samples_roll(s: &SqlStore) {
    let a = actor();
    let now = now_ms();
    for id in ["p1", "p2", "p3"] {
        s.create_node(&a, &node(id, "edge", &format!("hash-{id}")))
            .await
            .expect("create");
    }
    s.replica_alive("r-a", now - 1000, now)
        .await
        .expect("alive a");
    s.replica_alive("r-b", now - 1000, now - 60_000)
        .await
        .expect("alive b");
    s.node_connected(&presence("p1", "r-a", 1))
        .await
        .expect("p1");
    s.node_connected(&presence("p2", "r-b", 1))
        .await
        .expect("p2");
    assert_eq!(
        s.live_replicas(now - 30_000).await.expect("live replicas"),
        ["r-a"]
    );
    assert_eq!(
        s.live_replicas(now - 120_000).await.expect("all replicas"),
        ["r-a", "r-b"]
    );
    // Only presence on replicas seen since the cut-off counts.
    let live = s.node_presence(None, now - 30_000).await.expect("presence");
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].node_id, "p1");
    assert_eq!(live[0].replica, "r-a");
    assert!(s
        .node_presence(Some(&["p2".to_string(), "p3".to_string()]), now - 30_000)
        .await
        .expect("by id")
        .is_empty());
    assert!(s
        .node_presence(Some(&[]), 0)
        .await
        .expect("none asked")
        .is_empty());
    // A later connection on another replica replaces the first; the first one's
    // close then removes nothing.
    s.replica_alive("r-b", now - 1000, now)
        .await
        .expect("b back");
    s.node_connected(&presence("p1", "r-b", 7))
        .await
        .expect("moved");
    assert!(!s
        .node_disconnected("p1", "r-a", 1)
        .await
        .expect("stale close"));
    let p1 = s
        .node_presence(Some(&["p1".to_string()]), now - 30_000)
        .await
        .expect("p1");
    assert_eq!((p1[0].replica.as_str(), p1[0].conn_id), ("r-b", 7));
    assert!(s.node_disconnected("p1", "r-b", 7).await.expect("close"));
    // Batched: 450 nodes connect to r-b at once; then 300 of them go, and a node
    // held by r-a is not r-b's to remove.
    let ids: Vec<String> = (0..450).map(|i| format!("b{i:03}")).collect();
    let batch: Vec<NodePresence> = ids.iter().map(|id| presence(id, "r-b", 3)).collect();
    s.record_presence("r-b", &batch, &[]).await.expect("batch");
    s.node_connected(&presence("a1", "r-a", 1))
        .await
        .expect("a1");
    assert_eq!(
        s.node_presence(None, now - 30_000)
            .await
            .expect("all")
            .len(),
        452
    );
    let mut leaving: Vec<String> = ids[..300].to_vec();
    leaving.push("a1".into());
    s.record_presence("r-b", &[presence("b449", "r-b", 4)], &leaving)
        .await
        .expect("leave");
    let left = s.node_presence(None, now - 30_000).await.expect("left");
    assert_eq!(left.len(), 152, "150 of the batch, p2, and r-a's a1");
    assert!(left.iter().any(|p| p.node_id == "b449" && p.conn_id == 4));
    s.record_presence("r-b", &[], &ids).await.expect("all gone");
    s.record_presence("r-b", &[], &[]).await.expect("nothing");
    // A replica that stopped announcing itself is pruned with its nodes' presence.
    s.replica_alive("r-b", now - 1000, now - 120_000)
        .await
        .expect("b stale");
    assert_eq!(s.prune_replicas(now - 60_000).await.expect("prune"), 1);
    s.record_presence("r-a", &[], &["a1".to_string()])
        .await
        .expect("a1 gone");
    assert!(s
        .node_presence(None, 0)
        .await
        .expect("after prune")
        .is_empty());

    // Samples: replaced per (node, resolution, interval), read in a window, pruned by age.
    let sample = |node: &str, res: i64, ts: i64, v: f64| NodeSample {
        node_id: node.into(),
        resolution: res,
        ts,
        metrics: json!({"active_flows": {"avg": v, "min": v, "max": v, "last": v, "n": 1}}),
    };
    let many: Vec<NodeSample> = (0..450)
        .map(|i| sample("p1", 60, i * 60_000, i as f64))
        .chain([sample("p2", 60, 0, 9.0), sample("p1", 3600, 0, 1.0)])
        .collect();
    s.record_node_samples(&many).await.expect("record");
    s.record_node_samples(&[sample("p1", 60, 60_000, 42.0)])
        .await
        .expect("replace");
    let got = s.node_samples("p1", 60, 0, 180_000).await.expect("window");
    assert_eq!(
        got.iter().map(|x| x.ts).collect::<Vec<_>>(),
        [0, 60_000, 120_000]
    );
    assert_eq!(got[1].metrics["active_flows"]["last"], 42.0);
    assert_eq!(
        s.node_samples("p1", 60, 0, i64::MAX)
            .await
            .expect("all")
            .len(),
        450
    );
    assert_eq!(
        s.prune_node_samples(60, 100 * 60_000)
            .await
            .expect("prune samples"),
        101,
        "p1's first 100 and p2's one"
    );
    assert_eq!(
        s.node_samples("p1", 3600, 0, i64::MAX)
            .await
            .expect("hour")
            .len(),
        1
    );
    // A deleted node takes its presence and samples with it.
    s.replica_alive("r-a", now - 1000, now)
        .await
        .expect("alive a");
    s.node_connected(&presence("p1", "r-a", 2))
        .await
        .expect("p1 again");
    s.delete_node(&a, "p1").await.expect("delete");
    assert!(s.node_presence(None, 0).await.expect("presence").is_empty());
    assert!(s
        .node_samples("p1", 60, 0, i64::MAX)
        .await
        .expect("gone")
        .is_empty());
}

fn tunnel(id: &str, ingress: &str, egress: &str, relay: Option<&str>) -> TunnelRecord {
    TunnelRecord {
        id: id.into(),
        name: format!("tunnel {id}"),
        protocol: "tcp".into(),
        mode: if relay.is_some() { "relay" } else { "direct" }.into(),
        ingress_node_id: ingress.into(),
        ingress_listen_port: 9000,
        egress_node_id: egress.into(),
        egress_forward_addr: "127.0.0.1:22".into(),
        egress_peer_addr: relay.is_none().then(|| "198.51.100.7:4444".to_string()),
        relay_addr: relay.map(|_| "198.51.100.9:4433".to_string()),
        relay_node_id: relay.map(str::to_string),
        enabled: true,
        associated_flow_ids: json!(["f1"]),
        secrets_sealed: "sealed-secret-material".into(),
        ingress: LegState::pending(),
        egress: LegState::pending(),
        relay: relay.map(|_| LegState::pending()),
        version: 1,
        created_at: now_ms(),
        updated_at: now_ms(),
    }
}

async fn tunnels_crud_legs_and_audit_without_secrets(s: &SqlStore) {
    let a = actor();
    let t1 = tunnel("t1", "e1", "e2", Some("r1"));
    s.create_tunnel(&a, &t1).await.expect("create");
    s.create_tunnel(&a, &tunnel("t2", "e3", "e2", None))
        .await
        .expect("create direct");
    assert!(matches!(
        s.create_tunnel(&a, &t1).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.get_tunnel("t1").await.expect("get"), Some(t1.clone()));
    let listed = s.list_tunnels(page(1, 1)).await.expect("list");
    assert_eq!((listed.total, listed.items[0].id.as_str()), (2, "t2"));
    let of_e2: Vec<String> = s
        .tunnels_of_node("e2")
        .await
        .expect("of e2")
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(of_e2, ["t1", "t2"]);
    assert_eq!(s.tunnels_of_node("r1").await.expect("of r1").len(), 1);

    s.set_tunnel_leg(
        "t1",
        Leg::Relay,
        &LegState {
            status: "failed".into(),
            error: Some("relay not connected".into()),
        },
    )
    .await
    .expect("leg");
    s.set_tunnel_leg(
        "t1",
        Leg::Ingress,
        &LegState {
            status: "pushed".into(),
            error: None,
        },
    )
    .await
    .expect("leg");
    let got = s.get_tunnel("t1").await.expect("get").expect("t1");
    assert_eq!(got.ingress.status, "pushed");
    assert_eq!(
        got.relay.as_ref().and_then(|l| l.error.as_deref()),
        Some("relay not connected")
    );
    assert_eq!(got.version, 1, "leg states are not edits");

    let mut edit = got.clone();
    edit.name = "renamed".into();
    edit.enabled = false;
    let saved = s.update_tunnel(&a, &edit, Some(1)).await.expect("update");
    assert_eq!(
        (saved.version, saved.name.as_str(), saved.enabled),
        (2, "renamed", false)
    );
    assert!(matches!(
        s.update_tunnel(&a, &edit, Some(1)).await,
        Err(StoreError::VersionMismatch { current: 2 })
    ));
    let gone = s.delete_tunnel(&a, "t1").await.expect("delete");
    assert_eq!(gone.name, "renamed");
    assert!(s.get_tunnel("t1").await.expect("get").is_none());
    assert!(matches!(
        s.delete_tunnel(&a, "t1").await,
        Err(StoreError::NotFound(_))
    ));
    let audit = s
        .list_audit(
            &AuditFilter {
                target_type: Some("tunnel".into()),
                ..Default::default()
            },
            page(100, 0),
        )
        .await
        .expect("audit");
    assert_eq!(audit.items.len(), 4, "create ×2, update, delete");
    assert!(!format!("{:?}", audit.items).contains("sealed-secret-material"));
}

async fn events_of_limited_callers(s: &SqlStore) {
    let mk = |node: Option<&str>| {
        let mut e = NewEvent::new("node.event", Severity::Info, "m");
        e.node_id = node.map(str::to_string);
        e
    };
    let batch = [mk(Some("n1")), mk(Some("n2")), mk(None)];
    s.insert_events(&batch).await.expect("insert");
    for (ids, want) in [
        (vec!["n1".to_string()], 2),
        (vec![], 1),
        (vec!["n1".into(), "n2".into()], 3),
    ] {
        let f = EventFilter {
            node_ids: Some(ids.clone()),
            ..Default::default()
        };
        assert_eq!(
            s.list_events(&f, page(10, 0)).await.expect("list").total,
            want,
            "{ids:?}"
        );
        // The live rule agrees with the stored one.
        assert_eq!(
            batch.iter().filter(|e| f.accepts(e, false)).count() as i64,
            want,
            "{ids:?}"
        );
    }
}

/// No two tunnels listen on one port of one node, whatever the order or overlap
/// of their writes; a refused write changes nothing and names the holder.
async fn tunnel_listens_are_claimed_once(s: &SqlStore) {
    let a = actor();
    let clash = |r: Result<(), StoreError>| match r {
        Err(StoreError::Conflict(m)) => m,
        other => panic!("expected a listen clash, got {other:?}"),
    };
    s.create_tunnel(&a, &tunnel("a", "e1", "e2", Some("r1")))
        .await
        .expect("a");
    let mut b = tunnel("b", "e1", "e3", Some("r1"));
    let m = clash(s.create_tunnel(&a, &b).await);
    assert!(
        m.contains("e1") && m.contains("tcp port 9000") && m.contains("tunnel a"),
        "{m}"
    );
    assert!(
        s.get_tunnel("b").await.expect("get").is_none(),
        "nothing half-written"
    );
    // UDP on that port is another listener.
    b.protocol = "udp".into();
    s.create_tunnel(&a, &b).await.expect("b on udp");
    // An update onto a held port is refused and leaves the tunnel as it was.
    let mut onto = b.clone();
    onto.protocol = "tcp".into();
    let m = match s.update_tunnel(&a, &onto, Some(1)).await {
        Err(StoreError::Conflict(m)) => m,
        other => panic!("expected a clash, got {other:?}"),
    };
    assert!(m.contains("tunnel a"), "{m}");
    let kept = s.get_tunnel("b").await.expect("get").expect("b");
    assert_eq!((kept.version, kept.protocol.as_str()), (1, "udp"));
    // A disabled tunnel keeps its port; a deleted one frees it.
    let mut off = s.get_tunnel("a").await.expect("get").expect("a");
    off.enabled = false;
    s.update_tunnel(&a, &off, None).await.expect("disable");
    clash(
        s.create_tunnel(&a, &tunnel("c", "e1", "e4", Some("r1")))
            .await,
    );
    s.delete_tunnel(&a, "a").await.expect("delete");
    s.update_tunnel(&a, &onto, Some(1))
        .await
        .expect("b onto the freed port");
    // Moving frees the old port at once.
    let mut moved = s.get_tunnel("b").await.expect("get").expect("b");
    moved.ingress_listen_port = 9001;
    s.update_tunnel(&a, &moved, None).await.expect("move");
    s.create_tunnel(&a, &tunnel("c", "e1", "e4", Some("r1")))
        .await
        .expect("c on the port b left");
    // A direct tunnel's exit edge listens for QUIC (UDP) on its peer port.
    s.create_tunnel(&a, &tunnel("d", "e5", "e6", None))
        .await
        .expect("direct");
    let mut on_peer = tunnel("e", "e6", "e7", Some("r1"));
    on_peer.protocol = "udp".into();
    on_peer.ingress_listen_port = 4444;
    let m = clash(s.create_tunnel(&a, &on_peer).await);
    assert!(m.contains("udp port 4444") && m.contains("tunnel d"), "{m}");
    // Ten writers at once for one port: exactly one wins.
    let racers = (0..10).map(|i| {
        let a = a.clone();
        async move {
            let mut t = tunnel(&format!("race{i}"), "e8", "e9", Some("r1"));
            t.ingress_listen_port = 7000;
            s.create_tunnel(&a, &t).await
        }
    });
    let results = futures::future::join_all(racers).await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{results:?}");
    assert!(results
        .iter()
        .all(|r| r.is_ok() || matches!(r, Err(StoreError::Conflict(_)))));
    let of_e8 = s.tunnels_of_node("e8").await.expect("of e8");
    assert_eq!(of_e8.len(), 1);
}

fn ai_provider(id: &str, name: &str, is_default: bool) -> AiProviderRecord {
    AiProviderRecord {
        id: id.into(),
        name: name.into(),
        kind: "openai".into(),
        base_url: Some("http://127.0.0.1:9/v1".into()),
        api_key_sealed: Some("v1:sealed-provider-key".into()),
        api_key_hint: Some("sk-…abcd".into()),
        default_model: "gpt-4o-mini".into(),
        max_tokens: 1024,
        temperature: 0.25,
        timeout_ms: 60_000,
        enabled: true,
        is_default,
        version: 1,
        created_at: now_ms(),
        updated_at: now_ms(),
    }
}

async fn ai_providers_crud_default_and_audit_without_keys(s: &SqlStore) {
    let a = actor();
    let p1 = ai_provider("p1", "openai", true);
    s.create_ai_provider(&a, &p1).await.expect("create");
    assert_eq!(
        s.get_ai_provider("p1").await.expect("get"),
        Some(p1.clone())
    );
    // Ids and names are unique.
    assert!(matches!(
        s.create_ai_provider(&a, &ai_provider("p1", "other", false))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.create_ai_provider(&a, &ai_provider("p9", "openai", false))
            .await,
        Err(StoreError::Conflict(_))
    ));
    // A second default takes the mark from the first, whose version goes up.
    let mut p2 = ai_provider("p2", "anthropic", true);
    p2.kind = "anthropic".into();
    p2.base_url = None;
    p2.api_key_sealed = None;
    p2.api_key_hint = None;
    s.create_ai_provider(&a, &p2).await.expect("create p2");
    let listed = s.list_ai_providers().await.expect("list");
    assert_eq!(
        listed
            .iter()
            .map(|p| (p.id.as_str(), p.is_default, p.version))
            .collect::<Vec<_>>(),
        [("p1", false, 2), ("p2", true, 1)]
    );
    assert_eq!(listed[1], p2, "no key: stored as none");

    let mut edit = listed[0].clone();
    edit.is_default = true;
    edit.api_key_sealed = Some("v1:another-sealed-key".into());
    edit.temperature = 1.5;
    edit.name = "anthropic".into();
    assert!(
        matches!(
            s.update_ai_provider(&a, &edit, Some(2)).await,
            Err(StoreError::Conflict(_))
        ),
        "the name is p2's"
    );
    edit.name = "openai-main".into();
    assert!(matches!(
        s.update_ai_provider(&a, &edit, Some(1)).await,
        Err(StoreError::VersionMismatch { current: 2 })
    ));
    let saved = s
        .update_ai_provider(&a, &edit, Some(2))
        .await
        .expect("update");
    assert_eq!((saved.version, saved.temperature), (3, 1.5));
    let p2_now = s.get_ai_provider("p2").await.expect("get").expect("p2");
    assert!(!p2_now.is_default);
    assert_eq!(p2_now.version, 2);
    assert!(matches!(
        s.update_ai_provider(&a, &ai_provider("nope", "x", false), None)
            .await,
        Err(StoreError::NotFound(_))
    ));

    let gone = s.delete_ai_provider(&a, "p1").await.expect("delete");
    assert_eq!(gone.name, "openai-main");
    assert!(s.get_ai_provider("p1").await.expect("get").is_none());
    assert!(matches!(
        s.delete_ai_provider(&a, "p1").await,
        Err(StoreError::NotFound(_))
    ));
    let audit = s
        .list_audit(
            &AuditFilter {
                target_type: Some("ai_provider".into()),
                ..Default::default()
            },
            page(100, 0),
        )
        .await
        .expect("audit");
    assert_eq!(audit.items.len(), 4, "create ×2, update, delete");
    let text = format!("{:?}", audit.items);
    assert!(!text.contains("sealed"), "{text}");
    assert!(text.contains("sk-…abcd"));
    let update = audit
        .items
        .iter()
        .find(|e| e.action == "ai_provider.update")
        .expect("update entry");
    assert_eq!(
        update.after.as_ref().map(|v| v["api_key_changed"].clone()),
        Some(json!(true))
    );
}

async fn ai_preferences_follow_their_providers_and_users(s: &SqlStore) {
    let a = actor();
    s.create_ai_provider(&a, &ai_provider("p1", "one", false))
        .await
        .expect("p1");
    s.create_ai_provider(&a, &ai_provider("p2", "two", false))
        .await
        .expect("p2");
    s.create_user(&a, &user("u1", "alice", Role::Operator))
        .await
        .expect("user");
    let empty = s.get_ai_preferences("u1").await.expect("get");
    assert_eq!(
        (empty.version, empty.provider_id, empty.models.len()),
        (0, None, 0)
    );

    let mut prefs = AiPreferencesRecord {
        owner_id: "u1".into(),
        provider_id: Some("p1".into()),
        models: [
            ("p1".to_string(), "gpt-4.1".to_string()),
            ("p2".to_string(), "o3".to_string()),
        ]
        .into(),
        version: 0,
        updated_at: now_ms(),
    };
    let saved = s
        .put_ai_preferences(&a, &prefs, Some(0))
        .await
        .expect("put");
    assert_eq!(saved.version, 1);
    assert_eq!(s.get_ai_preferences("u1").await.expect("get"), saved);
    assert!(matches!(
        s.put_ai_preferences(&a, &prefs, Some(0)).await,
        Err(StoreError::VersionMismatch { current: 1 })
    ));
    prefs.provider_id = Some("missing".into());
    assert!(matches!(
        s.put_ai_preferences(&a, &prefs, None).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(s.get_ai_preferences("u1").await.expect("get").version, 1);
    // An owner's preferences are theirs alone.
    let other = AiPreferencesRecord {
        owner_id: "key:k1".into(),
        provider_id: Some("p2".into()),
        ..Default::default()
    };
    s.put_ai_preferences(&a, &other, None).await.expect("other");

    // Deleting a provider drops what named it.
    s.delete_ai_provider(&a, "p1").await.expect("delete p1");
    let after = s.get_ai_preferences("u1").await.expect("get");
    assert_eq!(after.provider_id, None);
    assert_eq!(after.models, [("p2".to_string(), "o3".to_string())].into());
    // Deleting the user drops the user's preferences, not others'.
    s.delete_user(&a, "u1", None).await.expect("delete user");
    assert_eq!(s.get_ai_preferences("u1").await.expect("get").version, 0);
    assert_eq!(
        s.get_ai_preferences("key:k1")
            .await
            .expect("get")
            .provider_id
            .as_deref(),
        Some("p2")
    );
    let audit = s
        .list_audit(
            &AuditFilter {
                target_type: Some("ai_preferences".into()),
                ..Default::default()
            },
            page(100, 0),
        )
        .await
        .expect("audit");
    assert_eq!(audit.items.len(), 2);
}

fn agent_record(id: &str, name: &str) -> AiAgentRecord {
    let now = now_ms();
    AiAgentRecord {
        id: id.into(),
        name: name.into(),
        description: "answers questions".into(),
        tags: vec!["ops".into()],
        status: "draft".into(),
        promoted_version: 0,
        latest_version: 0,
        promotions: Vec::new(),
        split: None,
        budget: None,
        max_steps: 8,
        version: 1,
        created_at: now,
        updated_at: now,
    }
}

fn agent_version(model: &str) -> AgentVersionRecord {
    AgentVersionRecord {
        agent_id: String::new(),
        number: 0,
        provider_id: None,
        model: model.into(),
        system_prompt: "be brief".into(),
        tools: vec!["lookup".into()],
        created_by: "tester".into(),
        created_at: now_ms(),
    }
}

async fn agents_versions_promotions_and_audit(s: &SqlStore) {
    let a = actor();
    let created = s
        .create_ai_agent(&a, &agent_record("ag1", "helper"), &agent_version("m-1"))
        .await
        .expect("create");
    assert_eq!(
        (
            created.promoted_version,
            created.latest_version,
            created.promotions.clone()
        ),
        (1, 1, vec![1])
    );
    assert!(matches!(
        s.create_ai_agent(&a, &agent_record("ag2", "helper"), &agent_version("m"))
            .await,
        Err(StoreError::Conflict(_))
    ));
    // A new version, not promoted; then one promoted.
    let mut edited = created.clone();
    edited.tags = vec!["ops".into(), "beta".into()];
    let v2 = s
        .update_ai_agent(
            &a,
            "agent.update",
            &edited,
            Some(&agent_version("m-2")),
            false,
            Some(1),
        )
        .await
        .expect("v2");
    assert_eq!(
        (v2.latest_version, v2.promoted_version, v2.version),
        (2, 1, 2)
    );
    let v3 = s
        .update_ai_agent(
            &a,
            "agent.update",
            &v2,
            Some(&agent_version("m-3")),
            true,
            None,
        )
        .await
        .expect("v3");
    assert_eq!((v3.latest_version, v3.promoted_version), (3, 3));
    assert_eq!(v3.promotions, vec![1, 3]);
    // A stale version is refused.
    assert!(matches!(
        s.update_ai_agent(&a, "agent.update", &v3, None, false, Some(1))
            .await,
        Err(StoreError::VersionMismatch { current: 3 })
    ));
    let mut split = v3.clone();
    split.split = Some(AgentSplit {
        a: 1,
        b: 3,
        percent_b: 25,
    });
    split.budget = Some(AgentBudget {
        period: "day".into(),
        limit_micro_usd: 5_000,
    });
    let saved = s
        .update_ai_agent(&a, "agent.split", &split, None, false, None)
        .await
        .expect("split");
    assert_eq!(
        s.get_ai_agent("ag1").await.expect("get"),
        Some(saved.clone())
    );
    let versions = s.list_ai_agent_versions("ag1").await.expect("versions");
    assert_eq!(
        versions
            .iter()
            .map(|v| (v.number, v.model.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, "m-1"), (2, "m-2"), (3, "m-3")]
    );
    assert_eq!(
        s.get_ai_agent_version("ag1", 2)
            .await
            .expect("v")
            .map(|v| v.tools),
        Some(vec!["lookup".to_string()])
    );
    assert!(s.get_ai_agent_version("ag1", 9).await.expect("v").is_none());
    let listed = s.list_ai_agents(page(10, 0)).await.expect("list");
    assert_eq!((listed.total, listed.items.len()), (1, 1));
    // Every change was audited.
    let audit = s
        .list_audit(&AuditFilter::default(), page(50, 0))
        .await
        .expect("audit");
    let actions: Vec<&str> = audit.items.iter().map(|e| e.action.as_str()).collect();
    for want in ["agent.create", "agent.update", "agent.split"] {
        assert!(actions.contains(&want), "{want} in {actions:?}");
    }
    s.delete_ai_agent(&a, "ag1").await.expect("delete");
    assert!(s.get_ai_agent("ag1").await.expect("get").is_none());
    assert!(s.list_ai_agent_versions("ag1").await.expect("v").is_empty());
}

async fn agent_tools_keep_header_values_out_of_the_audit(s: &SqlStore) {
    let a = actor();
    let now = now_ms();
    let tool = AgentToolRecord {
        id: "t1".into(),
        name: "lookup".into(),
        description: "Looks a host up".into(),
        url: "https://tools.example.test/lookup".into(),
        method: "POST".into(),
        input_schema: json!({"type": "object", "required": ["host"]}),
        timeout_ms: 5000,
        headers: vec![("authorization".into(), "SEALED-VALUE-123".into())],
        version: 1,
        created_at: now,
        updated_at: now,
    };
    s.create_agent_tool(&a, &tool).await.expect("create");
    assert_eq!(
        s.get_agent_tool("t1").await.expect("get"),
        Some(tool.clone())
    );
    assert_eq!(
        s.get_agent_tool_by_name("lookup")
            .await
            .expect("by name")
            .map(|t| t.id),
        Some("t1".to_string())
    );
    let dup = AgentToolRecord {
        id: "t2".into(),
        ..tool.clone()
    };
    assert!(matches!(
        s.create_agent_tool(&a, &dup).await,
        Err(StoreError::Conflict(_))
    ));
    let mut changed = tool.clone();
    changed.headers = vec![("authorization".into(), "SEALED-OTHER".into())];
    let after = s
        .update_agent_tool(&a, &changed, Some(1))
        .await
        .expect("update");
    assert_eq!(after.version, 2);
    assert!(matches!(
        s.update_agent_tool(&a, &changed, Some(1)).await,
        Err(StoreError::VersionMismatch { current: 2 })
    ));
    assert_eq!(s.list_agent_tools().await.expect("list").len(), 1);
    s.delete_agent_tool(&a, "t1").await.expect("delete");
    let audit = s
        .list_audit(&AuditFilter::default(), page(50, 0))
        .await
        .expect("audit");
    let text = format!("{:?}", audit.items);
    assert!(text.contains("agent_tool.update") && text.contains("headers_changed"));
    assert!(
        !text.contains("SEALED-"),
        "a header value reached the audit log"
    );
}

async fn mcp_servers_keep_secret_values_out_of_the_audit(s: &SqlStore) {
    let a = actor();
    let now = now_ms();
    let server = McpServerRecord {
        id: "m1".into(),
        name: "files".into(),
        description: "Reads files".into(),
        transport: "stdio".into(),
        command: "node".into(),
        args: vec!["server.mjs".into(), "--root=/srv".into()],
        env: vec![("API_TOKEN".into(), "SEALED-ENV-1".into())],
        url: String::new(),
        headers: Vec::new(),
        allow: vec!["read_*".into(), "list".into()],
        deny: vec!["read_secret".into()],
        timeout_ms: 5000,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    s.create_mcp_server(&a, &server).await.expect("create");
    assert_eq!(
        s.get_mcp_server("m1").await.expect("get"),
        Some(server.clone())
    );
    assert_eq!(
        s.get_mcp_server_by_name("files")
            .await
            .expect("by name")
            .map(|m| m.id),
        Some("m1".to_string())
    );
    let dup = McpServerRecord {
        id: "m2".into(),
        ..server.clone()
    };
    assert!(matches!(
        s.create_mcp_server(&a, &dup).await,
        Err(StoreError::Conflict(_))
    ));
    let web = McpServerRecord {
        id: "m3".into(),
        name: "web".into(),
        transport: "http".into(),
        command: String::new(),
        args: Vec::new(),
        env: Vec::new(),
        url: "https://mcp.example.test/mcp".into(),
        headers: vec![("authorization".into(), "SEALED-HEADER-1".into())],
        ..server.clone()
    };
    s.create_mcp_server(&a, &web).await.expect("create http");
    let mut changed = server.clone();
    changed.env = vec![("API_TOKEN".into(), "SEALED-ENV-2".into())];
    changed.deny.push("write_*".into());
    let after = s
        .update_mcp_server(&a, &changed, Some(1))
        .await
        .expect("update");
    assert_eq!(after.version, 2);
    assert_eq!(after.deny, vec!["read_secret", "write_*"]);
    assert!(matches!(
        s.update_mcp_server(&a, &changed, Some(1)).await,
        Err(StoreError::VersionMismatch { current: 2 })
    ));
    let renamed = McpServerRecord {
        name: "web".into(),
        ..after.clone()
    };
    assert!(matches!(
        s.update_mcp_server(&a, &renamed, None).await,
        Err(StoreError::Conflict(_))
    ));
    let names: Vec<String> = s
        .list_mcp_servers()
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["files", "web"]);
    s.delete_mcp_server(&a, "m1").await.expect("delete");
    assert!(s.get_mcp_server("m1").await.expect("get").is_none());
    assert!(matches!(
        s.delete_mcp_server(&a, "m1").await,
        Err(StoreError::NotFound(_))
    ));
    let audit = s
        .list_audit(&AuditFilter::default(), page(50, 0))
        .await
        .expect("audit");
    let text = format!("{:?}", audit.items);
    for want in [
        "mcp_server.create",
        "mcp_server.update",
        "mcp_server.delete",
        "env_changed",
    ] {
        assert!(text.contains(want), "{want} in the audit log");
    }
    assert!(
        !text.contains("SEALED-"),
        "an environment or header value reached the audit log"
    );
}

async fn agent_budget_reservations_never_pass_the_limit(s: &SqlStore) {
    let a = actor();
    s.create_ai_agent(&a, &agent_record("ag1", "capped"), &agent_version("m"))
        .await
        .expect("agent");
    let now = now_ms();
    let mut r1 = AgentRunRecord {
        id: "r1".into(),
        agent_id: "ag1".into(),
        agent_version: 1,
        split_arm: None,
        run_key: None,
        trigger: "api".into(),
        schedule_id: None,
        status: "running".into(),
        input: "go".into(),
        output: None,
        error: None,
        error_code: None,
        steps: 0,
        input_tokens: 0,
        output_tokens: 0,
        cost_micro_usd: 0,
        started_at: now,
        finished_at: None,
        created_by: "tester".into(),
    };
    s.start_agent_run(&a, &r1).await.expect("start");
    let hold = |id: String, amount: i64, at: i64, ttl: i64| AgentReservation {
        id,
        agent_id: "ag1".into(),
        run_id: "r1".into(),
        amount_micro_usd: amount,
        created_at: at,
        expires_at: at + ttl,
    };
    // Forty calls racing for 100 each under a limit of 1,000: exactly ten
    // are held, never more.
    let racers = (0..40).map(|i| {
        let r = hold(format!("h{i}"), 100, now, 60_000);
        async move { (r.id.clone(), s.reserve_agent_budget(&r, 0, 1000).await) }
    });
    let decided = futures::future::join_all(racers).await;
    let held: Vec<String> = decided
        .iter()
        .filter(|(_, d)| matches!(d, Ok(AgentReserve::Reserved { .. })))
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(held.len(), 10, "{decided:?}");
    assert!(decided.iter().all(|(_, d)| d.is_ok()), "{decided:?}");
    assert_eq!(s.agent_reserved("ag1", now).await.expect("reserved"), 1000);
    assert_eq!(
        s.reserve_agent_budget(&hold("late".into(), 1, now, 60_000), 0, 1000)
            .await
            .expect("reserve"),
        AgentReserve::Refused {
            spent: 0,
            reserved: 1000
        }
    );
    // Settling one to a real cost of 40 records the cost and frees the rest.
    assert!(s
        .settle_agent_reservation(&held[0], "r1", 100, 10, 40)
        .await
        .expect("settle"));
    assert_eq!(s.agent_spend_since("ag1", 0).await.expect("spend"), 40);
    assert_eq!(s.agent_reserved("ag1", now).await.expect("reserved"), 900);
    assert!(matches!(
        s.reserve_agent_budget(&hold("x61".into(), 61, now, 60_000), 0, 1000)
            .await
            .expect("reserve"),
        AgentReserve::Refused {
            spent: 40,
            reserved: 900
        }
    ));
    assert_eq!(
        s.reserve_agent_budget(&hold("x60".into(), 60, now, 60_000), 0, 1000)
            .await
            .expect("reserve"),
        AgentReserve::Reserved {
            spent: 40,
            reserved: 900
        }
    );
    // A failed call's release frees its hold once.
    assert!(s
        .release_agent_reservation(&held[1])
        .await
        .expect("release"));
    assert!(!s.release_agent_reservation(&held[1]).await.expect("again"));
    assert!(!s
        .settle_agent_reservation(&held[1], "r1", 0, 0, 40)
        .await
        .expect("settle gone"));
    assert_eq!(s.agent_reserved("ag1", now).await.expect("reserved"), 860);
    // A spend before `since` (an earlier period) does not count.
    assert_eq!(
        s.reserve_agent_budget(&hold("p".into(), 140, now, 60_000), now + 1, 1000)
            .await
            .expect("reserve"),
        AgentReserve::Reserved {
            spent: 0,
            reserved: 860
        }
    );
    // Reservations past their expiry (a replica that stopped mid-call) are
    // counted no more and are reclaimed by the next reservation.
    let later = now + 60_001;
    assert_eq!(s.agent_reserved("ag1", later).await.expect("reserved"), 0);
    assert_eq!(
        s.reserve_agent_budget(&hold("after".into(), 960, later, 1000), 0, 1000)
            .await
            .expect("reserve"),
        AgentReserve::Reserved {
            spent: 40,
            reserved: 0
        }
    );
    assert!(
        !s.release_agent_reservation(&held[2]).await.expect("gone"),
        "reclaimed"
    );
    assert_eq!(s.agent_reserved("ag1", later).await.expect("reserved"), 960);
    // No reservation of a negative amount, nor of an agent that does not exist.
    assert!(matches!(
        s.reserve_agent_budget(&hold("neg".into(), -1, later, 1000), 0, 1000)
            .await,
        Err(StoreError::Invalid(_))
    ));
    let mut ghost = hold("ghost".into(), 1, later, 1000);
    ghost.agent_id = "nope".into();
    assert!(matches!(
        s.reserve_agent_budget(&ghost, 0, 1000).await,
        Err(StoreError::NotFound(_))
    ));
    // A settlement after the run finished records no cost (the run holds its own).
    r1.status = "failed".into();
    r1.cost_micro_usd = 40;
    r1.finished_at = Some(later);
    s.finish_agent_run(&r1, &[]).await.expect("finish");
    assert!(s
        .settle_agent_reservation("after", "r1", 0, 0, 5000)
        .await
        .expect("settle"));
    assert_eq!(s.agent_spend_since("ag1", 0).await.expect("spend"), 40);
    // Deleting the agent takes its reservations.
    s.reserve_agent_budget(&hold("last".into(), 10, later, 1000), 0, 1000)
        .await
        .expect("reserve");
    s.delete_ai_agent(&a, "ag1").await.expect("delete");
    assert_eq!(s.agent_reserved("ag1", later).await.expect("reserved"), 0);
}

async fn agent_runs_steps_and_spend(s: &SqlStore) {
    let a = actor();
    s.create_ai_agent(&a, &agent_record("ag1", "runner"), &agent_version("m"))
        .await
        .expect("agent");
    let now = now_ms();
    let run = |id: &str, started_at: i64| AgentRunRecord {
        id: id.into(),
        agent_id: "ag1".into(),
        agent_version: 1,
        split_arm: None,
        run_key: Some("k".into()),
        trigger: "api".into(),
        schedule_id: None,
        status: "running".into(),
        input: "hello".into(),
        output: None,
        error: None,
        error_code: None,
        steps: 0,
        input_tokens: 0,
        output_tokens: 0,
        cost_micro_usd: 0,
        started_at,
        finished_at: None,
        created_by: "tester".into(),
    };
    s.start_agent_run(&a, &run("r1", now - 1000))
        .await
        .expect("start");
    let step = |seq: i64, kind: &str, cost: i64| AgentStepRecord {
        run_id: "r1".into(),
        seq,
        kind: kind.into(),
        name: "x".into(),
        status: "ok".into(),
        provider: Some("openai".into()),
        model: Some("m".into()),
        call_id: None,
        input: json!({"messages": ["ʕ•ᴥ•ʔ 'quoted' \"x\""]}),
        output: json!({"text": "done"}),
        error: None,
        input_tokens: 10,
        output_tokens: 5,
        cost_micro_usd: cost,
        latency_ms: 3,
        started_at: now,
    };
    let steps = vec![
        step(1, "model", 120),
        step(2, "tool", 0),
        step(3, "model", 80),
    ];
    let mut done = run("r1", now - 1000);
    done.status = "succeeded".into();
    done.output = Some("done".into());
    done.steps = 3;
    done.cost_micro_usd = 200;
    done.finished_at = Some(now);
    s.finish_agent_run(&done, &steps).await.expect("finish");
    let (got, got_steps) = s.get_agent_run("r1").await.expect("get").expect("found");
    assert_eq!(got, done);
    assert_eq!(got_steps, steps);
    let mut old = run("r0", now - 86_400_000);
    old.cost_micro_usd = 999;
    s.start_agent_run(&a, &old).await.expect("old");
    assert_eq!(
        s.agent_spend_since("ag1", now - 5000).await.expect("spend"),
        200
    );
    assert_eq!(s.agent_spend_since("ag1", 0).await.expect("spend"), 1199);
    assert_eq!(s.agent_spend_since("other", 0).await.expect("spend"), 0);
    let runs = s.list_agent_runs("ag1", page(10, 0)).await.expect("runs");
    assert_eq!(runs.total, 2);
    assert_eq!(runs.items[0].id, "r1", "newest first");
    assert!(s.get_agent_run("nope").await.expect("get").is_none());
    // Deleting the agent takes its runs and steps.
    s.delete_ai_agent(&a, "ag1").await.expect("delete");
    assert!(s.get_agent_run("r1").await.expect("get").is_none());
}

async fn agent_schedules_are_claimed_once(s: &SqlStore) {
    let a = actor();
    s.create_ai_agent(&a, &agent_record("ag1", "sched"), &agent_version("m"))
        .await
        .expect("agent");
    let now = now_ms();
    let sched = AgentScheduleRecord {
        id: "s1".into(),
        agent_id: "ag1".into(),
        cron: None,
        interval_ms: Some(60_000),
        input: "tick".into(),
        run_key: None,
        enabled: true,
        next_run_at: Some(now - 10),
        last_run_at: None,
        last_run_id: None,
        last_status: None,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    s.create_agent_schedule(&a, &sched).await.expect("create");
    let missing = AgentScheduleRecord {
        id: "s2".into(),
        agent_id: "nope".into(),
        ..sched.clone()
    };
    assert!(matches!(
        s.create_agent_schedule(&a, &missing).await,
        Err(StoreError::NotFound(_))
    ));
    let due = s.due_agent_schedules(now, 10).await.expect("due");
    assert_eq!(due.len(), 1);
    // Two replicas claim the same due schedule at once: exactly one wins.
    let (x, y) = tokio::join!(
        s.claim_agent_schedule("s1", now - 10, Some(now + 60_000), now),
        s.claim_agent_schedule("s1", now - 10, Some(now + 60_000), now)
    );
    assert_eq!(
        [x.expect("x"), y.expect("y")]
            .iter()
            .filter(|w| **w)
            .count(),
        1
    );
    assert!(s
        .due_agent_schedules(now, 10)
        .await
        .expect("due")
        .is_empty());
    s.record_agent_schedule_run("s1", "r9", "succeeded")
        .await
        .expect("record");
    let got = s
        .get_agent_schedule("s1")
        .await
        .expect("get")
        .expect("found");
    assert_eq!(
        (
            got.next_run_at,
            got.last_run_at,
            got.last_run_id.as_deref(),
            got.last_status.as_deref()
        ),
        (Some(now + 60_000), Some(now), Some("r9"), Some("succeeded"))
    );
    assert_eq!(s.list_agent_schedules("ag1").await.expect("list").len(), 1);
    // An update keeps the last run and moves the version on.
    let mut changed = got.clone();
    changed.enabled = false;
    changed.interval_ms = Some(5_000);
    let updated = s
        .update_agent_schedule(&a, &changed, Some(1))
        .await
        .expect("update");
    assert_eq!(
        (
            updated.version,
            updated.enabled,
            updated.last_run_id.as_deref()
        ),
        (2, false, Some("r9"))
    );
    assert!(matches!(
        s.update_agent_schedule(&a, &changed, Some(1)).await,
        Err(StoreError::VersionMismatch { current: 2 })
    ));
    // A disabled schedule is never due, nor claimed.
    assert!(s
        .due_agent_schedules(now + 10_000_000, 10)
        .await
        .expect("due")
        .is_empty());
    assert!(!s
        .claim_agent_schedule("s1", now + 60_000, Some(now + 70_000), now)
        .await
        .expect("claim"));
    s.delete_agent_schedule(&a, "s1").await.expect("delete");
    assert!(s.get_agent_schedule("s1").await.expect("get").is_none());
}

fn ai_budget(id: &str, name: &str) -> AiBudgetRecord {
    AiBudgetRecord {
        id: id.into(),
        name: name.into(),
        period: "daily".into(),
        limit_micros: 5_000_000,
        alert_threshold_pct: 80,
        action: "block".into(),
        api_key_id: None,
        description: "team budget".into(),
        version: 1,
        created_at: 1_000,
        updated_at: 1_000,
    }
}

async fn ai_budgets_crud_with_versions_and_audit(s: &SqlStore) {
    let a = actor();
    let b1 = ai_budget("b1", "team-a");
    s.create_ai_budget(&a, &b1).await.expect("create");
    assert_eq!(s.get_ai_budget("b1").await.expect("get"), Some(b1.clone()));
    assert!(matches!(
        s.create_ai_budget(&a, &ai_budget("b2", "team-a")).await,
        Err(StoreError::Conflict(_))
    ));
    let mut b2 = ai_budget("b2", "alpha");
    b2.api_key_id = Some("k1".into());
    b2.action = "alert_only".into();
    s.create_ai_budget(&a, &b2).await.expect("create b2");
    assert_eq!(
        s.list_ai_budgets()
            .await
            .expect("list")
            .iter()
            .map(|b| b.name.as_str())
            .collect::<Vec<_>>(),
        ["alpha", "team-a"]
    );
    let mut edit = b1.clone();
    edit.limit_micros = 7_000_000;
    assert!(matches!(
        s.update_ai_budget(&a, &edit, Some(5)).await,
        Err(StoreError::VersionMismatch { current: 1 })
    ));
    let saved = s
        .update_ai_budget(&a, &edit, Some(1))
        .await
        .expect("update");
    assert_eq!((saved.version, saved.limit_micros), (2, 7_000_000));
    edit.name = "alpha".into();
    assert!(matches!(
        s.update_ai_budget(&a, &edit, None).await,
        Err(StoreError::Conflict(_))
    ));
    s.record_ai_usage(&[AiUsageRow {
        id: "u-b".into(),
        at_ms: 10,
        cost_micros: 5,
        budgets: vec![("b1".into(), 0)],
        ..Default::default()
    }])
    .await
    .expect("usage");
    assert_eq!(s.ai_budget_spent("b1", 0).await.expect("spent"), 5);
    let gone = s.delete_ai_budget(&a, "b1").await.expect("delete");
    assert_eq!(gone.limit_micros, 7_000_000);
    assert_eq!(
        s.ai_budget_spent("b1", 0).await.expect("spent"),
        0,
        "its spend goes with it"
    );
    assert!(matches!(
        s.delete_ai_budget(&a, "b1").await,
        Err(StoreError::NotFound(_))
    ));
    let audit = audited(s, "ai_budget").await;
    let mut actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    actions.sort_unstable();
    assert_eq!(
        actions,
        [
            "ai_budget.create",
            "ai_budget.create",
            "ai_budget.delete",
            "ai_budget.update"
        ]
    );
}

/// The audit entries about `target_type` (at most 100).
async fn audited(s: &SqlStore, target_type: &str) -> Vec<fleetgate_store::AuditRecord> {
    s.list_audit(
        &AuditFilter {
            target_type: Some(target_type.into()),
            ..Default::default()
        },
        page(100, 0),
    )
    .await
    .expect("audit")
    .items
}

async fn ai_prices_set_replace_drop_and_audit(s: &SqlStore) {
    let a = actor();
    let price = |input: i64| AiPriceRecord {
        model: "house-llm".into(),
        price: serde_json::json!({"input": input, "output": 2_000_000}),
        version: 0,
        updated_at: 10,
    };
    assert!(s.list_ai_prices().await.expect("list").is_empty());
    let first = s.put_ai_price(&a, &price(1_000_000)).await.expect("set");
    assert_eq!(first.version, 1);
    let second = s
        .put_ai_price(&a, &price(3_000_000))
        .await
        .expect("replace");
    assert_eq!(second.version, 2);
    assert_eq!(
        s.list_ai_prices().await.expect("list"),
        vec![AiPriceRecord {
            version: 2,
            ..price(3_000_000)
        }]
    );
    let gone = s.delete_ai_price(&a, "house-llm").await.expect("drop");
    assert_eq!(gone.price["input"], 3_000_000);
    assert!(matches!(
        s.delete_ai_price(&a, "house-llm").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(s.list_ai_prices().await.expect("list").is_empty());
    let audit = audited(s, "ai_price").await;
    let mut actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    actions.sort_unstable();
    assert_eq!(actions, ["ai_price.delete", "ai_price.set", "ai_price.set"]);
    let replaced = audit
        .iter()
        .find(|e| e.action == "ai_price.set" && e.before.is_some())
        .expect("the replacement keeps what it replaced");
    assert_eq!(
        replaced.before.as_ref().expect("before")["input"],
        1_000_000
    );
}

fn usage_row(id: &str, at_ms: i64, key: &str, model: &str, cost: i64) -> AiUsageRow {
    AiUsageRow {
        id: id.into(),
        at_ms,
        route_id: "r1".into(),
        api_key_id: key.into(),
        provider_id: "p1".into(),
        model: model.into(),
        input_tokens: 10,
        output_tokens: 20,
        cached_input_tokens: 4,
        cache_write_input_tokens: 0,
        reasoning_tokens: 3,
        cost_micros: cost,
        status: 200,
        outcome: "ok".into(),
        latency_ms: 12,
        streamed: true,
        estimated: false,
        budgets: vec![("b1".into(), 0)],
    }
}

async fn ai_allowances_never_lease_past_the_limit(s: &SqlStore) {
    let a = actor();
    // A limit of 5,000,000 micro-USD; 700,000 already recorded as spent in the
    // period (as before any allowance was leased).
    s.create_ai_budget(&a, &ai_budget("lb", "leased"))
        .await
        .expect("create");
    let mut charged = usage_row("lu1", 100, "k1", "gpt-4o", 700_000);
    charged.budgets = vec![("lb".into(), 0)];
    s.record_ai_usage(&[charged]).await.expect("record");
    // Forty holders racing for 200,000 each: exactly the 4,300,000 left is
    // granted, never more.
    let racers = (0..40).map(|i| {
        let holder = format!("h{}", i % 4);
        async move { s.lease_ai_allowance("lb", 0, &holder, 1, 200_000, 1).await }
    });
    let grants = futures::future::join_all(racers).await;
    let total: i64 = grants.iter().map(|g| g.as_ref().expect("lease").0).sum();
    assert_eq!(total, 4_300_000);
    assert!(grants.iter().all(|g| g.as_ref().expect("lease").1 >= 0));
    assert_eq!(
        s.lease_ai_allowance("lb", 0, "h0", 1, 1, 2)
            .await
            .expect("lease"),
        (0, 0)
    );
    // What a holder gives back can be leased again, by anyone; never more than
    // it held.
    s.return_ai_allowance("lb", 0, "h1", 300_000, 3)
        .await
        .expect("give back");
    assert_eq!(
        s.lease_ai_allowance("lb", 0, "h9", 1, 1_000_000, 4)
            .await
            .expect("lease"),
        (300_000, 0)
    );
    // Less than needed is left: nothing is granted.
    s.return_ai_allowance("lb", 0, "h2", 50_000, 5)
        .await
        .expect("give back");
    assert_eq!(
        s.lease_ai_allowance("lb", 0, "h9", 50_001, 60_000, 5)
            .await
            .expect("lease"),
        (0, 50_000)
    );
    assert_eq!(
        s.lease_ai_allowance("lb", 0, "h9", 50_000, 60_000, 5)
            .await
            .expect("lease"),
        (50_000, 0)
    );
    s.return_ai_allowance("lb", 0, "nobody", 1_000_000, 5)
        .await
        .expect("a holder without a grant gives back nothing");
    assert_eq!(
        s.lease_ai_allowance("lb", 0, "h9", 1, 1, 6)
            .await
            .expect("lease"),
        (0, 0)
    );
    // A new period starts with the whole limit (and drops the old grants).
    assert_eq!(
        s.lease_ai_allowance("lb", 86_400_000, "h0", 1, 6_000_000, 7)
            .await
            .expect("lease"),
        (5_000_000, 0)
    );
    assert!(matches!(
        s.lease_ai_allowance("lb", 0, "h0", -1, 1, 8).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.lease_ai_allowance("missing", 0, "h0", 1, 1, 8).await,
        Err(StoreError::NotFound(_))
    ));
    s.delete_ai_budget(&a, "lb").await.expect("delete");
}

async fn ai_usage_batches_roll_up_and_charge_budgets(s: &SqlStore) {
    const H: i64 = 3_600_000;
    const DAY: i64 = 24 * H;
    let batch = vec![
        usage_row("u1", 10, "k1", "gpt-4o", 100),
        usage_row("u2", H - 1, "k1", "gpt-4o", 200),
        usage_row("u3", H + 5, "k1", "gpt-4o-mini", 7),
        usage_row("u4", DAY + 5, "k2", "gpt-4o", 1_000),
    ];
    s.record_ai_usage(&batch).await.expect("record");
    // The same batch again (a retry) counts once.
    s.record_ai_usage(&batch).await.expect("record again");
    s.record_ai_usage(&[]).await.expect("empty batch");

    assert_eq!(s.ai_key_spend("k1", 0, 2 * H).await.expect("spend"), 307);
    assert_eq!(s.ai_key_spend("k1", 0, H).await.expect("spend"), 300);
    assert_eq!(
        s.ai_key_spend("k1", H + 1, 2 * H).await.expect("spend"),
        7,
        "from the hour holding from"
    );
    assert_eq!(s.ai_key_spend("k2", 0, DAY).await.expect("spend"), 0);
    assert_eq!(
        s.ai_key_spend("nobody", 0, 10 * DAY).await.expect("spend"),
        0
    );
    assert_eq!(s.ai_budget_spent("b1", 0).await.expect("spent"), 1_307);
    assert_eq!(s.ai_budget_spent("b1", DAY).await.expect("spent"), 0);

    let all = s.ai_usage_totals(0, 2 * DAY, None).await.expect("totals");
    assert_eq!(all.len(), 1);
    assert_eq!(
        (
            all[0].requests,
            all[0].input_tokens,
            all[0].output_tokens,
            all[0].cached_input_tokens,
            all[0].reasoning_tokens,
            all[0].cost_micros
        ),
        (4, 40, 80, 16, 12, 1_307)
    );
    let by_key = s
        .ai_usage_totals(0, 2 * DAY, Some(UsageGroup::Key))
        .await
        .expect("by key");
    assert_eq!(
        by_key
            .iter()
            .map(|t| (t.key.as_str(), t.requests, t.cost_micros))
            .collect::<Vec<_>>(),
        [("k2", 1, 1_000), ("k1", 3, 307)]
    );
    let by_model = s
        .ai_usage_totals(0, DAY, Some(UsageGroup::Model))
        .await
        .expect("by model");
    assert_eq!(
        by_model
            .iter()
            .map(|t| (t.key.as_str(), t.cost_micros))
            .collect::<Vec<_>>(),
        [("gpt-4o", 300), ("gpt-4o-mini", 7)]
    );
    let by_day = s
        .ai_usage_totals(0, 2 * DAY, Some(UsageGroup::Day))
        .await
        .expect("by day");
    assert_eq!(
        by_day
            .iter()
            .map(|t| (t.key.as_str(), t.cost_micros))
            .collect::<Vec<_>>(),
        [(DAY.to_string().as_str(), 1_000), ("0", 307)]
    );
    let recent = s.recent_ai_usage(0, 2 * DAY, 2).await.expect("recent");
    assert_eq!(
        recent.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["u4", "u3"]
    );
    assert!(recent[0].streamed && !recent[0].estimated);
    assert_eq!(recent[0].reasoning_tokens, 3);
}

fn declared(name: &str, hosts: &[&str], redirects: Vec<RuleData>) -> DeclaredProject {
    DeclaredProject {
        namespace: "decl".into(),
        name: name.into(),
        description: format!("project {name}"),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        redirects,
        pages: Vec::new(),
        new_id: uuid::Uuid::new_v4().to_string(),
    }
}

fn set_with(route: &str) -> ResourceSet {
    let mut set = ResourceSet::new();
    set.entry("route".into()).or_default().insert(
        route.into(),
        json!({"id": route, "path": format!("/{route}")}),
    );
    set
}

async fn declare_writes_config_and_projects_in_one_transaction(s: &SqlStore) {
    let t = RuleTable::Redirects;
    let decl = |set, projects, expected, dry_run| Declaration {
        set,
        projects,
        expected_revision: expected,
        action: "config.apply",
        dry_run,
    };
    let rev0 = s.latest_revision().await.expect("rev");
    let set1 = set_with("a");
    let projects = vec![declared(
        "one",
        &["one.test"],
        vec![rd("BASIC", "/a", "/x"), rd("BASIC", "/b", "/y")],
    )];

    // A dry run checks everything and writes nothing.
    let d = s
        .declare(
            &actor(),
            decl(Some(&set1), Some(&projects), Some(rev0), true),
            "m",
            &NoCheck,
        )
        .await
        .expect("dry run");
    assert!(!d.committed.written);
    assert_eq!(d.projects.len(), 1);
    assert_eq!(d.projects[0].action, "create");
    assert_eq!(s.latest_revision().await.expect("rev"), rev0);
    assert!(s.get_project("decl", "one").await.expect("get").is_none());
    assert!(s.get_namespace("decl").await.expect("ns").is_none());

    // For real: one revision, the namespace and project created, the rules published.
    let d = s
        .declare(
            &actor(),
            decl(Some(&set1), Some(&projects), Some(rev0), false),
            "m",
            &NoCheck,
        )
        .await
        .expect("declare");
    assert!(d.committed.written);
    assert_eq!(d.committed.number, rev0 + 1);
    assert_eq!(d.projects[0].published_version, Some(2));
    assert_eq!(d.projects[0].redirects.created, 2);
    assert_eq!(s.resource_set().await.expect("set"), set1);
    let p = s
        .get_project("decl", "one")
        .await
        .expect("get")
        .expect("one");
    assert_eq!(p.published_version, 2);
    assert_eq!(p.hosts, vec!["one.test".to_string()]);
    let served = s
        .published_rules(t, &p.id, page(10, 0))
        .await
        .expect("published");
    assert_eq!(
        served.items,
        vec![rd("BASIC", "/a", "/x"), rd("BASIC", "/b", "/y")]
    );

    // The same again writes nothing: no revision, no publish, no audit entry.
    let audits = s
        .list_audit(&AuditFilter::default(), page(1000, 0))
        .await
        .expect("audit")
        .total;
    let d = s
        .declare(
            &actor(),
            decl(Some(&set1), Some(&projects), None, false),
            "m",
            &NoCheck,
        )
        .await
        .expect("unchanged");
    assert!(!d.committed.written);
    assert!(d.projects.is_empty());
    assert_eq!(s.latest_revision().await.expect("rev"), rev0 + 1);
    let after = s
        .list_audit(&AuditFilter::default(), page(1000, 0))
        .await
        .expect("audit")
        .total;
    assert_eq!(after, audits);

    // Rules only: a publish, no revision, and the revision counter stays dense.
    let projects2 = vec![declared(
        "one",
        &["one.test"],
        vec![rd("BASIC", "/a", "/changed"), rd("BASIC", "/c", "/z")],
    )];
    let d = s
        .declare(
            &actor(),
            decl(Some(&set1), Some(&projects2), Some(rev0 + 1), false),
            "m",
            &NoCheck,
        )
        .await
        .expect("rules only");
    assert!(!d.committed.written);
    assert_eq!(d.committed.number, rev0 + 1);
    let c = &d.projects[0];
    assert_eq!(
        (
            c.redirects.created,
            c.redirects.updated,
            c.redirects.deleted,
            c.published_version
        ),
        (1, 1, 1, Some(3))
    );
    let served = s
        .published_rules(t, &p.id, page(10, 0))
        .await
        .expect("published");
    assert_eq!(
        served.items,
        vec![rd("BASIC", "/a", "/changed"), rd("BASIC", "/c", "/z")]
    );
    s.put_resource(&actor(), "route", "b", &json!({"id": "b"}), None, "m")
        .await
        .expect("put");
    assert_eq!(s.latest_revision().await.expect("rev"), rev0 + 2);

    // A stale expected revision is a conflict, and nothing is written.
    let set2 = set_with("c");
    assert!(matches!(
        s.declare(
            &actor(),
            decl(Some(&set2), Some(&projects), Some(rev0 + 1), false),
            "m",
            &NoCheck
        )
        .await,
        Err(StoreError::Conflict(_))
    ));
    // A project with drafts whose rules must change: the config part is
    // rolled back with it.
    s.create_rule(&actor(), t, &p.id, &rd("BASIC", "/draft", "/d"))
        .await
        .expect("draft");
    assert!(matches!(
        s.declare(
            &actor(),
            decl(Some(&set2), Some(&projects), Some(rev0 + 2), false),
            "m",
            &NoCheck
        )
        .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.latest_revision().await.expect("rev"), rev0 + 2);
    assert!(s.resource_set().await.expect("set")["route"].contains_key("b"));
    let served = s
        .published_rules(t, &p.id, page(10, 0))
        .await
        .expect("published");
    assert_eq!(served.total, 2);
    // Leaving the project's rules as published applies around the drafts.
    s.declare(
        &actor(),
        decl(Some(&set2), Some(&projects2), Some(rev0 + 2), false),
        "m",
        &NoCheck,
    )
    .await
    .expect("around drafts");
    assert_eq!(s.resource_set().await.expect("set"), set2);
    assert_eq!(
        s.drafts(&p.id, 10).await.expect("drafts").redirects.created,
        1
    );

    // A project left out is deleted, but not while it holds drafts; hosts
    // move between projects in one apply.
    let projects3 = vec![declared(
        "two",
        &["one.test"],
        vec![rd("BASIC", "/t", "/two")],
    )];
    assert!(matches!(
        s.declare(
            &actor(),
            decl(None, Some(&projects3), None, false),
            "m",
            &NoCheck
        )
        .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(s.get_project("decl", "two").await.expect("get").is_none());
    s.discard_drafts(&actor(), &p.id).await.expect("discard");
    let projects3 = vec![declared(
        "two",
        &["one.test"],
        vec![rd("BASIC", "/t", "/two")],
    )];
    let d = s
        .declare(
            &actor(),
            decl(None, Some(&projects3), None, false),
            "m",
            &NoCheck,
        )
        .await
        .expect("replace projects");
    let actions: Vec<&str> = d.projects.iter().map(|c| c.action.as_str()).collect();
    assert_eq!(actions, vec!["create", "delete"]);
    assert!(s.get_project("decl", "one").await.expect("get").is_none());
    let two = s
        .get_project("decl", "two")
        .await
        .expect("get")
        .expect("two");
    assert_eq!(two.hosts, vec!["one.test".to_string()]);
    // Two projects claiming one host: refused.
    let clash = vec![
        declared("two", &["one.test"], Vec::new()),
        declared("three", &["one.test"], Vec::new()),
    ];
    assert!(s
        .declare(
            &actor(),
            decl(None, Some(&clash), None, false),
            "m",
            &NoCheck
        )
        .await
        .is_err());
    assert!(s.get_project("decl", "three").await.expect("get").is_none());
}
