//! The control plane: workspaces, API keys, integrations, the catalogue,
//! the audit trail, admin errors, and secrets at rest.

use crate::support::App;
use serde_json::json;

#[tokio::test]
async fn health_and_first_run_key() {
    let app = App::start().await;
    let r = app.call(reqwest::Method::GET, "/health", None, None).await;
    assert_eq!(r.status, 200);
    assert!(app.admin_key.starts_with("tg-"));
    let r = app.get("/v1/admin/workspaces", &app.admin_key).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["object"], "list");
    assert_eq!(r.body["data"][0]["slug"], "default", "the default workspace exists");
}

#[tokio::test]
async fn workspaces_crud_and_pagination() {
    let app = App::start().await;
    let k = &app.admin_key;
    let r = app
        .post(
            "/v1/admin/workspaces",
            k,
            json!({"name": "Team A", "description": "first"}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert!(
        id.starts_with("ws-team-a-") && id.len() == "ws-team-a-".len() + 6,
        "{id}"
    );
    assert_eq!(r.body["object"], "workspace");
    assert_eq!(r.body["usage_limits"], json!([]));
    for n in ["B", "C"] {
        app.workspace(&format!("Team {n}")).await;
    }
    let page = app.get("/v1/admin/workspaces?pageSize=2&currentPage=1", k).await;
    assert_eq!(page.body["total"], 4);
    assert_eq!(page.body["data"].as_array().unwrap().len(), 2);
    let page = app.get("/v1/admin/workspaces?page_size=3&current_page=1", k).await;
    assert_eq!(page.body["data"].as_array().unwrap().len(), 1);
    let r = app
        .put(
            &format!("/v1/admin/workspaces/{id}"),
            k,
            json!({"name": "Team A2", "rate_limits": [{"type": "requests", "unit": "rpm", "value": 5}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["name"], "Team A2");
    assert_eq!(r.body["rate_limits"][0]["value"], 5);
    // Limits are immutable once set; resending the same is not an edit.
    let same = app
        .put(
            &format!("/v1/admin/workspaces/{id}"),
            k,
            json!({"rate_limits": [{"type": "requests", "unit": "rpm", "value": 5}]}),
        )
        .await;
    assert_eq!(same.status, 200);
    let edit = app
        .put(
            &format!("/v1/admin/workspaces/{id}"),
            k,
            json!({"rate_limits": [{"type": "requests", "unit": "rpm", "value": 6}]}),
        )
        .await;
    assert_eq!((edit.status, edit.code()), (409, "AB07"));
    let by_slug = app.get("/v1/admin/workspaces/team-a", k).await;
    assert_eq!(by_slug.body["id"], id);
    assert_eq!(app.delete(&format!("/v1/admin/workspaces/{id}"), k).await.status, 200);
    let gone = app.get(&format!("/v1/admin/workspaces/{id}"), k).await;
    assert_eq!((gone.status, gone.code()), (404, "AB08"));
}

#[tokio::test]
async fn api_keys_create_rotate_revoke() {
    let app = App::start().await;
    let k = &app.admin_key;
    let ws = app.workspace("Keys").await;
    let r = app
        .post(
            "/v1/api-keys/workspace/user",
            k,
            json!({"name": "dev", "workspace_id": ws, "scopes": ["completions.write", "logs.view"],
                   "usage_limits": {"type": "cost", "credit_limit": 10, "alert_threshold": 8, "periodic_reset": "monthly"},
                   "rate_limits": [{"type": "requests", "unit": "rpm", "value": 100}], "alert_emails": ["a@example.com"],
                   "defaults": {"metadata": {"team": "x"}}}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["object"], "api-key");
    let id = r.body["id"].as_str().unwrap().to_owned();
    let key = r.body["key"].as_str().unwrap().to_owned();
    assert!(key.len() >= 64, "at least 32 bytes of entropy");
    let got = app.get(&format!("/v1/api-keys/{id}"), k).await;
    assert_eq!(got.body["type"], "workspace-user");
    assert_ne!(got.body["key"], key, "only a masked key is shown again");
    assert!(
        got.body["usage_limits"].is_object(),
        "usage_limits is an object for keys"
    );
    assert!(got.body["rate_limits"].is_array(), "rate_limits is an array for keys");
    assert_eq!(got.body["usage_limits"]["credit_limit"], 10.0);
    assert_eq!(got.body["defaults"]["metadata"]["team"], "x");
    assert!(got.body["organisation_id"]
        .as_str()
        .is_some_and(|o| o.starts_with("org-")));
    let list = app.get(&format!("/v1/api-keys?workspace_id={ws}"), k).await;
    assert_eq!(list.body["total"], 1);
    // The workspace key works for what its scopes allow, and only that.
    assert_eq!(app.get("/v1/logs", &key).await.status, 200);
    // Another workspace answers as an unknown one would (issue 10).
    let hidden = app.get("/v1/admin/workspaces/default", &key).await;
    assert_eq!((hidden.status, hidden.code()), (404, "AB08"));
    // Rotation: the old key stops at once; limits carry over.
    let rot = app.post(&format!("/v1/api-keys/{id}/rotate"), k, json!({})).await;
    assert_eq!(rot.status, 200);
    let new_key = rot.body["key"].as_str().unwrap().to_owned();
    assert_eq!(app.get("/v1/logs", &key).await.status, 401);
    assert_eq!(app.get("/v1/logs", &new_key).await.status, 200);
    let after = app.get(&format!("/v1/api-keys/{id}"), k).await;
    assert_eq!(after.body["usage_limits"], got.body["usage_limits"]);
    assert_eq!(after.body["rate_limits"], got.body["rate_limits"]);
    // Revocation.
    assert_eq!(app.delete(&format!("/v1/api-keys/{id}"), k).await.status, 200);
    let r = app.get("/v1/logs", &new_key).await;
    assert_eq!((r.status, r.code()), (401, "AB05"));
}

#[tokio::test]
async fn expired_keys_are_refused() {
    let app = App::start().await;
    let ws = app.workspace("Exp").await;
    let past = app
        .post(
            "/v1/api-keys/workspace/service",
            &app.admin_key,
            json!({"workspace_id": ws, "expires_at": "2001-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!((past.status, past.code()), (400, "AB01"));
    let r = app
        .post(
            "/v1/api-keys/workspace/service",
            &app.admin_key,
            json!({"workspace_id": ws, "scopes": ["logs.view"], "expires_at": "2999-01-01T00:00:00Z"}),
        )
        .await;
    let (id, key) = (
        r.body["id"].as_str().unwrap().to_owned(),
        r.body["key"].as_str().unwrap().to_owned(),
    );
    assert_eq!(app.get("/v1/logs", &key).await.status, 200);
    // Move its expiry into the past by editing the record.
    let soon = (chrono::Utc::now() + chrono::Duration::milliseconds(300)).to_rfc3339();
    assert_eq!(
        app.put(
            &format!("/v1/api-keys/{id}"),
            &app.admin_key,
            json!({"expires_at": soon})
        )
        .await
        .status,
        200
    );
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let r = app.get("/v1/logs", &key).await;
    assert_eq!((r.status, r.code()), (401, "AB05"));
    assert!(r.body["data"]["message"].as_str().unwrap().contains("expired"));
}

#[tokio::test]
async fn catalogue_lists_every_protocol() {
    let app = App::start().await;
    let r = app.get("/v1/ai-providers", &app.admin_key).await;
    let data = r.body["data"].as_array().unwrap();
    assert!(data.len() >= 25);
    for p in ["openai", "azure-openai", "anthropic", "bedrock", "vertex-ai", "google"] {
        let spec = data
            .iter()
            .find(|d| d["id"] == p)
            .unwrap_or_else(|| panic!("{p} missing"));
        assert!(spec["credential_fields"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f.get("secret").is_some()));
    }
}

const SECRET: &str = "sk-live-THIS-IS-A-VERY-DISTINCTIVE-SECRET-0123456789";
const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYDISTINCTIVEKEY";

#[tokio::test]
async fn integrations_crud_masks_secrets_and_filters() {
    let app = App::start().await;
    let k = &app.admin_key;
    let ws = app.workspace("Int").await;
    let r = app
        .post(
            "/v1/integrations",
            k,
            json!({"name": "OpenAI Prod", "ai_provider_id": "openai", "key": SECRET, "description": "d",
                                              "configurations": {"openai_organization": "org-1"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["slug"], "openai-prod", "slug generated from the name");
    let r = app
        .post("/v1/integrations", k, json!({"name": "Bedrock", "slug": "bedrock-east", "ai_provider_id": "bedrock",
            "configurations": {"aws_access_key_id": "AKIAEXAMPLE12345678", "aws_secret_access_key": AWS_SECRET, "aws_region": "us-east-1"}}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = app
        .post("/v1/integrations", k, json!({"name": "Team claude", "slug": "team-claude", "ai_provider_id": "anthropic", "key": "sk-ant-123456789012345", "workspace_id": ws}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    let got = app.get("/v1/integrations/openai-prod", k).await;
    assert_eq!(got.status, 200);
    let text = got.body.to_string();
    assert!(!text.contains(SECRET), "the secret is never returned");
    assert_eq!(got.body["masked_key"], "sk-l********6789");
    assert_eq!(got.body["configurations"]["masked_key"], "sk-l********6789");
    assert_eq!(got.body["configurations"]["openai_organization"], "org-1");
    assert_eq!(got.body["endpoint_type"], "public");
    assert_eq!(got.body["object"], "integration");
    let b = app.get("/v1/integrations/bedrock-east", k).await;
    assert!(b.body["configurations"]["masked_aws_secret_access_key"].is_string());
    assert!(!b.body.to_string().contains(AWS_SECRET));

    let all = app.get("/v1/integrations", k).await;
    assert_eq!(all.body["total"], 3);
    let org = app.get("/v1/integrations?type=organisation", k).await;
    assert_eq!(org.body["total"], 2);
    let wsi = app.get("/v1/integrations?type=workspace", k).await;
    assert_eq!(wsi.body["total"], 1);
    assert_eq!(wsi.body["data"][0]["workspace_id"], ws);
    let by_ws = app.get(&format!("/v1/integrations?workspace_id={ws}"), k).await;
    assert_eq!(by_ws.body["total"], 1);

    // Update: name, key rotation, custom host makes it private.
    let r = app
        .put("/v1/integrations/openai-prod", k, json!({"name": "Renamed", "key": "sk-new-000000000000000000", "configurations": {"custom_host": "https://llm.internal/v1"}}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["name"], "Renamed");
    assert_eq!(r.body["endpoint_type"], "private");
    assert_eq!(r.body["masked_key"], "sk-n********0000");
    // Delete.
    assert_eq!(app.delete("/v1/integrations/openai-prod", k).await.status, 200);
    assert_eq!(app.get("/v1/integrations/openai-prod", k).await.status, 404);
}

#[tokio::test]
async fn integration_validation_errors() {
    let app = App::start().await;
    let k = &app.admin_key;
    let cases = [
        (
            json!({"name": "x", "ai_provider_id": "nope", "key": "k"}),
            400,
            "AB01",
            "ai_provider_id",
        ),
        (json!({"ai_provider_id": "openai", "key": "k"}), 400, "AB01", "name"),
        (json!({"name": "x", "ai_provider_id": "openai"}), 400, "AB01", "key"),
        (
            json!({"name": "x", "ai_provider_id": "openai", "key": "k", "slug": "bad slug"}),
            400,
            "AB01",
            "slug",
        ),
        (
            json!({"name": "x", "ai_provider_id": "openai", "key": "k", "configurations": {"api_key": "oops"}}),
            400,
            "AB01",
            "api_key",
        ),
        (
            json!({"name": "x", "ai_provider_id": "azure-openai", "key": "k"}),
            400,
            "AB01",
            "azure_resource_name",
        ),
        (
            json!({"name": "x", "ai_provider_id": "bedrock", "configurations": {"aws_access_key_id": "a", "aws_secret_access_key": "b", "aws_region": "r", "aws_auth_type": "assumedRole"}}),
            400,
            "AB01",
            "aws_role_arn",
        ),
        (
            json!({"name": "x", "ai_provider_id": "vertex-ai", "configurations": {"vertex_project_id": "p", "vertex_region": "r", "vertex_service_account_json": "{}"}}),
            400,
            "AB01",
            "client_email",
        ),
        (
            json!({"name": "x", "ai_provider_id": "openai", "key": "k", "workspace_id": "ws-nope-000000"}),
            400,
            "AB01",
            "workspace_id",
        ),
        (
            json!({"name": 5, "ai_provider_id": "openai", "key": "k"}),
            400,
            "AB01",
            "invalid",
        ),
    ];
    for (body, status, code, needle) in cases {
        let r = app.post("/v1/integrations", k, body.clone()).await;
        assert_eq!((r.status, r.code()), (status, code), "{body}: {:?}", r.body);
        assert!(
            r.body["data"]["message"].as_str().unwrap().contains(needle),
            "{body}: {:?}",
            r.body
        );
        assert_eq!(r.body["success"], false);
    }
    // Duplicate slug.
    let ok = json!({"name": "x", "slug": "dup", "ai_provider_id": "openai", "key": "k"});
    assert_eq!(app.post("/v1/integrations", k, ok.clone()).await.status, 200);
    let r = app.post("/v1/integrations", k, ok).await;
    assert_eq!((r.status, r.code()), (409, "AB07"));
    // Nothing of the failed attempts was stored.
    assert_eq!(app.get("/v1/integrations", k).await.body["total"], 1);
}

#[tokio::test]
async fn malformed_bodies_and_auth_errors() {
    let app = App::start().await;
    let url = format!("{}/v1/admin/workspaces", app.url);
    let raw = |body: &'static str| {
        app.http
            .post(&url)
            .header("x-portkey-api-key", &app.admin_key)
            .header("content-type", "application/json")
            .body(body)
    };
    for body in ["{not json", "[1,2]", "\"str\""] {
        let r = raw(body).send().await.unwrap();
        assert_eq!(r.status(), 400);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["data"]["errorCode"], "AB01", "{body}");
    }
    // No key, wrong key, bearer form.
    let r = app.call(reqwest::Method::GET, "/v1/admin/workspaces", None, None).await;
    assert_eq!((r.status, r.code()), (401, "AB05"));
    let r = app.get("/v1/admin/workspaces", "tg-wrong").await;
    assert_eq!((r.status, r.code()), (401, "AB05"));
    let r = app.http.get(&url).bearer_auth(&app.admin_key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Not found.
    let r = app.get("/v1/admin/workspaces/ws-nope-123456", &app.admin_key).await;
    assert_eq!((r.status, r.code()), (404, "AB08"));
    let r = app.get("/v1/admin/nowhere", &app.admin_key).await;
    assert_eq!((r.status, r.code()), (404, "AB08"));
    // Outside the admin prefixes, /v1 is the gateway's: OpenAI's shape (issue 15).
    let r = app.get("/v1/nowhere", &app.admin_key).await;
    assert_eq!((r.status, r.error_type()), (404, "invalid_request_error"));
}

#[tokio::test]
async fn oversized_bodies_are_refused_and_nothing_is_stored() {
    let app = crate::support::App::start_with(
        |c| c.max_body_bytes = 1024,
        std::sync::Arc::new(tollgate_core::clock::SystemClock),
    )
    .await;
    let big = "x".repeat(4096);
    let r = app
        .post(
            "/v1/admin/workspaces",
            &app.admin_key,
            json!({"name": "big", "description": big}),
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "AB01"), "{:?}", r.body);
    assert_eq!(app.get("/v1/admin/workspaces", &app.admin_key).await.body["total"], 1);
}

#[tokio::test]
async fn server_errors_are_ab04_without_details() {
    let app = App::start().await;
    sqlx_drop_audit(&app).await;
    let r = app
        .post("/v1/admin/workspaces", &app.admin_key, json!({"name": "boom"}))
        .await;
    assert_eq!((r.status, r.code()), (500, "AB04"));
    assert_eq!(r.body["data"]["message"], "internal server error");
}

async fn sqlx_drop_audit(app: &App) {
    // Break the store underneath the running server.
    app.execute("DROP TABLE audit_logs").await;
}

#[tokio::test]
async fn workspace_keys_are_confined_to_their_workspace() {
    let app = App::start().await;
    let k = &app.admin_key;
    let a = app.workspace("A").await;
    let b = app.workspace("B").await;
    let (_, ka) = app.workspace_key(&a, &["workspace_integrations.write"]).await;
    let (_, kb) = app.workspace_key(&b, &["workspace_integrations.*"]).await;
    let (_, plain) = app.workspace_key(&a, &["completions.write"]).await;
    assert_eq!(
        app.post(
            "/v1/integrations",
            k,
            json!({"name": "org", "slug": "org-int", "ai_provider_id": "openai", "key": "k"})
        )
        .await
        .status,
        200
    );
    // Own workspace: allowed (workspace_id defaults to its own).
    let r = app
        .post(
            "/v1/integrations",
            &ka,
            json!({"name": "mine", "slug": "a-int", "ai_provider_id": "groq", "key": "k"}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(app.get("/v1/integrations/a-int", k).await.body["workspace_id"], a);
    // Another workspace: refused.
    let r = app
        .post(
            "/v1/integrations",
            &ka,
            json!({"name": "x", "ai_provider_id": "groq", "key": "k", "workspace_id": b}),
        )
        .await;
    assert_eq!((r.status, r.code()), (403, "AB03"));
    // B's key cannot read, change or delete A's or the organisation's.
    // (Another workspace's answers as an unknown slug does: issue 10.)
    for (slug, status, code) in [("a-int", 404, "AB08"), ("org-int", 403, "AB03")] {
        let r = app.get(&format!("/v1/integrations/{slug}"), &kb).await;
        assert_eq!((r.status, r.code()), (status, code), "{slug}");
        let r = app
            .put(&format!("/v1/integrations/{slug}"), &kb, json!({"name": "h"}))
            .await;
        assert_eq!((r.status, r.code()), (status, code), "{slug}");
        let r = app.delete(&format!("/v1/integrations/{slug}"), &kb).await;
        assert_eq!((r.status, r.code()), (status, code), "{slug}");
    }
    // A workspace key lists only its own workspace's integrations.
    let r = app.get("/v1/integrations", &ka).await;
    assert_eq!(r.body["total"], 1);
    // Without the scope: nothing.
    let r = app
        .post(
            "/v1/integrations",
            &plain,
            json!({"name": "x", "ai_provider_id": "groq", "key": "k"}),
        )
        .await;
    assert_eq!((r.status, r.code()), (403, "AB03"));
    // Workspace keys cannot manage keys or workspaces.
    let r = app.post("/v1/admin/workspaces", &ka, json!({"name": "n"})).await;
    assert_eq!((r.status, r.code()), (403, "AB03"));
    let r = app
        .post("/v1/api-keys/workspace/service", &ka, json!({"workspace_id": a}))
        .await;
    assert_eq!((r.status, r.code()), (403, "AB03"));
    let r = app.get("/v1/audit-logs", &ka).await;
    assert_eq!((r.status, r.code()), (403, "AB03"));
}

#[tokio::test]
async fn audit_trail_records_who_what_when_without_secrets() {
    let app = App::start().await;
    let k = &app.admin_key;
    let ws = app.workspace("Audit").await;
    app.post(
        "/v1/integrations",
        k,
        json!({"name": "a", "slug": "aud-int", "ai_provider_id": "openai", "key": SECRET}),
    )
    .await;
    app.put("/v1/integrations/aud-int", k, json!({"key": format!("{SECRET}-2")}))
        .await;
    let r = app.get("/v1/audit-logs?object_type=integration", k).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["total"], 2);
    let newest = &r.body["data"][0];
    assert_eq!(newest["action"], "update");
    assert_eq!(newest["object_id"], "aud-int");
    assert!(newest["actor_key_id"].as_str().unwrap().starts_with("ak-"));
    assert!(newest["created_at"].is_string());
    let all = app.get("/v1/audit-logs?page_size=100", k).await;
    assert!(!all.body.to_string().contains(SECRET));
    assert!(all.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["object_id"] == ws));
    let none = app.get("/v1/audit-logs?from=2999-01-01T00:00:00Z", k).await;
    assert_eq!(none.body["total"], 0);
    let bad = app.get("/v1/audit-logs?from=yesterday", k).await;
    assert_eq!((bad.status, bad.code()), (400, "AB01"));
}

#[tokio::test]
async fn secrets_never_reach_the_database_files_in_plain_text() {
    let app = App::start().await;
    let k = &app.admin_key;
    for (i, slug) in ["s1", "s2"].iter().enumerate() {
        let r = app
            .post(
                "/v1/integrations",
                k,
                json!({"name": slug, "slug": slug, "ai_provider_id": "openai", "key": format!("{SECRET}{i}")}),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    app.flush_logs().await;
    for entry in std::fs::read_dir(app.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let hay = String::from_utf8_lossy(&bytes);
        assert!(
            !hay.contains("VERY-DISTINCTIVE-SECRET"),
            "secret found in {}",
            path.display()
        );
    }
    match &app.config.database {
        tollgate_store::Location::Sqlite(path) => {
            // The WAL was among the files read while it exists; checkpoint and read again.
            app.execute("PRAGMA wal_checkpoint(TRUNCATE)").await;
            let db = std::fs::read(path).unwrap();
            assert!(!String::from_utf8_lossy(&db).contains("VERY-DISTINCTIVE-SECRET"));
        }
        tollgate_store::Location::Postgres(url) => {
            // Every row of every table, as text.
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            assert!(tables.iter().any(|t| t == "integrations"), "{tables:?}");
            for table in tables {
                let rows: Option<String> =
                    sqlx::query_scalar(&format!("SELECT string_agg(t::text, ' ') FROM {table} t"))
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                let rows = rows.unwrap_or_default();
                assert!(!rows.contains("VERY-DISTINCTIVE-SECRET"), "secret found in {table}");
                if table == "integrations" {
                    assert!(rows.contains("s1") && rows.contains("s2"), "the rows are read: {rows}");
                }
            }
            pool.close().await;
        }
    }
}
