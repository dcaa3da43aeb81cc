//! Workspaces (list, create, a workspace's model catalogue, limits and keys)
//! and API keys (create with the key shown once, revoke, rotate).

use super::html::{self, budget_bar, cell, copy, csrf, field_error, input, select, str_of, Errors, Nav};
use super::integrations::{budgets, rate_usage, visible_workspaces};
use super::session::Session;
use super::{enc, Dash, OrPage, PageResult, Post, Signed};
use axum::extract::{Path, State};
use axum::http::Method;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde_json::{json, Value};

pub async fn workspaces(State(d): State<Dash>, Signed(s): Signed) -> PageResult {
    if let Some(w) = &s.workspace_id {
        return Ok(Redirect::to(&d.url(&format!("/ui/workspaces/{}", enc(w)))).into_response());
    }
    workspaces_view(&d, &s, &super::Form::default(), &Errors::default()).await
}

async fn workspaces_view(d: &Dash, s: &Session, form: &super::Form, errors: &Errors) -> PageResult {
    let list = visible_workspaces(d, s).await.or_page(d)?;
    let body = html! {
        div.scroll { table {
            thead { tr { th { "Name" } th { "Slug" } th { "Id" } th { "Created" } } }
            tbody { @for w in &list { tr {
                td { a href=(d.url(&format!("/ui/workspaces/{}", enc(str_of(w, "id"))))) { (str_of(w, "name")) } }
                td { (str_of(w, "slug")) } td { code { (str_of(w, "id")) } } td { (str_of(w, "created_at")) }
            } } }
        } }
        h2 { "Create a workspace" }
        (errors.banner())
        form method="post" action=(d.url("/ui/workspaces")) {
            (csrf(s))
            (input("Workspace name", "name", "text", form.get("name"), errors, None))
            (input("Workspace description", "description", "text", form.get("description"), errors, None))
            button.primary type="submit" { "Create workspace" }
        }
    };
    Ok(html::page(d, s, "Workspaces", Nav::Workspaces, body))
}

pub async fn create_workspace(State(d): State<Dash>, Post { session: s, form }: Post) -> PageResult {
    let mut body = json!({"name": form.get("name").unwrap_or("")});
    if let Some(desc) = form.get("description") {
        body["description"] = json!(desc);
    }
    match d.json(&s, Method::POST, "/v1/admin/workspaces", Some(&body)).await {
        Ok(w) => Ok(Redirect::to(&d.url(&format!("/ui/workspaces/{}", enc(str_of(&w, "id"))))).into_response()),
        Err(e) if e.status == 401 => Err(super::PageError::Api(d.clone(), e)),
        Err(e) => workspaces_view(&d, &s, &form, &Errors::from_api(&e, &["name", "description"])).await,
    }
}

pub async fn workspace(State(d): State<Dash>, Signed(s): Signed, Path(id): Path<String>) -> PageResult {
    // The API decides whether this session may see the workspace.
    let w = d
        .get(&s, &format!("/v1/admin/workspaces/{}", enc(&id)))
        .await
        .or_page(&d)?;
    let ws_id = str_of(&w, "id").to_owned();
    let snap = d.state.snapshot();
    let catalogue = crate::gateway::models::catalogue(&snap, &ws_id, d.state.now());
    let scope = format!("?workspace_slug={}", enc(str_of(&w, "slug")));
    let budgets = budgets(&d, &s, &scope).await;
    let rates = rate_usage(&d, &s, &scope).await;
    let keys = if s.is_org() {
        d.get(&s, &format!("/v1/api-keys?workspace_id={}&page_size=1000", enc(&ws_id)))
            .await
            .ok()
            .and_then(|v| v.get("data").and_then(Value::as_array).cloned())
    } else {
        None
    };
    let body = html! {
        dl.facts {
            dt { "Id" } dd { (copy(&ws_id, "workspace id")) }
            dt { "Slug" } dd { (str_of(&w, "slug")) }
            dt { "Description" } dd { (cell(&w["description"])) }
        }
        h2 { "Model Catalog" }
        p.hint { "Every model this workspace may call, as the model name to send to /v1/chat/completions." }
        @if catalogue.is_empty() { p { "No models yet: provision an integration to this workspace." } }
        @else {
            div.field {
                label for="f-catalog-filter" { "Search the model catalog" }
                input #f-catalog-filter type="search" data-filter="#catalog";
            }
            ul.picklist #catalog { @for m in &catalogue { li { (copy(m, m)) } } }
        }
        h2 { "Budgets" }
        @if budgets.is_empty() { p { "No budgets apply to this workspace." } }
        @for b in &budgets {
            @let unit = if str_of(b, "type") == "tokens" { "tokens" } else { "USD" };
            (budget_bar(&format!("{} {}", str_of(b, "level").replace('_', " × "), str_of(b, "limit_id")),
                b["consumed"].as_f64().unwrap_or(0.0), b["credit_limit"].as_f64().unwrap_or(0.0), unit, b["window_end"].as_str()))
        }
        h2 { "Rate limits" }
        @if rates.is_empty() { p { "No rate limits apply to this workspace." } }
        @else {
            div.scroll { table {
                thead { tr { th { "Limit" } th { "Level" } th { "Used this window" } th { "Limit value" } th { "Window ends" } } }
                tbody { @for r in &rates { tr {
                    td { code { (str_of(r, "limit_id")) } } td { (str_of(r, "level")) }
                    td { (cell(&r["used"])) } td { (cell(&r["value"])) " " (str_of(r, "type")) " " (str_of(r, "unit")) }
                    td { (cell(&r["window_end"])) }
                } } }
            } }
        }
        @if let Some(keys) = keys {
            h2 { "API keys" }
            (keys_table(&d, &s, &keys))
            p { a href=(d.url("/ui/keys")) { "Create a key" } }
        }
    };
    Ok(html::page(
        &d,
        &s,
        &format!("Workspace {}", str_of(&w, "name")),
        Nav::Workspaces,
        body,
    ))
}

fn keys_table(d: &Dash, s: &Session, keys: &[Value]) -> Markup {
    html! {
        @if keys.is_empty() { p { "No keys." } }
        @else { div.scroll { table {
            thead { tr { th { "Name" } th { "Type" } th { "Key" } th { "Workspace" } th { "Scopes" } th { "Expires" } th { "Status" } th { "Actions" } } }
            tbody { @for k in keys {
                @let id = str_of(k, "id");
                @let name = str_of(k, "name");
                tr {
                    td { (name) } td { (str_of(k, "type")) } td { code { (str_of(k, "key")) } }
                    td { (cell(&k["workspace_id"])) }
                    td { (k["scopes"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                    td { (cell(&k["expires_at"])) } td { (str_of(k, "status")) }
                    td.actions {
                        form method="post" action=(d.url(&format!("/ui/keys/{}/rotate", enc(id)))) {
                            (csrf(s)) button type="submit" { "Rotate" span.vh { " " (name) } }
                        }
                        form method="post" action=(d.url(&format!("/ui/keys/{}/revoke", enc(id)))) {
                            (csrf(s)) button.danger type="submit" { "Revoke" span.vh { " " (name) } }
                        }
                    }
                }
            } }
        } } }
    }
}

pub async fn keys(State(d): State<Dash>, Signed(s): Signed) -> PageResult {
    keys_view(&d, &s, &super::Form::default(), &Errors::default(), None).await
}

/// The keys page; `shown` is a key just created or rotated, shown once.
async fn keys_view(
    d: &Dash,
    s: &Session,
    form: &super::Form,
    errors: &Errors,
    shown: Option<(&str, &str)>,
) -> PageResult {
    let keys = d.get(s, "/v1/api-keys?page_size=1000").await.or_page(d)?;
    let keys = keys.get("data").and_then(Value::as_array).cloned().unwrap_or_default();
    let workspaces = visible_workspaces(d, s).await.or_page(d)?;
    let ws_opts: Vec<(String, String)> = std::iter::once((String::new(), "None (organisation admin key)".to_owned()))
        .chain(
            workspaces
                .iter()
                .map(|w| (str_of(w, "id").to_owned(), str_of(w, "name").to_owned())),
        )
        .collect();
    let checked: Vec<&str> = form.all("scope").collect();
    let body = html! {
        @if let Some((name, key)) = shown {
            section.shown role="status" aria-label="New key" {
                h2 { "Key " (name) }
                p { strong { "Copy this key now: it is shown only once." } }
                p { (copy(key, "the new key")) }
            }
        }
        (keys_table(d, s, &keys))
        h2 { "Create a key" }
        (errors.banner())
        form method="post" action=(d.url("/ui/keys")) {
            (csrf(s))
            (input("Key name", "name", "text", form.get("name"), errors, None))
            (select("Workspace", "workspace_id", &ws_opts, form.get("workspace_id")))
            (field_error(errors, "workspace_id"))
            fieldset {
                legend { "Scopes (workspace keys)" }
                @for sc in crate::auth::SCOPES {
                    label.inline { input type="checkbox" name="scope" value=(sc) checked[checked.contains(sc) || (form.0.is_empty() && *sc == "completions.write")]; " " (sc) }
                }
                (field_error(errors, "scopes"))
            }
            fieldset {
                legend { "Limits (optional; cannot be edited once set)" }
                div.row {
                    (select("Key budget type", "budget_type", &[("cost".into(), "Cost (US dollars)".into()), ("tokens".into(), "Tokens".into())], form.get("budget_type")))
                    (input("Key budget limit", "credit_limit", "number", form.get("credit_limit"), errors, None))
                    (input("Key rate limit (requests per minute)", "rate_value", "number", form.get("rate_value"), errors, None))
                }
            }
            (input("Expires", "expires_at", "date", form.get("expires_at"), errors, Some("Blank: never.")))
            button.primary type="submit" { "Create key" }
        }
    };
    Ok(html::page(d, s, "API keys", Nav::Keys, body))
}

fn num(v: &str) -> Value {
    serde_json::from_str::<serde_json::Number>(v)
        .map(Value::Number)
        .unwrap_or_else(|_| json!(v))
}

pub async fn create_key(State(d): State<Dash>, Post { session: s, form }: Post) -> PageResult {
    let workspace = form.get("workspace_id");
    let path = match workspace {
        Some(_) => "/v1/api-keys/workspace/service",
        None => "/v1/api-keys/organisation/service",
    };
    let mut body = json!({"name": form.get("name").unwrap_or("")});
    if let Some(w) = workspace {
        body["workspace_id"] = json!(w);
        body["scopes"] = json!(form.all("scope").collect::<Vec<_>>());
    }
    if let Some(limit) = form.get("credit_limit") {
        body["usage_limits"] = json!({"type": form.get("budget_type").unwrap_or("cost"), "credit_limit": num(limit)});
    }
    if let Some(v) = form.get("rate_value") {
        body["rate_limits"] = json!([{"type": "requests", "unit": "rpm", "value": num(v)}]);
    }
    if let Some(date) = form.get("expires_at") {
        body["expires_at"] = json!(format!("{date}T00:00:00Z"));
    }
    match d.json(&s, Method::POST, path, Some(&body)).await {
        Ok(created) => {
            let name = form.get("name").unwrap_or("").to_owned();
            let key = str_of(&created, "key").to_owned();
            keys_view(&d, &s, &super::Form::default(), &Errors::default(), Some((&name, &key))).await
        }
        Err(e) if e.status == 401 => Err(super::PageError::Api(d.clone(), e)),
        Err(e) => {
            let errors = Errors::from_api(&e, &["name", "workspace_id", "scopes", "credit_limit", "expires_at"]);
            let errors = if errors.field("credit_limit").is_none() && e.message.contains("rate") {
                Errors {
                    top: None,
                    fields: vec![("rate_value".into(), e.message.clone())],
                }
            } else {
                errors
            };
            keys_view(&d, &s, &form, &errors, None).await
        }
    }
}

pub async fn revoke_key(State(d): State<Dash>, Path(id): Path<String>, Post { session: s, .. }: Post) -> PageResult {
    d.json(&s, Method::DELETE, &format!("/v1/api-keys/{}", enc(&id)), None)
        .await
        .or_page(&d)?;
    Ok(Redirect::to(&d.url("/ui/keys")).into_response())
}

pub async fn rotate_key(State(d): State<Dash>, Path(id): Path<String>, Post { session: s, .. }: Post) -> PageResult {
    let key = d.get(&s, &format!("/v1/api-keys/{}", enc(&id))).await.or_page(&d)?;
    let rotated = d
        .json(&s, Method::POST, &format!("/v1/api-keys/{}/rotate", enc(&id)), None)
        .await
        .or_page(&d)?;
    let name = str_of(&key, "name").to_owned();
    let secret = str_of(&rotated, "key").to_owned();
    let r: Response = keys_view(
        &d,
        &s,
        &super::Form::default(),
        &Errors::default(),
        Some((&name, &secret)),
    )
    .await?;
    Ok(r)
}
